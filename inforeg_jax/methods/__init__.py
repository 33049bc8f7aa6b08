"""The methods of the paper's tables, one module each (``inforeg_jax/methods/<module>.py``).

This registry is the one place a method is named: its `Method` subclass (imported on first
use, so that the CLI starts without JAX), a one-line description, its options dataclass (the
``--<group>.<name>`` flags and ``cfg.options``; JAX-free, in `options` for the built-in
methods) and the window it adjusts in by default (Table 4: InfoReg inside the prime learning
window, the baselines over the whole run, as their papers run them). Adding a method is a
module with a `Method` subclass and one `register` call::

    register("mine", Entry(MyMethod, "my rule", options=MyOptions))

The config's option groups, flags and ``--help`` are derived from here.
"""

from __future__ import annotations

import dataclasses
import importlib

from inforeg_jax.methods.options import (AGMOptions, GBlendingOptions, GreedyOptions,
                                         InfoRegOptions, MMParetoOptions, OGMGEOptions,
                                         PMROptions)


@dataclasses.dataclass(frozen=True)
class Entry:
  method: str | type  # the Method subclass, or "module:Class" under inforeg_jax.methods
  doc: str
  options: type | None = None  # its options dataclass (None: no options)
  group: str | None = None  # the flag prefix; default: the name it is registered under
  default_window: str = "whole"  # Table 4's default: whole run, or the prime window
  modulating: bool = True  # --window applies to it


REGISTRY: dict[str, Entry] = {}
DEFAULT = "inforeg"  # --method's default: the paper's method


def register(name: str, entry: Entry) -> None:
  """Adds a method (``--method=name``); its options become ``--<group>.<field>`` flags."""
  if entry.options is not None and entry.group is None:
    entry = dataclasses.replace(entry, group=name)
  REGISTRY[name] = entry


register("joint", Entry("joint:Joint", "one fused cross-entropy", modulating=False))
register("joint_uni", Entry("joint:JointUni", "fused + unimodal cross-entropies (Joint "
                            "training*)", modulating=False))
register("inforeg", Entry("inforeg:InfoReg", "InfoReg (this paper, Algorithm 1)",
                          InfoRegOptions, default_window="prime"))
register("inforeg_uni", Entry("inforeg:InfoRegUni", "InfoReg with unimodal losses (InfoReg*)",
                              InfoRegOptions, group="inforeg", default_window="prime"))
register("ogm_ge", Entry("ogm_ge:OGMGE", "OGM-GE: on-the-fly gradient modulation + noise",
                         OGMGEOptions))
register("agm", Entry("agm:AGM", "AGM: adaptive gradient modulation of mono-modal responses",
                      AGMOptions))
register("pmr", Entry("pmr:PMR", "PMR: prototypical modal rebalance", PMROptions))
register("greedy", Entry("greedy:Greedy", "Greedy: MMTM fusion, re-balancing by conditional "
                         "learning speed", GreedyOptions))
register("gblending", Entry("gblending:GBlending", "G-Blending: loss weights from the "
                            "overfitting-to-generalization ratio", GBlendingOptions))
register("mmpareto", Entry("mmpareto:MMPareto", "MMPareto: Pareto integration of multimodal "
                           "and unimodal gradients", MMParetoOptions))


def names() -> tuple[str, ...]:
  return tuple(REGISTRY)


def groups() -> dict[str, type]:
  """{flag prefix: options dataclass} over the registered methods."""
  return {e.group: e.options for e in REGISTRY.values() if e.options is not None}


def get(name: str):
  """The `Method` subclass registered as ``name``."""
  method = REGISTRY[name].method
  if isinstance(method, str):
    module, cls = method.split(":")
    return getattr(importlib.import_module(f"inforeg_jax.methods.{module}"), cls)
  return method
