"""OGM-GE (Peng et al., CVPR 2022): on-the-fly gradient modulation with generalisation
enhancement, as an optax transformation (official code GeWu-Lab/OGM-GE_CVPR2022, main.py).

Scores are each modality's batch sum of the true-class softmax probability (main.py:105-106);
with ``ratio_v = s_v / s_a`` and ``ratio_a = 1 / ratio_v`` (108-109), visual gets
``1 - tanh(alpha * ratio_v)`` if ``ratio_v > 1``, else audio gets ``1 - tanh(alpha * ratio_a)``
(so equal scores damp audio), the other modality 1 (paper Eq. 10; main.py:119-124). Each
encoder's weight tensors are scaled and, with GE, get Gaussian noise of std ``std(g) + 1e-8``,
``g`` the unscaled gradient, unbiased std (133-148). Active for ``start_epoch <= epoch <=
end_epoch`` (inclusive, 132) and where the window gate lets it (``modulate``).

Our choices, named: the weight tensors are the encoder's leaves of rank >= 2 (on our CNN
encoders exactly the conv kernels the official code selects by rank 4; in a transformer also
its dense kernels, where rank 4 would select nothing); for M > 2 the ratio is against the mean
of the other scores and the modality with the largest ratio is damped if its ratio is >= 1.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from inforeg_jax.labels import modality_names, resolve_labels
from inforeg_jax.methods.base import Method, true_class_prob_sum
from inforeg_jax.window import find_one


class OGMGEState(NamedTuple):
  """State of `ogm_ge_transform`."""

  count: jax.Array  # int32 scalar
  key: jax.Array  # PRNG key for the generalisation-enhancement noise
  coefficient: jax.Array  # f32[M], last step's coefficients (for logging)


def ogm_coefficients(scores: jax.Array, alpha) -> jax.Array:
  """f32[M]: 1 - tanh(alpha * ratio) for the damped modality, 1 for the others. The damped
  one has the largest ratio_m = s_m / (mean of the other scores), the first on a tie: for two
  modalities (audio, visual) exactly the official rule, where equal scores damp audio."""
  m = scores.shape[0]
  others = (jnp.sum(scores) - scores) / (m - 1)
  ratio = scores / jnp.maximum(others, 1e-30)
  lead = jnp.argmax(ratio)
  damped = (jnp.arange(m) == lead) & (ratio[lead] >= 1)
  # 1 - tanh(x) = 2 sigmoid(-2x), without float32's cancellation when the ratio is large
  return jnp.where(damped, 2.0 * jax.nn.sigmoid(-2.0 * alpha * ratio), 1.0)


def modulate_leaf(g: jax.Array, coefficient, noise_z: jax.Array | None) -> jax.Array:
  """OGM(-GE) on one weight gradient: g * coefficient (+ (std(g) + 1e-8) * z, z ~ N(0, 1))."""
  out = g * jnp.asarray(coefficient, g.dtype)
  if noise_z is None:
    return out
  std = jnp.std(g.astype(jnp.float32), ddof=1) + 1e-8  # torch.std: unbiased
  return out + (std * noise_z).astype(g.dtype)


def ogm_ge_transform(param_labels, steps_per_epoch: int, alpha=0.1, noise: bool = True,
                     start_epoch: int = 0, end_epoch: int = 50, seed: int = 0,
                     modalities: Sequence[str] | None = None,
                     ) -> optax.GradientTransformationExtraArgs:
  """OGM-GE as an optax transformation (put it first in the chain).

  ``update(..., unimodal_scores={m: s_m}, modulate=True)``. Other extras are ignored.
  """
  if isinstance(alpha, (int, float)) and alpha < 0:  # an array in a population
    raise ValueError(f"alpha must be >= 0, got {alpha}")
  if steps_per_epoch < 1:
    raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")

  def names_of(tree):
    flat = resolve_labels(param_labels, tree)
    return flat, tuple(modalities) if modalities else modality_names(flat)

  def init_fn(params):
    return OGMGEState(jnp.zeros([], jnp.int32), jax.random.key(seed),
                      jnp.ones([len(names_of(params)[1])], jnp.float32))

  def update_fn(updates, state, params=None, *, unimodal_scores=None, modulate=True, **extra):
    del params, extra
    flat, names = names_of(updates)
    if unimodal_scores is None:
      raise ValueError("ogm_ge_transform.update needs unimodal_scores=")
    scores = jnp.stack([jnp.asarray(unimodal_scores[n], jnp.float32) for n in names])
    epoch = state.count // steps_per_epoch
    active = modulate & (epoch >= start_epoch) & (epoch <= end_epoch)
    coef = jnp.where(active, ogm_coefficients(scores, alpha), 1.0)
    index = {n: i for i, n in enumerate(names)}
    leaves, treedef = jax.tree.flatten(updates)
    keys = jax.random.split(jax.random.fold_in(state.key, state.count), len(leaves))
    out = []
    for g, label, k in zip(leaves, flat, keys):
      if label is None or g.ndim < 2:
        out.append(g)
        continue
      z = jnp.where(active, jax.random.normal(k, g.shape), 0.0) if noise else None
      out.append(modulate_leaf(g, coef[index[label]], z))
    return jax.tree.unflatten(treedef, out), OGMGEState(optax.safe_increment(state.count),
                                                        state.key, coef)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class OGMGE(Method):

  def transforms(self, labels, hyper):
    o = self.options
    return super().transforms(labels, hyper) + [ogm_ge_transform(
        labels, self.setup.steps_per_epoch, alpha=hyper.method.alpha, noise=o.noise,
        start_epoch=o.start_epoch, end_epoch=o.end_epoch, seed=hyper.seed,
        modalities=self.modalities)]

  def transform_inputs(self, objective, batch, ctx):
    logits = objective.outputs["unimodal_logits"]  # main.py:105-106
    return {"unimodal_scores": {m: true_class_prob_sum(logits[m], batch["label"])
                                for m in self.modalities}}

  def step_metrics(self, opt_state, method_state):
    s = find_one(opt_state, OGMGEState)
    return {f"coef_{m}": s.coefficient[i] for i, m in enumerate(self.modalities)}

