"""A member's hyperparameters: the values a population varies, as one typed pytree.

A population's members share a program and differ only in the settings `config.member_fields`
lists (the seed, the optimizer's numbers, K of Eq. 11, each method's key coefficient). Those
travel as a `Hyper`, passed explicitly to the step (``StepContext.hyper``), to the optimizer's
transformations (their ``hyper`` input) and, stacked [N], to the host hooks (``loop.hyper``).
The method and the optimizer are built once, from a config in which those values are
`PerMember` markers (`static_config`): reading one there, instead of the member's own value,
fails at once with a line that says where the member's value is.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from inforeg_jax.config import Config, member_fields


@flax.struct.dataclass
class Hyper:
  """One member's values (arrays: scalars in a step, [N] when stacked for the host)."""

  seed: Any  # int32: initialisation, data order, augmentation and dropout keys
  learning_rate: Any  # f32
  momentum: Any  # f32, SGD's
  weight_decay: Any  # f32
  threshold: Any  # f32, K of Eq. 11 (resolved: the method's default when not given)
  method: Any = None  # the method's options with their member fields as arrays; None: none


class PerMember:
  """Stands for a value that differs between the members in the config the method and the
  optimizer are built from: any use of it raises `MemberValueError`."""

  def __init__(self, flag: str):
    self.flag = flag

  def __repr__(self) -> str:
    return f"PerMember({self.flag})"

  def fail(self, *args, **kwargs):
    field = self.flag.rpartition(".")[2]
    where = f"hyper.method.{field}" if "." in self.flag else f"hyper.{field}"
    raise MemberValueError(
        f"--{self.flag} differs between the members of a population: read the member's own "
        f"value (ctx.{where} in a step hook or transformation, loop.{where} [N] in a host "
        "hook), not the config's")


class MemberValueError(TypeError):
  """A member-wise value read from the shared config."""


for _name in ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__",
              "__truediv__", "__rtruediv__", "__floordiv__", "__pow__", "__rpow__", "__neg__",
              "__abs__", "__float__", "__int__", "__index__", "__bool__", "__lt__", "__le__",
              "__gt__", "__ge__", "__array__", "__jax_array__", "__hash__", "__eq__"):
  setattr(PerMember, _name, PerMember.fail)


def _member_names(options_cls) -> list[str]:
  return [f.name for f in dataclasses.fields(options_cls) if f.metadata.get("member")]


_REGISTERED: set[type] = set()


def _as_pytree(options_cls) -> None:
  """Registers a method's options class as a pytree: its member fields the leaves, the rest
  static (so ``hyper.method`` is that class, vmapped and traced like any pytree)."""
  if options_cls in _REGISTERED:
    return
  members = _member_names(options_cls)
  others = [f.name for f in dataclasses.fields(options_cls) if f.name not in members]
  jax.tree_util.register_dataclass(options_cls, data_fields=members, meta_fields=others)
  _REGISTERED.add(options_cls)


def hyper_of(cfg: Config) -> Hyper:
  """The member values of a config, as numpy scalars (int32 seed, float32 the rest)."""
  f32 = lambda v: np.float32(v)
  method = None
  if cfg.options is not None:
    _as_pytree(type(cfg.options))
    method = dataclasses.replace(cfg.options, **{
        n: f32(getattr(cfg.options, n)) for n in _member_names(type(cfg.options))})
  return Hyper(seed=np.int32(cfg.seed), learning_rate=f32(cfg.learning_rate),
               momentum=f32(cfg.momentum), weight_decay=f32(cfg.weight_decay),
               threshold=f32(cfg.resolved_threshold), method=method)


def stack(hypers: Sequence[Hyper]) -> Hyper:
  """The members' values stacked [N] (numpy, on the host)."""
  return jax.tree.map(lambda *xs: np.stack(xs), *hypers)


def member(hyper: Hyper, i: int) -> Hyper:
  return jax.tree.map(lambda x: x[i], hyper)


def static_config(cfg: Config) -> Config:
  """``cfg`` with every member-wise value a `PerMember` marker: what the method and the
  optimizer are built from, once for all members."""
  names = set(member_fields())
  top = {n: PerMember(n) for n in names if "." not in n}
  options = cfg.options
  if options is not None:
    group = cfg.group
    options = dataclasses.replace(options, **{
        n: PerMember(f"{group}.{n}") for n in _member_names(type(options))})
  return dataclasses.replace(cfg, **top, options=options)


def as_arrays(hyper: Hyper) -> Hyper:
  """The values as JAX arrays (what a jitted step is called with)."""
  return jax.tree.map(jnp.asarray, hyper)


__all__ = ["Hyper", "PerMember", "MemberValueError", "hyper_of", "stack", "member",
           "static_config", "as_arrays"]
