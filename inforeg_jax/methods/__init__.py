"""The methods of the paper's tables, one module each (``inforeg_jax/methods/<module>.py``).

This registry is the one place a method is named: its module and factory (imported on first
use, so that the CLI starts without JAX), its one-line description, its options group in the
config (`options`), and the window it adjusts in by default (Table 4: InfoReg inside the prime
learning window, the baselines over the whole run, as their papers run them). Adding a method
is a module with a `Method` subclass, a line here (and its options in `options`, if it has
any) and its tests.
"""

from __future__ import annotations

import dataclasses
import importlib


@dataclasses.dataclass(frozen=True)
class Entry:
  module: str  # inforeg_jax.methods.<module>
  cls: str  # its `Method` subclass
  doc: str
  group: str | None = None  # the Config field with its options
  default_window: str = "whole"
  modulating: bool = True  # --window applies to it


REGISTRY: dict[str, Entry] = {
    "joint": Entry("joint", "Joint", "one fused cross-entropy", modulating=False),
    "joint_uni": Entry("joint", "JointUni", "fused + unimodal cross-entropies (Joint training*)",
                       modulating=False),
    "inforeg": Entry("inforeg", "InfoReg", "InfoReg (this paper, Algorithm 1)", "inforeg",
                     "prime"),
    "inforeg_uni": Entry("inforeg", "InfoRegUni", "InfoReg with unimodal losses (InfoReg*)",
                         "inforeg", "prime"),
    "ogm_ge": Entry("ogm_ge", "OGMGE", "OGM-GE: on-the-fly gradient modulation + noise",
                    "ogm_ge"),
    "agm": Entry("agm", "AGM", "AGM: adaptive gradient modulation of mono-modal responses",
                 "agm"),
    "pmr": Entry("pmr", "PMR", "PMR: prototypical modal rebalance", "pmr"),
    "greedy": Entry("greedy", "Greedy", "Greedy: MMTM fusion, re-balancing by conditional "
                    "learning speed", "greedy"),
    "gblending": Entry("gblending", "GBlending", "G-Blending: loss weights from the "
                       "overfitting-to-generalization ratio", "gblending"),
    "mmpareto": Entry("mmpareto", "MMPareto", "MMPareto: Pareto integration of multimodal and "
                      "unimodal gradients", "mmpareto"),
}
NAMES = tuple(REGISTRY)


def get(name: str):
  """The `Method` subclass registered as ``name``."""
  entry = REGISTRY[name]
  return getattr(importlib.import_module(f"inforeg_jax.methods.{entry.module}"), entry.cls)
