"""PMR (Fan et al., CVPR 2023): prototypical modal rebalance, as its official code runs it
(fanyunfeng-bit/Modal-Imbalance-PMR @ 3615e48, main_Prototype_grad.py).

- Prototypes (``calculate_prototype``, lines 383-441): per class, the mean of each modality's
  features (encoder output, before the fusion) over the first ``max(1, n // 10)`` training
  batches of a fresh shuffle, in evaluation mode with the training augmentation, computed
  before epoch 0 and after every epoch; from the set computed after epoch 1 on, an EMA
  ``P = (1 - m) mean + m P_prev``.
- Per batch (lines 152-178): prototype logits ``-||f - P_c||`` (Euclidean, not squared), the
  prototypical CE (PCE) of each modality, each modality's score = the batch sum of its
  true-class prototype probability; the modality with the lower score gets ``alpha * PCE``
  added to the fused CE (a hard switch with constant alpha; none on a tie), for
  ``start_epoch <= epoch <= end_epoch`` (inclusive, as the official window).

Our choices, named: for M > 2 every modality whose score is below the best gets the term (the
official code has two modalities); a class absent from the prototype batches keeps its previous
prototype (zeros before the first) where the official code gets NaN; the distance has a floor of
1e-12 under the square root, so that its gradient is finite at distance 0.
"""

from __future__ import annotations

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


class PMR(Method):

  def init_state(self, params, outputs):
    return {"prototypes": {m: jnp.zeros([self.setup.num_classes, f.shape[-1]], jnp.float32)
                           for m, f in outputs["features"].items()}}

  def objective(self, fwd, params, method_state, batch, ctx):
    terms, aux = super().objective(fwd, params, method_state, batch, ctx)
    o = self.options
    pce, weights, _ = pmr_terms(aux["out"]["features"], method_state["prototypes"],
                                batch["label"], o.alpha, self.modalities)
    on = ctx.active & (ctx.epoch >= o.start_epoch) & (ctx.epoch <= o.end_epoch)
    weights = jnp.where(on, weights, 0.0)
    aux["metrics"] = {**{f"coef_{m}": weights[i] for i, m in enumerate(self.modalities)},
                      **{f"pce_{m}": pce[i] for i, m in enumerate(self.modalities)}}
    return terms.at[0].add(jnp.sum(weights * pce)), aux

  def prototypes(self, loop, state, epoch: int, ema: bool):
    """The prototype pass (``calculate_prototype``): evaluation mode, training augmentation,
    the first tenth of the batches of epoch ``epoch + 1``'s shuffle."""
    num_batches = max(1, self.setup.steps_per_epoch // 10)
    sums = {m: 0.0 for m in self.modalities}
    counts = 0.0
    for out, labels in loop.predict_batches(state, epoch + 1, num_batches, augment=True):
      for m in self.modalities:
        s, c = class_means(out["features"][m], labels, self.setup.num_classes)
        sums[m] = sums[m] + s
      counts = counts + c
    old = state.method_state["prototypes"]
    new = {m: next_prototypes(old[m], sums[m], counts, self.options.momentum, ema)
           for m in self.modalities}
    return state.replace(method_state={**state.method_state,
                                       "prototypes": loop.replicate(new)})

  def on_start(self, loop, state):
    return self.prototypes(loop, state, -1, ema=False)

  def on_epoch_end(self, loop, state, epoch):
    return self.prototypes(loop, state, epoch, ema=epoch > 0), {}
