"""The `Method` seam: every hook a balancing method may need, with joint training as default.

The generic train step (`inforeg_jax.train`) and loop (`inforeg_jax.trainer`) call only these
hooks, through typed contracts, so that a method's behaviour lives in its own module:

model and optimizer   `build_model`, `transforms` (optax transformations put first in the
                      chain), `window_rule` (what decides the prime learning window),
                      `init_state` (the method's own state in ``TrainState``)
in the jitted step    `objective` -> `Objective`, `gradients` -> `Gradients`,
                      `transform_inputs` (the extra arguments its transformations read),
                      `after_step`, `step_metrics`
in the loop (host)    `on_start` (before epoch 0), `on_epoch_end`

A run is a population of one or more members (`inforeg_jax.trainer`). A method is built once,
from a config whose member-wise values (`inforeg_jax.hyper`) are markers that refuse to be
read: the step hooks read the member's own values in ``ctx.hyper`` (and the transformations in
their ``hyper`` input), the host hooks the members' in ``loop.hyper`` (arrays [N]). The host
hooks see the whole population through `Loop`: its state has a leading member axis.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, NamedTuple, Protocol, Sequence

import jax
import jax.numpy as jnp
import optax

from inforeg_jax import model_zoo, window

Batch = dict[str, Any]
# fwd(params, inputs, train=True, batch_stats=None, **model_kwargs) -> (outputs, new batch_stats)
Forward = Callable[..., tuple[dict, Any]]


@dataclasses.dataclass(frozen=True)
class Setup:
  """The run's static facts a method is built for (the same for every member)."""

  modalities: tuple[str, ...]
  num_classes: int
  steps_per_epoch: int
  window: str  # prime | whole | other, resolved (Table 4)


class StepContext(NamedTuple):
  """What a step's hooks know besides the state: where the step is and the window gate."""

  step: jax.Array  # int32 scalar, steps taken before this one
  epoch: jax.Array  # int32 scalar
  active: jax.Array  # bool scalar: a modulating rule applies now (the window gate, Table 4)
  hyper: Any = None  # the member's values (`inforeg_jax.hyper.Hyper`)


class Objective(NamedTuple):
  """What a method's objective computed on one batch."""

  terms: jax.Array  # f32[K]: the objective's terms (the gradient is of their sum by default)
  outputs: dict  # the training forward pass's outputs (logits, unimodal_logits, features)
  batch_stats: Any  # the batch statistics that pass updated
  fused_loss: jax.Array  # the fused cross-entropy (logged)
  unimodal_losses: dict  # {modality: its unimodal cross-entropy} (logged; Eq. 8)
  unimodal_logits: dict | None  # what train_acc_<m> is measured on (None: not comparable)
  metrics: dict | None = None  # the method's own per-step scalars
  carry: Any = None  # what the method's later hooks need from the objective


class Gradients(NamedTuple):
  """What a method trains with, and what Tr(F) is measured on."""

  update: Any  # the gradient handed to the optimizer
  fisher: Any  # the gradient whose squared norms are Tr(F) (Eq. 5, 7)
  metrics: dict | None = None


def cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels).mean()


def true_class_prob_sum(logits, labels):
  """OGM-GE's (and the released InfoReg's) score: batch sum of the true-class probability."""
  p = jax.nn.softmax(logits.astype(jnp.float32))
  return jnp.take_along_axis(p, labels[:, None], axis=1).sum()


class Loop(Protocol):
  """What the training loop offers a method's host hooks (`inforeg_jax.loop.Loop`), for the
  whole population: states and outputs with a leading member axis [N]."""

  dataset: Any  # `inforeg_jax.data.Dataset`
  members: int
  hyper: Any  # the members' values, `Hyper` of arrays [N]

  def place(self, tree) -> Any:
    """Arrays [N, ...] laid out as the population's state."""

  def map_members(self, fn: Callable, *trees) -> Any:
    """``fn`` applied to each member's slice of ``trees`` (leading axis [N]), results
    stacked: the same computation for a member whatever the population it is in."""

  def init_opt_state(self, params) -> Any:
    """A fresh optimizer state for every member (params [N, ...])."""

  def train_epoch(self, state, epoch: int, arrays=None, on_step=None) -> tuple[Any, Any]:
    """One epoch of training steps for every member (the state passed in is donated);
    (state, per-step metrics)."""

  def evaluate(self, state, arrays, zeroed: Sequence[str] = (), limit: int | None = None,
               predictions: bool = False) -> Any:
    """Every member's accuracies and losses on ``arrays``: {name: values [N]}."""

  def predict_batches(self, state, epoch: int, num_batches: int,
                      augment: bool = False) -> Iterator[tuple[dict, Any]]:
    """(outputs [N, ...], labels [N, B]) of the evaluation-mode forward pass over the first
    training batches of ``epoch``'s order."""

  def step_records(self, records) -> list[dict]:
    """The per-step metrics of `train_epoch` on the host: a dict of arrays [N] a step."""


class Method:
  """Joint training; subclasses override the hooks their rule needs.

  Class attributes:
    unimodal_weight: weight of each unimodal CE in the objective (Joint training* = 1).
    unimodal_heads: the model gets a separate linear head per modality for the unimodal
      logits (MMPareto's model) instead of reading them off the fused head.
    trace_from_fused: Tr(F_m) from the gradient of the fused loss alone (Eq. 5), not of the
      whole objective; costs a second backward pass when the objective has other terms.
    needs_validation: the rule reads the validation split (the run is refused without one).
  """

  unimodal_weight: float = 0.0
  unimodal_heads: bool = False
  trace_from_fused: bool = False
  needs_validation: bool = False

  def __init__(self, cfg, setup: Setup):
    self.cfg, self.setup, self.options = cfg, setup, cfg.options

  @property
  def modalities(self) -> tuple[str, ...]:
    return self.setup.modalities

  # ------------------------------------------------------------ model and optimizer

  def build_model(self, dataset):
    return model_zoo.build_model(self.cfg, dataset, unimodal_heads=self.unimodal_heads)

  def window_rule(self, hyper) -> window.WindowRule:
    """What decides the prime learning window for a member (Eq. 11 with its K)."""
    return window.WindowRule(hyper.threshold)

  def transforms(self, labels, hyper) -> list[optax.GradientTransformation]:
    """Transformations put first in the optimizer chain, with the member's values ``hyper``;
    exactly one of them keeps a `window.TraceWindow` under `window_rule` (the default: the
    window tracker alone)."""
    return [window.track_window(labels, self.setup.steps_per_epoch, self.window_rule(hyper),
                                self.modalities)]

  def init_state(self, params, outputs) -> Any:
    """The method's state in ``TrainState.method_state`` (``outputs``: the model's outputs on
    an example batch, for shapes)."""
    del params, outputs
    return {}

  # ------------------------------------------------------------ inside the jitted step

  def objective(self, fwd: Forward, params, method_state, batch: Batch,
                ctx: StepContext) -> Objective:
    """The objective's terms and what the step needs from the forward pass."""
    del method_state, ctx
    out, batch_stats = fwd(params, batch["inputs"])
    fused, uni = self.losses(out, batch["label"])
    terms = jnp.stack([fused, self.unimodal_weight * sum(uni.values())])
    return Objective(terms, out, batch_stats, fused, uni, out["unimodal_logits"])

  def losses(self, out, labels):
    """(fused CE, {modality: unimodal CE}) of a forward pass's outputs."""
    return (cross_entropy(out["logits"], labels),
            {m: cross_entropy(out["unimodal_logits"][m], labels) for m in self.modalities})

  def gradients(self, vjp_fn, objective: Objective, ctx: StepContext,
                flat_labels) -> Gradients:
    """The gradient to train with and the one Tr(F) is measured on (Eq. 5, 7)."""
    del ctx, flat_labels
    terms = objective.terms
    if self.trace_from_fused and terms.shape[0] > 1:
      per_term = jax.vmap(vjp_fn)(jnp.eye(terms.shape[0], dtype=terms.dtype))[0]
      return Gradients(jax.tree.map(lambda g: jnp.sum(g, axis=0), per_term),
                       jax.tree.map(lambda g: g[0], per_term))
    grads, = vjp_fn(jnp.ones_like(terms))
    return Gradients(grads, grads)

  def transform_inputs(self, objective: Objective, batch: Batch,
                       ctx: StepContext) -> dict[str, Any]:
    """What this method's transformations read besides what every update gets
    (``hyper``, ``grad_sq``, ``modulate``): fields of `train.TransformInputs` by name,
    e.g. ``{"unimodal_losses": ...}`` (an unknown name is an error when the step is traced)."""
    del objective, batch, ctx
    return {}

  def after_step(self, method_state, objective: Objective, grads, ctx: StepContext):
    del objective, grads, ctx
    return method_state

  def step_metrics(self, opt_state, method_state) -> dict[str, jax.Array]:
    """Scalars logged per step (epoch means in metrics.jsonl), e.g. ``coef_<m>``."""
    del opt_state, method_state
    return {}

  # ------------------------------------------------------------ in the loop, on the host

  def on_start(self, loop: Loop, state):
    """Before epoch 0 of a fresh run (not on resume); ``state`` is the population's."""
    del loop
    return state

  def on_epoch_end(self, loop: Loop, state, epoch: int):
    """After each epoch's training: (state, {metrics.jsonl field: values [N], one per
    member}) for the whole population."""
    del loop, epoch
    return state, {}
