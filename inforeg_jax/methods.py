"""The methods of the paper's tables: what each adds to the objective and the optimizer."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Method:
  name: str
  rule: str  # none | inforeg | ogm_ge | greedy | agm | pmr | mmpareto | gblending
  unimodal_weight: float = 0.0  # weight of each modality's unimodal CE in the objective
  doc: str = ""


METHODS = {m.name: m for m in [
    Method("joint", "none", 0.0, "one fused cross-entropy"),
    Method("joint_uni", "none", 1.0, "fused + unimodal cross-entropies (Joint training*)"),
    Method("inforeg", "inforeg", 0.0, "InfoReg (this paper)"),
    Method("inforeg_uni", "inforeg", 1.0, "InfoReg with unimodal losses (InfoReg*)"),
    Method("ogm_ge", "ogm_ge", 0.0, "OGM-GE: on-the-fly gradient modulation + noise"),
    Method("agm", "agm", 0.0, "AGM: adaptive gradient modulation through mono-modal responses"),
    Method("pmr", "pmr", 0.0, "PMR: prototypical modal rebalance"),
    Method("greedy", "greedy", 0.0, "Greedy: re-balancing steps by conditional learning speed"),
    Method("gblending", "gblending", 1.0, "G-Blending: loss weights from held-out OGR"),
    Method("mmpareto", "mmpareto", 1.0, "MMPareto: Pareto integration of multi/unimodal grads"),
]}

MODULATING = ("inforeg", "ogm_ge", "agm", "pmr", "greedy", "mmpareto")  # --window applies
