"""MMPareto (Wei & Hu, ICML 2024): Pareto integration of the multimodal and unimodal
gradients, as its official code runs it (GeWu-Lab/MMPareto_ICML2024 @ a339db3,
code/MMPareto.py:88-210, models/models.py:133-184).

The model has a separate linear head per modality (``unimodal_heads``); the objective is
``L_mm + sum_m L_m``. Per encoder m, from the gradients ``g_mm`` of ``L_mm`` and ``g_m`` of
``L_m`` over all its tensors (batch-norm affine included):
- cosine > 0: weights (0.5, 0.5); otherwise the two-task MGDA min-norm weights
  ``c = (v22 - v12) / (v11 + v22 - 2 v12)`` (0.999 if v12 >= v11, 0.001 if v12 >= v22)
  (min_norm_solvers.py:9-30), on whole-encoder dot products (MMPareto.py:149-174);
- per tensor: ``new = 2 (k0 g_mm + k1 g_m)``, scaled up (never down) to the norm of the plain
  sum and by gamma: ``gamma * max(1, ||g_mm + g_m|| / ||new||) * new`` (184-207), a tensor
  zero in both staying 0.
The heads get the plain sum. Tr(F) is measured on ``g_mm`` (Eq. 5 of InfoReg: the fused loss).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from inforeg_jax.methods.base import Gradients, Method


def min_norm_weights(v11, v12, v22) -> jax.Array:
  """(k0, k1) of MinNormSolver._min_norm_element_from2; k0 weights the first vector."""
  c = jnp.where(v12 >= v11, 0.999,
                jnp.where(v12 >= v22, 0.001,
                          (v22 - v12) / jnp.where(v11 + v22 - 2 * v12 != 0,
                                                  v11 + v22 - 2 * v12, 1.0)))
  return jnp.stack([c, 1.0 - c])


def encoder_weights(g_mm: list, g_m: list) -> tuple[jax.Array, jax.Array]:
  """(k f32[2], cosine) for one encoder's tensors (lists of arrays)."""
  dot = lambda xs, ys: sum(jnp.vdot(x.astype(jnp.float32), y.astype(jnp.float32))
                           for x, y in zip(xs, ys))
  v11, v12, v22 = dot(g_mm, g_mm), dot(g_mm, g_m), dot(g_m, g_m)
  cos = v12 / jnp.maximum(jnp.sqrt(v11) * jnp.sqrt(v22), 1e-30)
  cos = jnp.where((v11 > 0) & (v22 > 0), cos, 0.0)
  k = jnp.where(cos > 0, jnp.array([0.5, 0.5]), min_norm_weights(v11, v12, v22))
  return k, cos


def combine_tensor(g_mm, g_m, k, gamma):
  """gamma * max(1, ||g_mm + g_m|| / ||new||) * new, new = 2 (k0 g_mm + k1 g_m)."""
  new = 2 * (k[0] * g_mm + k[1] * g_m)
  norm_new = jnp.linalg.norm(new.astype(jnp.float32))
  ratio = jnp.linalg.norm((g_mm + g_m).astype(jnp.float32)) / jnp.where(norm_new > 0,
                                                                         norm_new, 1.0)
  return (gamma * jnp.where((norm_new > 0) & (ratio > 1), ratio, 1.0) * new).astype(g_mm.dtype)


def mmpareto_combine(g_mm, g_uni, flat_labels, modalities, gamma):
  """The gradient to train with, and the per-encoder cosines f32[M]. ``g_uni``: the gradient
  of the sum of the unimodal losses (on encoder m it is g_m: the other unimodal losses do not
  reach it)."""
  lm, lu = jax.tree.leaves(g_mm), jax.tree.leaves(g_uni)
  out = [a + b for a, b in zip(lm, lu)]
  cosines = []
  for m in modalities:
    idx = [i for i, l in enumerate(flat_labels) if l == m]
    k, cos = encoder_weights([lm[i] for i in idx], [lu[i] for i in idx])
    for i in idx:
      out[i] = combine_tensor(lm[i], lu[i], k, gamma)
    cosines.append(cos)
  return jax.tree.unflatten(jax.tree.structure(g_mm), out), jnp.stack(cosines)


class MMPareto(Method):
  unimodal_weight = 1.0
  unimodal_heads = True

  def gradients(self, vjp_fn, objective, ctx, flat_labels):
    per_term = jax.vmap(vjp_fn)(jnp.eye(2, dtype=objective.terms.dtype))[0]
    g_mm = jax.tree.map(lambda g: g[0], per_term)
    g_uni = jax.tree.map(lambda g: g[1], per_term)
    combined, cos = mmpareto_combine(g_mm, g_uni, flat_labels, self.modalities,
                                     ctx.hyper.method.gamma)
    grads = jax.tree.map(lambda c, a, b: jnp.where(ctx.active, c, a + b), combined, g_mm, g_uni)
    return Gradients(grads, g_mm, {f"cos_{m}": cos[i] for i, m in enumerate(self.modalities)})
