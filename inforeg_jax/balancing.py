"""The balancing baselines of the paper's tables, each in the shape its rule has.

Gradient rules are optax transformations (put first in the chain, like `inforeg_transform`):
- `ogm_ge_transform`: OGM-GE (Peng et al., CVPR 2022).
- `greedy_transform`: Greedy re-balancing steps (Wu et al., ICML 2022), simplified.
Loss and gradient-combination rules are pure functions the train step calls:
- AGM (Li et al., ICCV 2023): `agm_coefficients`, `agm_logits`.
- PMR (Fan et al., CVPR 2023): `pmr_loss`, `update_prototypes`.
- MMPareto (Wei & Hu, ICML 2024): `mmpareto_combine`.
- G-Blending (Wang et al., CVPR 2020): `gblending_weights` (the trainer measures the losses).
And `WindowTracker`: InfoReg's prime-learning-window criterion (Eq. 11) for gating any of them
(`--window=prime|other|whole`, Table 4).

Each rule is written from the method's paper and official code as summarised in METHOD.md;
where we chose, the docstring says so.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from inforeg_jax.regulation import (TRACE_HISTORY, close_epoch, modality_names, prime_window,
                                    resolve_labels)

# ---------------------------------------------------------------- the window, for any method


class WindowTracker(NamedTuple):
  """Tr(F_m) per epoch (Eq. 7) and the prime-learning-window flag (Eq. 11), any method."""

  count: jax.Array  # int32 scalar
  grad_sq_sum: jax.Array  # f32[M]
  trace_history: jax.Array  # f32[TRACE_HISTORY, M]


def window_init(num_modalities: int) -> WindowTracker:
  return WindowTracker(jnp.zeros([], jnp.int32), jnp.zeros([num_modalities], jnp.float32),
                       jnp.zeros([TRACE_HISTORY, num_modalities], jnp.float32))


def window_now(tracker: WindowTracker, steps_per_epoch, threshold):
  """Closes a finished epoch if this step opens a new one; returns (tracker, in_window):
  whether any modality is in its prime learning window (Eq. 11) for this step."""
  history, sums = close_epoch(tracker.count, steps_per_epoch, tracker.grad_sq_sum,
                              tracker.trace_history, steps_per_epoch)
  return tracker._replace(grad_sq_sum=sums, trace_history=history), jnp.any(
      prime_window(history, threshold))


def window_add(tracker: WindowTracker, grad_sq) -> WindowTracker:
  """Adds this step's ||g_m||^2 (Eq. 13) and counts the step."""
  return tracker._replace(count=tracker.count + 1, grad_sq_sum=tracker.grad_sq_sum + grad_sq)


def gate(in_window, window: str):
  """Whether a method's adjustment applies now: Table 4's whole / prime / other."""
  if window == "whole":
    return jnp.asarray(True)
  return in_window if window == "prime" else ~in_window


# ---------------------------------------------------------------- OGM-GE


class OGMGEState(NamedTuple):
  """State of `ogm_ge_transform`."""

  count: jax.Array  # int32 scalar
  key: jax.Array  # PRNG key for the generalisation-enhancement noise
  coefficient: jax.Array  # f32[M], last step's coefficients (for logging)


def ogm_coefficients(scores: jax.Array, alpha) -> jax.Array:
  """OGM: ratio_m = s_m / mean of the others' scores; a modality with ratio > 1 gets
  1 - tanh(alpha * ratio), the others 1 (for two modalities, the official rule)."""
  m = scores.shape[0]
  others = (jnp.sum(scores) - scores) / (m - 1)
  ratio = scores / jnp.maximum(others, 1e-8)
  return jnp.where(ratio > 1, 1.0 - jnp.tanh(alpha * ratio), 1.0)


def ogm_ge_transform(param_labels, steps_per_epoch: int, alpha=0.1, noise: bool = True,
                     start_epoch: int = 0, end_epoch: int = 50, seed: int = 0,
                     modalities: Sequence[str] | None = None,
                     ) -> optax.GradientTransformationExtraArgs:
  """OGM-GE as an optax transformation.

  ``update(..., unimodal_scores=..., modulate=True)``: scores are each modality's batch sum
  of true-class softmax probability. Between ``start_epoch`` and ``end_epoch`` (and where
  ``modulate``), each encoder's weight gradients (leaves of rank >= 2: the conv kernels of
  the official code, and dense kernels) are scaled by the coefficient and, with ``noise``
  (GE), get Gaussian noise with the gradient's own standard deviation.
  """
  if alpha < 0:
    raise ValueError(f"alpha must be >= 0, got {alpha}")

  def init_fn(params):
    flat = resolve_labels(param_labels, params)
    names = tuple(modalities) if modalities else modality_names(flat)
    return OGMGEState(jnp.zeros([], jnp.int32), jax.random.key(seed),
                      jnp.ones([len(names)], jnp.float32))

  def update_fn(updates, state, params=None, *, unimodal_scores=None, modulate=True, **extra):
    del extra
    flat = resolve_labels(param_labels, params if params is not None else updates)
    names = tuple(modalities) if modalities else modality_names(flat)
    if unimodal_scores is None:
      raise ValueError("ogm_ge_transform.update needs unimodal_scores=")
    scores = jnp.stack([jnp.asarray(unimodal_scores[n], jnp.float32) for n in names])
    epoch = state.count // steps_per_epoch
    active = modulate & (epoch >= start_epoch) & (epoch < end_epoch)
    coef = jnp.where(active, ogm_coefficients(scores, alpha), 1.0)
    index = {n: i for i, n in enumerate(names)}
    leaves, treedef = jax.tree.flatten(updates)
    keys = jax.random.split(jax.random.fold_in(state.key, state.count), len(leaves))
    out = []
    for g, label, k in zip(leaves, flat, keys):
      if label is None or g.ndim < 2:
        out.append(g)
        continue
      scaled = g * coef[index[label]].astype(g.dtype)
      if noise:
        std = jnp.std(g.astype(jnp.float32))
        scaled = scaled + jnp.where(active, std, 0.0).astype(g.dtype) * jax.random.normal(
            k, g.shape, g.dtype)
      out.append(scaled)
    return jax.tree.unflatten(treedef, out), OGMGEState(state.count + 1, state.key, coef)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ---------------------------------------------------------------- Greedy


class GreedyState(NamedTuple):
  """State of `greedy_transform`."""

  speed: jax.Array  # f32[M], EMA of ||g_m||^2 / ||w_m||^2 (conditional learning speed)
  frozen: jax.Array  # bool[M], modalities held back at the last step


def greedy_transform(param_labels, threshold=0.1, momentum=0.9,
                     modalities: Sequence[str] | None = None
                     ) -> optax.GradientTransformationExtraArgs:
  """Greedy re-balancing steps, simplified to a gradient rule (our choice, METHOD.md):
  the conditional learning speed of modality m is ||g_m||^2 / ||w_m||^2 (EMA over steps);
  while the fastest is more than ``1 + threshold`` times the slowest, a re-balancing step
  zeroes the fastest encoder's gradient so that the slower ones (and the head) learn.
  ``update(..., modulate=True)`` gates it (Table 4)."""

  def setup(params):
    flat = resolve_labels(param_labels, params)
    return flat, (tuple(modalities) if modalities else modality_names(flat))

  def init_fn(params):
    _, names = setup(params)
    return GreedyState(jnp.zeros([len(names)], jnp.float32), jnp.zeros([len(names)], bool))

  def update_fn(updates, state, params=None, *, modulate=True, **extra):
    del extra
    if params is None:
      raise ValueError("greedy_transform needs params")
    flat, names = setup(params)
    g_leaves, w_leaves = jax.tree.leaves(updates), jax.tree.leaves(params)
    ratio = jnp.stack([
        optax.tree.norm([g for g, l in zip(g_leaves, flat) if l == n], squared=True)
        / jnp.maximum(optax.tree.norm([w for w, l in zip(w_leaves, flat) if l == n],
                                      squared=True), 1e-12) for n in names])
    speed = jnp.where(jnp.all(state.speed == 0), ratio,
                      momentum * state.speed + (1 - momentum) * ratio)
    unbalanced = jnp.max(speed) > (1 + threshold) * jnp.min(speed)
    frozen = (jnp.arange(len(names)) == jnp.argmax(speed)) & unbalanced & modulate
    index = {n: i for i, n in enumerate(names)}
    out = [g if l is None else jnp.where(frozen[index[l]], jnp.zeros_like(g), g)
           for g, l in zip(g_leaves, flat)]
    return jax.tree.unflatten(jax.tree.structure(updates), out), GreedyState(speed, frozen)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ---------------------------------------------------------------- AGM


def agm_responses(fused, unimodal: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Mono-modal responses by Shapley over zeroed features (AGM): for two modalities
  m_a = (f(a,v) - f(0,v) + f(a,0)) / 2; for M > 2, the one-out/one-in average
  (fused - f(others only) + f(m only)) / 2 with f(others only) ~ fused - f(m only)
  (our choice); m_a + m_v = f(a,v) for two modalities."""
  names = list(unimodal)
  if len(names) == 2:
    a, b = names
    return {a: (fused - unimodal[b] + unimodal[a]) / 2, b: (fused - unimodal[a] + unimodal[b]) / 2}
  return {m: unimodal[m] for m in names}


def agm_coefficients(running_scores: jax.Array, alpha) -> jax.Array:
  """exp(alpha * (1 - ratio_m)), ratio_m = running score / mean running score: the leading
  modality (ratio > 1) is slowed, the others sped up (target ratio 1)."""
  ratio = running_scores / jnp.maximum(jnp.mean(running_scores), 1e-8)
  return jnp.exp(alpha * (1.0 - ratio))


def agm_logits(responses: dict[str, jax.Array], coefficients: jax.Array):
  """Sum of responses whose gradient is scaled by the coefficients, value unchanged."""
  out = 0.0
  for i, r in enumerate(responses.values()):
    c = coefficients[i]
    out = out + c * r + jax.lax.stop_gradient((1.0 - c) * r)
  return out


# ---------------------------------------------------------------- PMR


class Prototypes(NamedTuple):
  """PMR's class prototypes: last epoch's feature centroids and this epoch's running sums."""

  centroids: tuple  # per modality f32[C, D]
  sums: tuple  # per modality f32[C, D]
  counts: jax.Array  # f32[C]
  ready: jax.Array  # bool: centroids exist (from the second epoch on)


def prototypes_init(num_classes: int, dims: Sequence[int]) -> Prototypes:
  z = tuple(jnp.zeros([num_classes, d], jnp.float32) for d in dims)
  return Prototypes(z, z, jnp.zeros([num_classes], jnp.float32), jnp.asarray(False))


def update_prototypes(protos: Prototypes, feats: Sequence[jax.Array], labels, num_classes,
                      new_epoch) -> Prototypes:
  """Rolls the centroids at an epoch boundary, then adds this batch's features (our choice:
  centroids of the previous epoch's training features, instead of an extra pass)."""
  centroids = tuple(jnp.where(new_epoch & (protos.counts[:, None] > 0),
                              s / jnp.maximum(protos.counts[:, None], 1), c)
                    for s, c in zip(protos.sums, protos.centroids))
  ready = protos.ready | (new_epoch & jnp.any(protos.counts > 0))
  onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  sums = tuple(jnp.where(new_epoch, 0.0, s) + onehot.T @ jax.lax.stop_gradient(f)
               for s, f in zip(protos.sums, feats))
  counts = jnp.where(new_epoch, 0.0, protos.counts) + onehot.sum(0)
  return Prototypes(centroids, sums, counts, ready)


def pmr_loss(feats: Sequence[jax.Array], centroids: Sequence[jax.Array], labels, alpha):
  """PMR: prototypical cross-entropy on -||f - p_c||^2; the imbalance ratio of each modality
  against the best one (sum of true-class prototype probability) sets the weight
  tanh(alpha * (ratio - 1)) of its prototypical loss, so the weaker modalities are pushed
  (the entropy regulariser of the paper is left out: our choice). Returns (loss, weights)."""
  pce, score = [], []
  for f, c in zip(feats, centroids):
    logits = -jnp.sum((f[:, None, :] - c[None]) ** 2, axis=-1)
    pce.append(optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean())
    p = jax.nn.softmax(logits)
    score.append(jnp.take_along_axis(p, labels[:, None], axis=1).sum())
  score = jax.lax.stop_gradient(jnp.stack(score))
  weights = jnp.tanh(alpha * jnp.maximum(jnp.max(score) / jnp.maximum(score, 1e-8) - 1, 0))
  return jnp.sum(weights * jnp.stack(pce)), weights


# ---------------------------------------------------------------- MMPareto


def _min_norm_2(g1: jax.Array, g2: jax.Array) -> jax.Array:
  """MGDA weight gamma for min ||gamma g1 + (1 - gamma) g2|| (two vectors, closed form)."""
  diff = g1 - g2
  return jnp.clip(jnp.vdot(g2 - g1, g2) / jnp.maximum(jnp.vdot(diff, diff), 1e-20), 0.0, 1.0)


def mmpareto_combine(g_multi, g_uni, flat_labels, modalities: Sequence[str]):
  """Per encoder: if the multimodal and unimodal gradients conflict (cosine < 0), their
  MGDA min-norm combination, else their average; the result is rescaled to the norm of the
  plain sum (our reading of the paper's magnitude rescaling). Shared parameters get the sum.
  Returns (gradients, cosines f32[M])."""
  lm, lu = jax.tree.leaves(g_multi), jax.tree.leaves(g_uni)
  out, cosines = [g1 + g2 for g1, g2 in zip(lm, lu)], []
  for m in modalities:
    idx = [i for i, l in enumerate(flat_labels) if l == m]
    v1 = jnp.concatenate([lm[i].ravel().astype(jnp.float32) for i in idx])
    v2 = jnp.concatenate([lu[i].ravel().astype(jnp.float32) for i in idx])
    cos = jnp.vdot(v1, v2) / jnp.maximum(jnp.linalg.norm(v1) * jnp.linalg.norm(v2), 1e-20)
    gamma = jnp.where(cos < 0, _min_norm_2(v1, v2), 0.5)
    combined = gamma * v1 + (1 - gamma) * v2
    combined = combined * jnp.linalg.norm(v1 + v2) / jnp.maximum(jnp.linalg.norm(combined), 1e-20)
    start = 0
    for i in idx:
      n = lm[i].size
      out[i] = combined[start:start + n].reshape(lm[i].shape).astype(lm[i].dtype)
      start += n
    cosines.append(cos)
  return jax.tree.unflatten(jax.tree.structure(g_multi), out), jnp.stack(cosines)


# ---------------------------------------------------------------- G-Blending


def gblending_weights(train_losses, holdout_losses, prev_train, prev_holdout) -> Any:
  """G-Blending's loss weights from the overfitting-to-generalisation ratio: with
  O = L_holdout - L_train, the weight of head k is proportional to dG_k / dO_k^2, where
  dG_k = L_holdout(prev) - L_holdout(now) and dO_k = O(now) - O(prev) (Wang et al., Eq. 8).
  Heads that did not generalise (dG <= 0) get 0; weights sum to 1 (uniform if all 0).
  Arguments are NumPy-able sequences over the heads [fused, modality...]."""
  import numpy as np

  train, hold = np.asarray(train_losses, float), np.asarray(holdout_losses, float)
  d_g = np.asarray(prev_holdout, float) - hold
  d_o = (hold - train) - (np.asarray(prev_holdout, float) - np.asarray(prev_train, float))
  w = np.where(d_g > 0, d_g / np.maximum(d_o**2, 1e-8), 0.0)
  return w / w.sum() if w.sum() > 0 else np.full_like(w, 1.0 / len(w))
