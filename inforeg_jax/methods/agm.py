"""AGM (Li et al., ICCV 2023): adaptive gradient modulation of mono-modal responses, as its
official code runs it (lihong2303/AGM_ICCV2023 @ 5a65542, run/CREMAD_main.py, model/
CREMAD_net.py; three modalities: run/URFunny_main.py, model/URFunny_net.py).

Per step:
- Responses (CREMAD_net.py:7-17, 57-72): the full pass ``f(a, v)`` in training mode, then a
  pass per non-empty proper subset of the modalities with the other *inputs* zeroed, in
  evaluation mode with the batch statistics the first pass just updated, all differentiated.
  Modality m's response is its Shapley value over these passes without the empty-set term:
  ``m_a = (f(a,v) - f(0,v) + f(a,0)) / 2`` for two modalities, so that the responses sum to
  ``f(a, v)``.
- Scores (CREMAD_main.py:130-143): each response's batch-mean cross-entropy (probabilities
  floored at 1e-8). Ratio ``r_m = exp(M/(M-1) (mean_k s_k - s_m))`` (145-146; URFunny:
  117-130); target ``r_bar_m``, the same ratio of the cumulative means ``S`` of the scores over
  all earlier steps (148-149, starting at 0); coefficient
  ``c_m = exp(alpha * min(r_bar_m - r_m, clamp))``, clamp 10 (7 for three modalities); then
  ``S`` takes this step's scores (154-155).
- The loss is the CE of ``sum_m m_m`` with the gradient reaching each response scaled by c_m
  (the official backward hook, 159-166): ``c m + stop_gradient((1 - c) m)``.
- Conditional clipping (233-238): when an entry of the fusion head's weight gradient leaves
  [-1, 1], every gradient is clipped to global norm 1; with three modalities [-5, 5] and
  norm 5 (URFunny_main.py:203-207).
- The modulation window (159; utils/config.py:74-75): epochs ``start_epoch..end_epoch``
  (default the first 20); before it the hooks' scale is 1, after it the last coefficient set
  stays in the hooks, as the official ``update_scale`` leaves it. The running means are
  updated at every step, inside the window or not (154-155).
- ``--agm.clamp=false``: no ``min(., 10)`` (the AV-MNIST script, run/AVMNIST_main.py:116,
  whose running mean, counted from iteration 0, is the same cumulative mean).

Our choice, named: outside the prime-window gate of Table 4 (``--window=prime|other``) the
coefficients are 1: that table asks whether modulating there helps, which a stale
coefficient would blur.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import optax

from inforeg_jax.methods.base import Gradients, Method, Objective

PROB_FLOOR = 1e-8


def shapley_responses(passes: dict[frozenset, jax.Array], modalities) -> dict[str, jax.Array]:
  """Each modality's Shapley value over the passes ``{present modalities: logits}`` (one per
  non-empty subset), the empty set's output taken as 0 (URFunny_net.py:6-31)."""
  n = len(modalities)
  out = {}
  for m in modalities:
    others = [k for k in modalities if k != m]
    total = 0.0
    for size in range(n):
      weight = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
      for subset in itertools.combinations(others, size):
        s = frozenset(subset)
        without = passes[s] if s else 0.0
        total = total + weight * (passes[s | {m}] - without)
    out[m] = total
  return out


def response_scores(responses: dict, labels, modalities) -> jax.Array:
  """f32[M]: each response's batch-mean CE, probabilities floored at 1e-8 (130-143)."""
  def ce(logits):
    p = jnp.take_along_axis(jax.nn.softmax(logits.astype(jnp.float32)), labels[:, None], 1)
    return -jnp.mean(jnp.log(jnp.maximum(p, PROB_FLOOR)))
  return jnp.stack([ce(responses[m]) for m in modalities])


def ratios(scores: jax.Array) -> jax.Array:
  """r_m = exp(M / (M - 1) (mean_k s_k - s_m)); exp(s_v - s_a) for audio of two."""
  m = scores.shape[0]
  return jnp.exp(m / (m - 1) * (jnp.mean(scores) - scores))


def coefficients(scores: jax.Array, running: jax.Array, alpha, clamp) -> jax.Array:
  """c_m = exp(alpha * min(r_bar_m - r_m, clamp)); r_bar from the running means ``S``."""
  return jnp.exp(alpha * jnp.minimum(ratios(running) - ratios(scores), clamp))


def update_running(running: jax.Array, scores: jax.Array, iteration) -> jax.Array:
  """The cumulative mean after the ``iteration``-th score (1-based): S (i-1)/i + s/i."""
  i = jnp.asarray(iteration, jnp.float32)
  return running * (i - 1) / i + scores / i


def modulated_sum(responses: dict, coefs: jax.Array, modalities):
  """sum_m m_m with the gradient through each response scaled by c_m, value unchanged.

  Written ``sg(r) + c (r - sg(r))``, whose value is exactly r: ``c r + sg((1 - c) r)`` loses
  the value to cancellation in float32 when c is large (c reaches e^15)."""
  return sum(jax.lax.stop_gradient(r) + c * (r - jax.lax.stop_gradient(r))
             for c, r in zip(coefs, (responses[m] for m in modalities)))


def conditional_clip(grads, head_grads, threshold=1.0, max_norm=1.0):
  """If an entry of the head's weight gradients leaves [-threshold, threshold], every
  gradient is scaled to global norm ``max_norm`` (torch's clip_grad_norm_, eps 1e-6)."""
  big = jnp.stack([jnp.max(jnp.abs(g)) for g in jax.tree.leaves(head_grads)
                   if g.ndim >= 2]).max() > threshold
  scale = jnp.minimum(1.0, max_norm / (optax.tree.norm(grads) + 1e-6))
  return jax.tree.map(lambda g: g * jnp.where(big, scale, 1.0).astype(g.dtype), grads), big


class AGM(Method):

  @property
  def clamp(self) -> float:
    if not self.options.clamp:
      return float("inf")
    return 10.0 if len(self.modalities) == 2 else 7.0

  @property
  def clip(self) -> float:
    """The head-gradient threshold and the clipping norm: 1 for two modalities, 5 for three
    (CREMAD_main.py:237-238, URFunny_main.py:205-207)."""
    return 1.0 if len(self.modalities) == 2 else 5.0

  def init_state(self, params, outputs):
    m = len(self.modalities)
    return {"running_scores": jnp.zeros([m], jnp.float32),
            "last_coefs": jnp.ones([m], jnp.float32)}  # the hooks' scale, 1 at first

  def objective(self, fwd, params, method_state, batch, ctx):
    inputs, y = batch["inputs"], batch["label"]
    out, batch_stats = fwd(params, inputs)
    full = frozenset(self.modalities)
    # the evaluation passes read the statistics the training pass has just updated, as
    # constants (torch's running buffers carry no gradient)
    eval_stats = jax.lax.stop_gradient(batch_stats)
    passes = {full: out["logits"]}
    for size in range(1, len(self.modalities)):
      for subset in itertools.combinations(self.modalities, size):
        zeroed = {m: x if m in subset else jnp.zeros_like(x) for m, x in inputs.items()}
        passes[frozenset(subset)] = fwd(params, zeroed, train=False,
                                        batch_stats=eval_stats)[0]["logits"]
    responses = shapley_responses(passes, self.modalities)
    scores = jax.lax.stop_gradient(response_scores(responses, y, self.modalities))
    o = self.options
    computed = coefficients(scores, method_state["running_scores"], ctx.hyper.method.alpha,
                            self.clamp)
    inside = (ctx.epoch >= o.start_epoch) & (ctx.epoch <= o.end_epoch)
    # in the window: this step's coefficient; before and after it, the hooks' last scale
    coefs = jnp.where(inside, computed, method_state["last_coefs"])
    coefs = jnp.where(ctx.active, coefs, 1.0)  # Table 4's gate (our choice, see above)
    loss = optax.softmax_cross_entropy_with_integer_labels(
        modulated_sum(responses, coefs, self.modalities).astype(jnp.float32), y).mean()
    fused, uni = self.losses(out, y)
    metrics = {**{f"coef_{m}": coefs[i] for i, m in enumerate(self.modalities)},
               **{f"score_{m}": scores[i] for i, m in enumerate(self.modalities)}}
    last = jnp.where(inside, computed, method_state["last_coefs"])
    return Objective(loss[None], out, batch_stats, fused, uni, out["unimodal_logits"],
                     metrics, carry={"scores": scores, "last_coefs": last})

  def gradients(self, vjp_fn, objective, ctx, flat_labels):
    grads = super().gradients(vjp_fn, objective, ctx, flat_labels).update
    clipped, big = conditional_clip(grads, grads["head"], self.clip, self.clip)
    return Gradients(clipped, grads, {"clipped": big.astype(jnp.float32)})

  def after_step(self, method_state, objective, grads, ctx):
    carry = objective.carry
    return {"running_scores": update_running(method_state["running_scores"], carry["scores"],
                                             ctx.step + 1),
            "last_coefs": carry["last_coefs"]}
