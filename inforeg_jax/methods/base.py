"""The `Method` seam: every hook a balancing method may need, with joint training as default.

The generic train step (`inforeg_jax.train`) and loop (`inforeg_jax.trainer`) call only these
hooks, so that a method's behaviour lives in its own module:

model and optimizer   `build_model`, `transforms` (optax transformations put first in the
                      chain), `init_state` (the method's own state in ``TrainState``)
in the jitted step    `objective` (the loss terms and what the step needs from the forward
                      pass), `gradients` (how the terms' gradients combine), `after_step`,
                      `step_metrics`
in the loop (host)    `split_data`, `on_start` (before epoch 0), `on_epoch_end`
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from inforeg_jax import model_zoo, window

Batch = dict[str, Any]
# fwd(params, inputs, train=True, **model_kwargs) -> (outputs, new batch_stats)
Forward = Callable[..., tuple[dict, Any]]


@dataclasses.dataclass(frozen=True)
class Setup:
  """The run's static facts a method is built for."""

  modalities: tuple[str, ...]
  num_classes: int
  steps_per_epoch: int
  window: str  # prime | whole | other, resolved
  threshold: float  # K of Eq. 11 for the window
  seed: int = 0


class StepContext(NamedTuple):
  """What a step's hooks know besides the state: where the step is and the window gate."""

  step: jax.Array  # int32 scalar, steps taken before this one
  epoch: jax.Array  # int32 scalar
  active: jax.Array  # bool scalar: a modulating rule applies now (the window gate, Table 4)


def cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels).mean()


def true_class_prob_sum(logits, labels):
  """OGM-GE's (and the released InfoReg's) score: batch sum of the true-class probability."""
  p = jax.nn.softmax(logits.astype(jnp.float32))
  return jnp.take_along_axis(p, labels[:, None], axis=1).sum()


class Method:
  """Joint training; subclasses override the hooks their rule needs.

  Class attributes:
    unimodal_weight: weight of each unimodal CE in the objective (Joint training* = 1).
    unimodal_heads: the model gets a separate linear head per modality for the unimodal
      logits (MMPareto's and G-Blending's models) instead of reading them off the fused head.
    trace_from_fused: Tr(F_m) from the gradient of the fused loss alone (Eq. 5), not of the
      whole objective; costs a second backward pass when the objective has other terms.
  """

  unimodal_weight: float = 0.0
  unimodal_heads: bool = False
  trace_from_fused: bool = False

  def __init__(self, cfg, setup: Setup):
    self.cfg, self.setup, self.options = cfg, setup, cfg.options

  @property
  def modalities(self) -> tuple[str, ...]:
    return self.setup.modalities

  # ------------------------------------------------------------ model and optimizer

  def build_model(self, dataset):
    return model_zoo.build_model(self.cfg, dataset, unimodal_heads=self.unimodal_heads)

  def transforms(self, labels) -> list[optax.GradientTransformation]:
    """Transformations put first in the optimizer chain; one of them must keep a
    `window.TraceWindow` (the default: the window tracker alone)."""
    return [window.track_window(labels, self.setup.steps_per_epoch, self.setup.threshold,
                                self.modalities)]

  def init_state(self, params, outputs) -> Any:
    """The method's state in ``TrainState.method_state`` (``outputs``: the model's outputs on
    an example batch, for shapes)."""
    del params, outputs
    return {}

  # ------------------------------------------------------------ inside the jitted step

  def objective(self, fwd: Forward, params, method_state, batch: Batch, ctx: StepContext):
    """(terms f32[K], aux): the objective's terms, summed for the gradient by default, and
    ``aux`` with at least ``out`` (the training forward's outputs), ``batch_stats``,
    ``fused`` (fused CE) and ``uni`` (each modality's unimodal CE); ``aux["metrics"]``, if
    present, is logged."""
    del method_state, ctx
    out, batch_stats = fwd(params, batch["inputs"])
    fused, uni = self.losses(out, batch["label"])
    terms = jnp.stack([fused, self.unimodal_weight * sum(uni.values())])
    return terms, {"out": out, "batch_stats": batch_stats, "fused": fused, "uni": uni}

  def losses(self, out, labels):
    """(fused CE, {modality: unimodal CE}) of a forward pass's outputs."""
    return (cross_entropy(out["logits"], labels),
            {m: cross_entropy(out["unimodal_logits"][m], labels) for m in self.modalities})

  def gradients(self, vjp_fn, terms, aux, ctx: StepContext, flat_labels):
    """(gradient to train with, gradient whose squared norms are Tr(F) (Eq. 5, 7), metrics)."""
    del ctx, flat_labels
    if self.trace_from_fused and terms.shape[0] > 1:
      per_term = jax.vmap(vjp_fn)(jnp.eye(terms.shape[0], dtype=terms.dtype))[0]
      return (jax.tree.map(lambda g: jnp.sum(g, axis=0), per_term),
              jax.tree.map(lambda g: g[0], per_term), dict(aux.get("metrics", {})))
    grads, = vjp_fn(jnp.ones_like(terms))
    return grads, grads, dict(aux.get("metrics", {}))

  def after_step(self, method_state, aux, grads, ctx: StepContext):
    del aux, grads, ctx
    return method_state

  def step_metrics(self, opt_state, method_state) -> dict[str, jax.Array]:
    """Scalars logged per step (epoch means in metrics.jsonl), e.g. ``coef_<m>``."""
    del opt_state, method_state
    return {}

  # ------------------------------------------------------------ in the loop, on the host

  @classmethod
  def split_data(cls, cfg, dataset):
    """The dataset the run trains on (called before the method is built: it may change the
    number of training steps)."""
    del cfg
    return dataset

  def on_start(self, loop, state):
    """Before epoch 0 of a fresh run (not on resume)."""
    del loop
    return state

  def on_epoch_end(self, loop, state, epoch: int):
    """After each epoch's training; returns (state, extra metrics.jsonl fields)."""
    del loop, epoch
    return state, {}
