"""The jitted core: train state, one training step, one evaluation step.

``train_step(state, batch, rng) -> (state, metrics)``: one forward pass, one gradient, the
optimizer (InfoReg or a baseline inside it) in the same jit; metrics is a flat dict of
scalars: loss, each modality's unimodal loss and accuracy, each modality's gradient-squared
norm (the batch estimate of Tr(F_m), Eq. 7) and, where a regulation is in the chain, its
alpha and window flag per modality. No host sync, no Python loop at run time.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from inforeg_jax.regulation import InfoRegState, grad_sq_norms, inforeg_diagnostics

Batch = dict[str, jax.Array]
Preprocess = Callable[[Batch, jax.Array, bool], Batch]


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


def create_state(model: nn.Module, tx: optax.GradientTransformation, example_inputs, rng):
  variables = model.init({"params": rng, "dropout": rng}, example_inputs, train=False)
  params = variables["params"]
  return TrainState(step=jnp.zeros([], jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params))


def cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels).mean()


def true_class_prob_sum(logits, labels):
  """OGM-GE / released-InfoReg score: batch sum of the true-class softmax probability."""
  p = jax.nn.softmax(logits.astype(jnp.float32))
  return jnp.take_along_axis(p, labels[:, None], axis=1).sum()


def accuracy(logits, labels):
  return jnp.mean(jnp.argmax(logits, -1) == labels)


def has_inforeg(opt_state) -> bool:
  return any(isinstance(s, InfoRegState) for s in
             jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, InfoRegState)))


def make_train_step(model: nn.Module, tx: optax.GradientTransformationExtraArgs,
                    flat_labels: Sequence, modalities: Sequence[str],
                    unimodal_loss_weight: float = 0.0,
                    preprocess: Preprocess | None = None):
  """Builds ``train_step(state, batch, rng)``; jit it (see `trainer`)."""

  def loss_fn(params, batch_stats, batch, rng):
    out, new_vars = model.apply({"params": params, "batch_stats": batch_stats},
                                batch["inputs"], train=True, mutable=["batch_stats"],
                                rngs={"dropout": rng})
    y = batch["label"]
    fused = cross_entropy(out["logits"], y)
    uni = {m: cross_entropy(out["unimodal_logits"][m], y) for m in modalities}
    loss = fused + unimodal_loss_weight * sum(uni.values())
    return loss, (fused, uni, out, new_vars.get("batch_stats", batch_stats))

  def train_step(state: TrainState, batch: Batch, rng: jax.Array):
    aug_rng, dropout_rng = jax.random.split(jax.random.fold_in(rng, state.step))
    if preprocess is not None:
      batch = preprocess(batch, aug_rng, True)
    (loss, (fused, uni, out, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state.batch_stats, batch, dropout_rng)
    y = batch["label"]
    scores = {m: true_class_prob_sum(out["unimodal_logits"][m], y) for m in modalities}
    updates, opt_state = tx.update(grads, state.opt_state, state.params,
                                   unimodal_losses=uni, unimodal_scores=scores)
    params = optax.apply_updates(state.params, updates)
    gsq = grad_sq_norms(grads, flat_labels, modalities)
    metrics = {"loss": loss, "fused_loss": fused, "acc": accuracy(out["logits"], y)}
    for i, m in enumerate(modalities):
      metrics[f"loss_{m}"] = uni[m]
      metrics[f"acc_{m}"] = accuracy(out["unimodal_logits"][m], y)
      metrics[f"grad_sq_{m}"] = gsq[i]
    if has_inforeg(opt_state):
      diag = inforeg_diagnostics(opt_state, modalities)
      metrics.update({k: v for k, v in diag.items() if not k.startswith("trace_history")})
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              opt_state=opt_state)
    return new_state, metrics

  return train_step


def make_eval_step(model: nn.Module, modalities: Sequence[str],
                   preprocess: Preprocess | None = None):
  """Builds ``eval_step(state, batch) -> metrics`` of per-batch *sums* over the examples
  that ``batch['mask']`` keeps (correct counts, summed loss, count), and the predictions."""

  def eval_step(state: TrainState, batch: Batch):
    if preprocess is not None:
      batch = preprocess(batch, jax.random.key(0), False)
    out = model.apply({"params": state.params, "batch_stats": state.batch_stats},
                      batch["inputs"], train=False)
    y, mask = batch["label"], batch["mask"]
    correct = lambda logits: jnp.sum((jnp.argmax(logits, -1) == y) * mask)
    ce = optax.softmax_cross_entropy_with_integer_labels(out["logits"].astype(jnp.float32), y)
    metrics = {"count": jnp.sum(mask), "loss": jnp.sum(ce * mask),
               "acc": correct(out["logits"]), "pred": jnp.argmax(out["logits"], -1)}
    for m in modalities:
      metrics[f"acc_{m}"] = correct(out["unimodal_logits"][m])
    return metrics

  return eval_step
