"""The jitted core: train state, one training step, one evaluation step.

``train_step(state, batch, rng) -> (state, metrics)``: the method's objective (one forward
pass, or more where the method needs them), its gradients, Tr(F_m)'s batch term computed once
(Eq. 7), the optimizer (InfoReg or a baseline's transformation first in it) in the same jit.
metrics is a flat dict of scalars: loss, each modality's unimodal loss and accuracy, each
modality's gradient-squared norm, the window flag, ``finite`` and the method's own. No host
sync and no per-method branch: the method's hooks (`methods.base.Method`) say what differs.

A step whose objective or Tr(F) is not finite contributes no gradient and leaves the model's
and the method's state as they were (momentum and weight decay still act, so epochs keep
their length); ``metrics["finite"]`` tells the loop, which stops the run or counts the step.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from inforeg_jax import window
from inforeg_jax.methods.base import Method, StepContext, cross_entropy, true_class_prob_sum

Batch = dict[str, jax.Array]
Preprocess = Callable[[Batch, jax.Array, bool], Batch]


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar
  params: Any
  batch_stats: Any
  opt_state: Any
  method_state: Any  # the method's own state outside the optimizer (`Method.init_state`)


def create_state(model: nn.Module, tx: optax.GradientTransformation, method: Method,
                 example_inputs, rng) -> TrainState:
  variables = model.init({"params": rng, "dropout": rng}, example_inputs, train=False)
  params = variables["params"]
  out = model.apply(variables, example_inputs, train=False)
  return TrainState(step=jnp.zeros([], jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                    method_state=method.init_state(params, out))


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


def make_train_step(model: nn.Module, tx: optax.GradientTransformationExtraArgs,
                    method: Method, flat_labels: Sequence,
                    preprocess: Preprocess | None = None):
  """Builds ``train_step(state, batch, rng)``; jit it (see `trainer`)."""
  setup = method.setup
  modalities = setup.modalities

  def train_step(state: TrainState, batch: Batch, rng: jax.Array):
    aug_rng, dropout_rng = jax.random.split(jax.random.fold_in(rng, state.step))
    if preprocess is not None:
      batch = preprocess(batch, aug_rng, True)
    # The window for this step (Eq. 11), from the epochs closed so far.
    trace = window.roll(window.find_window(state.opt_state), setup.steps_per_epoch,
                        setup.threshold)
    in_window = jnp.any(window.flags(trace, setup.threshold))
    active = window.gate(in_window, setup.window)
    ctx = StepContext(step=state.step, epoch=state.step // setup.steps_per_epoch, active=active)

    fwd = make_forward(model, state.batch_stats, dropout_rng)
    terms, vjp_fn, aux = jax.vjp(
        lambda p: method.objective(fwd, p, state.method_state, batch, ctx), state.params,
        has_aux=True)
    grads, fisher_grads, metrics = method.gradients(vjp_fn, terms, aux, ctx, flat_labels)
    grad_sq = window.grad_sq_norms(fisher_grads, flat_labels, modalities)
    finite = jnp.isfinite(jnp.sum(terms)) & jnp.all(jnp.isfinite(grad_sq))

    y, out = batch["label"], aux["out"]
    uni = {m: jnp.where(finite, aux["uni"][m], 0.0) for m in modalities}
    scores = {m: jnp.where(finite, true_class_prob_sum(out["unimodal_logits"][m], y), 0.0)
              for m in modalities}
    grads = jax.tree.map(lambda g: jnp.where(finite, g, jnp.zeros_like(g)), grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params,
                                   grad_sq=jnp.where(finite, grad_sq, 0.0),
                                   unimodal_losses=uni, unimodal_scores=scores, modulate=active)
    params = optax.apply_updates(state.params, updates)
    method_state = _where(finite, method.after_step(state.method_state, aux, grads, ctx),
                          state.method_state)
    batch_stats = _where(finite, aux["batch_stats"], state.batch_stats)

    metrics.update(loss=jnp.sum(terms), fused_loss=aux["fused"], acc=accuracy(out["logits"], y),
                   window=in_window.astype(jnp.float32), finite=finite.astype(jnp.float32))
    for i, m in enumerate(modalities):
      metrics[f"loss_{m}"] = aux["uni"][m]
      metrics[f"acc_{m}"] = accuracy(out["unimodal_logits"][m], y)
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
    return model.apply({"params": state.params, "batch_stats": state.batch_stats},
                       batch["inputs"], train=False)

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


__all__ = ["TrainState", "create_state", "make_train_step", "make_eval_step", "make_predict",
           "make_forward", "cross_entropy", "accuracy"]
