"""The jitted core: train state, one training step, one evaluation step, for one member.

``train_step(state, batch, hyper) -> (state, metrics)``: the method's objective (one forward
pass, or more where the method needs them), its gradients, Tr(F_m)'s batch term computed once
(Eq. 7), the optimizer (InfoReg or a baseline's transformation first in it) in the same jit.
The method and the optimizer are built once (`build_method`); ``hyper`` holds the member's
values that a population varies (`inforeg_jax.hyper.Hyper`), arrays given to the step, so
that one compiled program trains every member (`inforeg_jax.program`).
metrics is a flat dict of scalars: loss, each modality's unimodal loss and accuracy, each
modality's gradient-squared norm, the window flag the optimizer applied, ``finite`` and the
method's own. No host sync and no per-method branch: the method's hooks
(`methods.base.Method`) say what differs.

A step whose objective or Tr(F) is not finite contributes no gradient and leaves the model's
and the method's state as they were (momentum and weight decay still act, so epochs keep
their length); ``metrics["finite"]`` tells the loop, which stops the member or counts the step.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from inforeg_jax import hyper as hyper_lib
from inforeg_jax import methods, window
from inforeg_jax.hyper import Hyper
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


class TransformInputs(NamedTuple):
  """What the optimizer's transformations read at each update besides the gradient: typed,
  so that a misspelt input is an error when the step is traced, never an input ignored."""

  hyper: Hyper  # the member's values (a transformation's numbers: beta, K, alpha, ...)
  grad_sq: jax.Array  # f32[M], this step's ||g_m||^2 (Eq. 7, 13)
  modulate: jax.Array  # bool: the window gate (Table 4)
  unimodal_losses: dict | None = None  # {m: batch-mean unimodal CE} (Eq. 8)
  unimodal_scores: dict | None = None  # {m: batch sum of true-class probabilities}


class Optimizer:
  """[the method's transformations] -> weight decay -> SGD with momentum and StepLR, as the
  released code (the regulation acts on the gradient before weight decay and momentum).
  Built once from the shared config; a member's numbers (`Hyper`) come with each call."""

  def __init__(self, method: Method, labels):
    self.method, self.labels = method, labels  # labels: the params' modality labels

  def chain(self, hyper: Hyper) -> optax.GradientTransformationExtraArgs:
    """The member's chain (its values traced inside a step)."""
    cfg, spe = self.method.cfg, self.method.setup.steps_per_epoch
    schedule = optax.piecewise_constant_schedule(
        hyper.learning_rate,
        {k * cfg.lr_step_epochs * spe: cfg.lr_decay
         for k in range(1, cfg.epochs // cfg.lr_step_epochs + 1)})
    return optax.chain(*self.method.transforms(self.labels, hyper),
                       optax.add_decayed_weights(hyper.weight_decay),
                       optax.sgd(schedule, hyper.momentum))

  def init(self, params, hyper: Hyper):
    return self.chain(hyper).init(params)

  def update(self, updates, state, params, inputs: TransformInputs):
    return self.chain(inputs.hyper).update(updates, state, params, **inputs._asdict())


def build_method(cfg, setup: Setup) -> Method:
  """The run's method, built once from ``cfg`` with its member-wise values as markers
  (`hyper.static_config`): every member's numbers come as a `Hyper`."""
  return methods.get(cfg.method)(hyper_lib.static_config(cfg), setup)


def member_rng(hyper: Hyper) -> jax.Array:
  """The member's step key (the stream its augmentation and dropout draw from)."""
  return jax.random.fold_in(jax.random.key(hyper.seed), 1)


def make_create_state(model: nn.Module, method: Method, optimizer: Optimizer, example_inputs):
  """``create_state(hyper) -> TrainState``: the member's initial state from its seed."""

  def create_state(hyper: Hyper):
    rng = jax.random.key(hyper.seed)
    variables = model.init({"params": rng, "dropout": rng}, example_inputs, train=False)
    params = variables["params"]
    out = model.apply(variables, example_inputs, train=False)
    return TrainState(step=jnp.zeros([], jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}),
                      opt_state=optimizer.init(params, hyper),
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


def make_train_step(model: nn.Module, method: Method, optimizer: Optimizer,
                    flat_labels: Sequence, preprocess: Preprocess | None = None):
  """Builds ``train_step(state, batch, hyper)`` for one member; jit it, or vmap it over a
  population's members (`program`)."""
  setup = method.setup
  modalities = setup.modalities

  def train_step(state: TrainState, batch: Batch, hyper: Hyper):
    aug_rng, dropout_rng = jax.random.split(jax.random.fold_in(member_rng(hyper), state.step))
    if preprocess is not None:
      batch = preprocess(batch, aug_rng, True)
    # The window gate for this step (Table 4), from the flags the optimizer's window
    # transformation will use (`window.upcoming`: its own rule, the epochs closed so far).
    upcoming = window.upcoming(window.find_window(state.opt_state), method.window_rule(hyper),
                               setup.steps_per_epoch)
    active = window.gate(jnp.any(upcoming), setup.window)
    ctx = StepContext(step=state.step, epoch=state.step // setup.steps_per_epoch, active=active,
                      hyper=hyper)

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
    inputs = TransformInputs(hyper, safe(grad_sq), active)._replace(
        **safe(method.transform_inputs(obj, batch, ctx)))  # an unknown name: ValueError
    updates, opt_state = optimizer.update(update, state.opt_state, state.params, inputs)
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


__all__ = ["TrainState", "TransformInputs", "Optimizer", "build_method", "make_create_state",
           "make_train_step", "make_eval_step", "make_predict", "make_forward", "member_rng",
           "cross_entropy", "accuracy"]
