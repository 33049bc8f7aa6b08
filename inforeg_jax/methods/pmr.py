"""PMR (Fan et al., CVPR 2023): prototypical modal rebalance, as its official code runs it
(fanyunfeng-bit/Modal-Imbalance-PMR @ 3615e48, main_Prototype_grad.py).

- Prototypes (``calculate_prototype``, lines 383-441): per class, the mean of each modality's
  features (encoder output, before the fusion) over the first ``max(1, n // 10)`` training
  batches (``--pmr.prototype_fraction``, 0.1: the official ``all_num // 10``) of a fresh
  shuffle, in evaluation mode with the training augmentation, computed
  before epoch 0 and after every epoch; from the set computed after epoch 1 on, an EMA
  ``P = (1 - m) mean + m P_prev``.
- Per batch (lines 152-178): prototype logits ``-||f - P_c||`` (Euclidean, not squared), the
  prototypical CE (PCE) of each modality, each modality's score = the batch sum of its
  true-class prototype probability; the modality with the lower score gets ``alpha * PCE``
  added to the fused CE (a hard switch with constant alpha; none on a tie), for
  ``start_epoch <= epoch <= end_epoch`` (inclusive, as the official window).
- The loss is exactly that (line 178): the released script has no PER (prototypical entropy
  regularisation) term, which the paper describes; neither do we.

Our choices, named: for M > 2 every modality whose score is below the best gets the term (the
official code has two modalities); a class absent from the prototype batches keeps its previous
prototype (zeros before the first) where the official code gets NaN; the distance has a floor of
1e-12 under the square root, so that its gradient is finite at distance 0.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from inforeg_jax.methods.base import Method


def prototype_logits(features: jax.Array, prototypes: jax.Array) -> jax.Array:
  """-||f - P_c|| for every class c: [B, C] (EU_dist, lines 69-75)."""
  d2 = jnp.sum(jnp.square(features[:, None, :] - prototypes[None]), axis=-1)
  return -jnp.sqrt(jnp.maximum(d2, 1e-12))


def pmr_terms(features: dict, prototypes: dict, labels, alpha, modalities):
  """(PCE per modality f32[M], weights f32[M], scores f32[M]) of one batch (lines 152-178)."""
  pce, scores = [], []
  for m in modalities:
    logits = prototype_logits(features[m].astype(jnp.float32), prototypes[m])
    pce.append(optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean())
    p = jax.nn.softmax(logits)
    scores.append(jnp.take_along_axis(p, labels[:, None], axis=1).sum())
  scores = jax.lax.stop_gradient(jnp.stack(scores))
  weights = jnp.where(scores < jnp.max(scores), alpha, 0.0)
  return jnp.stack(pce), weights, scores


def class_means(features, labels, num_classes):
  """(sums f32[C, D], counts f32[C]) of one batch."""
  onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  return onehot.T @ features.astype(jnp.float32), onehot.sum(0)


def next_prototypes(previous: jax.Array, sums, counts, momentum, ema: bool):
  """The new prototypes from one pass's class sums (lines 431-440)."""
  mean = jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts[:, None], 1), previous)
  return (1 - momentum) * mean + momentum * previous if ema else mean


def prototype_batches(steps_per_epoch: int, fraction: float) -> int:
  """How many training batches the prototypes are computed from: ``max(1, n * fraction)``
  batches (the official ``all_num // 10`` for 0.1)."""
  return max(1, int(steps_per_epoch * fraction + 1e-9))


class PMR(Method):

  def init_state(self, params, outputs):
    return {"prototypes": {m: jnp.zeros([self.setup.num_classes, f.shape[-1]], jnp.float32)
                           for m, f in outputs["features"].items()}}

  def objective(self, fwd, params, method_state, batch, ctx):
    obj = super().objective(fwd, params, method_state, batch, ctx)
    o = self.options
    pce, weights, _ = pmr_terms(obj.outputs["features"], method_state["prototypes"],
                                batch["label"], ctx.hyper.method.alpha, self.modalities)
    on = ctx.active & (ctx.epoch >= o.start_epoch) & (ctx.epoch <= o.end_epoch)
    weights = jnp.where(on, weights, 0.0)
    metrics = {**{f"coef_{m}": weights[i] for i, m in enumerate(self.modalities)},
               **{f"pce_{m}": pce[i] for i, m in enumerate(self.modalities)}}
    return obj._replace(terms=obj.terms.at[0].add(jnp.sum(weights * pce)), metrics=metrics)

  def prototypes(self, loop, state, epoch: int, ema: bool):
    """The prototype pass (``calculate_prototype``) for every member: evaluation mode,
    training augmentation, the first batches of epoch ``epoch + 1``'s shuffle (each
    member's own order), each member's prototypes from its own momentum."""
    num_batches = prototype_batches(self.setup.steps_per_epoch, self.options.prototype_fraction)
    classes, mods = self.setup.num_classes, self.modalities
    means = lambda features, labels: {m: class_means(features[m], labels, classes) for m in mods}
    total = None
    for out, labels in loop.predict_batches(state, epoch + 1, num_batches, augment=True):
      batch = loop.map_members(means, out["features"], labels)
      total = batch if total is None else jax.tree.map(jnp.add, total, batch)
    step = functools.partial(next_prototypes, ema=ema)
    new = loop.map_members(
        lambda old, total, momentum: {m: step(old[m], *total[m], momentum) for m in mods},
        state.method_state["prototypes"], total, loop.hyper.method.momentum)
    return state.replace(method_state={**state.method_state, "prototypes": loop.place(new)})

  def on_start(self, loop, state):
    return self.prototypes(loop, state, -1, ema=False)

  def on_epoch_end(self, loop, state, epoch):
    return self.prototypes(loop, state, epoch, ema=epoch > 0), {}
