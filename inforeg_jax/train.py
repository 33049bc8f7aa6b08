"""The jitted core: train state, one training step, one evaluation step, for one member.

``train_step(state, batch, hp) -> (state, metrics)``: the method's objective (one forward
pass, or more where the method needs them), its gradients, Tr(F_m)'s batch term computed once
(Eq. 7), the optimizer (InfoReg or a baseline's transformation first in it) in the same jit.
``hp`` holds the member's hyperparameters that a population varies (`config.member_fields`):
the method and the optimizer are built from them inside the step, so that one compiled program
trains every member (`inforeg_jax.trainer` vmaps these functions over a member axis).
metrics is a flat dict of scalars: loss, each modality's unimodal loss and accuracy, each
modality's gradient-squared norm, the window flag the optimizer applied, ``finite`` and the
method's own. No host sync and no per-method branch: the method's hooks
(`methods.base.Method`) say what differs.

A step whose objective or Tr(F) is not finite contributes no gradient and leaves the model's
and the method's state as they were (momentum and weight decay still act, so epochs keep
their length); ``metrics["finite"]`` tells the loop, which stops the member or counts the step.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from inforeg_jax import config as config_lib
from inforeg_jax import methods, window
from inforeg_jax.methods.base import Method, Setup, StepContext, cross_entropy

Batch = dict[str, jax.Array]
Preprocess = Callable[[Batch, jax.Array, bool], Batch]


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar
  params: Any
  batch_stats: Any
  opt_state: Any
  method_state: Any  # the method's own state outside the optimizer (`Method.init_state`)


def make_optimizer(cfg, method: Method, labels, steps_per_epoch: int):
  """[the method's transformations] -> weight decay -> SGD with momentum and StepLR, as the
  released code (the regulation acts on the gradient before weight decay and momentum)."""
  schedule = optax.piecewise_constant_schedule(
      cfg.learning_rate,
      {k * cfg.lr_step_epochs * steps_per_epoch: cfg.lr_decay
       for k in range(1, cfg.epochs // cfg.lr_step_epochs + 1)})
  return optax.chain(*method.transforms(labels), optax.add_decayed_weights(cfg.weight_decay),
                     optax.sgd(schedule, cfg.momentum))


@dataclasses.dataclass(frozen=True)
class MemberBuilder:
  """Builds a member's method and optimizer from its hyperparameters ``hp`` (plain numbers,
  or traced arrays inside the step): the rest of the config is ``cfg``, shared by all."""

  cfg: Any
  setup: Setup
  labels: Any  # the params' modality labels (`labels.modality_labels`)

  def config(self, hp: dict | None = None):
    return self.cfg if hp is None else config_lib.with_member_values(self.cfg, hp)

  def method(self, hp: dict | None = None) -> Method:
    cfg = self.config(hp)
    return methods.get(cfg.method)(cfg, self.setup)

  def build(self, hp: dict | None = None):
    """(method, optimizer) of the member with ``hp``."""
    method = self.method(hp)
    return method, make_optimizer(method.cfg, method, self.labels, self.setup.steps_per_epoch)


def member_rng(hp) -> jax.Array:
  """The member's step key (the stream its augmentation and dropout draw from)."""
  return jax.random.fold_in(jax.random.key(hp["seed"]), 1)


def make_create_state(model: nn.Module, builder: MemberBuilder, example_inputs):
  """``create_state(hp) -> TrainState``: the member's initial state from its seed."""

  def create_state(hp):
    method, tx = builder.build(hp)
    rng = jax.random.key(hp["seed"])
    variables = model.init({"params": rng, "dropout": rng}, example_inputs, train=False)
    params = variables["params"]
    out = model.apply(variables, example_inputs, train=False)
    return TrainState(step=jnp.zeros([], jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                      method_state=method.init_state(params, out))

  return create_state


def accuracy(logits, labels):
  return jnp.mean(jnp.argmax(logits, -1) == labels)


def make_forward(model: nn.Module, batch_stats, rng):
  """fwd(params, inputs, train=True, batch_stats=None, **model_kwargs) -> (outputs, new
  batch_stats); ``batch_stats`` overrides the state's (e.g. the statistics a training pass
  has just updated, for evaluation-mode passes after it)."""

  def fwd(params, inputs, train: bool = True, batch_stats=batch_stats, **kwargs):
    variables = {"params": params, "batch_stats": batch_stats}
    if not train:
      return model.apply(variables, inputs, train=False, **kwargs), batch_stats
    out, new = model.apply(variables, inputs, train=True, mutable=["batch_stats"],
                           rngs={"dropout": rng}, **kwargs)
    return out, new.get("batch_stats", batch_stats)

  return fwd


def _where(ok, new, old):
  return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)


def make_train_step(model: nn.Module, builder: MemberBuilder, flat_labels: Sequence,
                    preprocess: Preprocess | None = None):
  """Builds ``train_step(state, batch, hp)`` for one member; vmap and jit it (`trainer`)."""
  setup = builder.setup
  modalities = setup.modalities

  def train_step(state: TrainState, batch: Batch, hp):
    method, tx = builder.build(hp)
    aug_rng, dropout_rng = jax.random.split(jax.random.fold_in(member_rng(hp), state.step))
    if preprocess is not None:
      batch = preprocess(batch, aug_rng, True)
    # The window gate for this step (Table 4), from the flags the optimizer's window
    # transformation will use (`window.upcoming`: its own rule, the epochs closed so far).
    upcoming = window.upcoming(window.find_window(state.opt_state), method.window_rule,
                               setup.steps_per_epoch)
    active = window.gate(jnp.any(upcoming), setup.window)
    ctx = StepContext(step=state.step, epoch=state.step // setup.steps_per_epoch, active=active)

    fwd = make_forward(model, state.batch_stats, dropout_rng)
    terms, vjp_fn, obj = jax.vjp(
        lambda p: (lambda o: (o.terms, o))(
            method.objective(fwd, p, state.method_state, batch, ctx)),
        state.params, has_aux=True)
    grads = method.gradients(vjp_fn, obj, ctx, flat_labels)
    grad_sq = window.grad_sq_norms(grads.fisher, flat_labels, modalities)
    finite = jnp.isfinite(jnp.sum(terms)) & jnp.all(jnp.isfinite(grad_sq))

    safe = lambda tree: jax.tree.map(lambda v: jnp.where(finite, v, jnp.zeros_like(v)), tree)
    update = safe(grads.update)
    updates, opt_state = tx.update(
        update, state.opt_state, state.params, grad_sq=safe(grad_sq), modulate=active,
        **safe(method.transform_inputs(obj, batch, ctx)))
    params = optax.apply_updates(state.params, updates)
    method_state = _where(finite, method.after_step(state.method_state, obj, update, ctx),
                          state.method_state)
    batch_stats = _where(finite, obj.batch_stats, state.batch_stats)

    y = batch["label"]
    applied = window.find_window(opt_state).in_window  # the flags the optimizer used
    metrics = {**(obj.metrics or {}), **(grads.metrics or {})}
    metrics.update(loss=jnp.sum(terms), fused_loss=obj.fused_loss,
                   acc=accuracy(obj.outputs["logits"], y),
                   window=jnp.any(applied).astype(jnp.float32),
                   finite=finite.astype(jnp.float32))
    for i, m in enumerate(modalities):
      metrics[f"loss_{m}"] = obj.unimodal_losses[m]
      if obj.unimodal_logits is not None:
        metrics[f"acc_{m}"] = accuracy(obj.unimodal_logits[m], y)
      metrics[f"grad_sq_{m}"] = grad_sq[i]
    metrics.update(method.step_metrics(opt_state, method_state))
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              opt_state=opt_state, method_state=method_state)
    return new_state, metrics

  return train_step


def make_predict(model: nn.Module, preprocess: Preprocess | None = None):
  """``predict(state, batch, rng=None) -> outputs``: the evaluation-mode forward pass
  (features, logits, unimodal logits), for evaluation and for methods' passes over the data;
  with ``rng``, the inputs get the training augmentation first (PMR's prototype pass)."""

  def predict(state: TrainState, batch: Batch, rng=None):
    if preprocess is not None:
      batch = preprocess(batch, jax.random.key(0) if rng is None else rng, rng is not None)
    inputs = batch["inputs"]
    if "keep" in batch:  # zeroed modalities (G-Blending's trials), after the preprocessing
      inputs = {m: x * batch["keep"][m].reshape((-1,) + (1,) * (x.ndim - 1)).astype(x.dtype)
                for m, x in inputs.items()}
    return model.apply({"params": state.params, "batch_stats": state.batch_stats}, inputs,
                       train=False)

  return predict


def make_eval_step(model: nn.Module, modalities: Sequence[str],
                   preprocess: Preprocess | None = None):
  """Builds ``eval_step(state, batch) -> metrics`` of per-batch *sums* over the examples
  that ``batch['mask']`` keeps (correct counts, summed losses, count), and the predictions."""
  predict = make_predict(model, preprocess)

  def eval_step(state: TrainState, batch: Batch):
    out = predict(state, batch)
    y, mask = batch["label"], batch["mask"]
    correct = lambda logits: jnp.sum((jnp.argmax(logits, -1) == y) * mask)
    ce = lambda logits: jnp.sum(optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), y) * mask)
    metrics = {"count": jnp.sum(mask), "loss": ce(out["logits"]),
               "acc": correct(out["logits"]), "pred": jnp.argmax(out["logits"], -1)}
    for m in modalities:
      metrics[f"acc_{m}"] = correct(out["unimodal_logits"][m])
      metrics[f"loss_{m}"] = ce(out["unimodal_logits"][m])
    return metrics

  return eval_step


__all__ = ["TrainState", "MemberBuilder", "make_optimizer", "make_create_state",
           "make_train_step", "make_eval_step", "make_predict", "make_forward", "member_rng",
           "cross_entropy", "accuracy"]
