"""InfoReg as an optax gradient transformation (Algorithm 1 of the paper).

The transformation keeps everything Algorithm 1 needs in its state: the epoch anchor
``w^{t-1}`` (params at the first step of the epoch), and a `window.TraceWindow` with the running
sum of each modality's squared gradient norm (Eq. 7, 13) and the traces of earlier epochs.
It adds ``alpha * (w_m - w_m^{t-1})``, the gradient of Eq. 12, to the encoder of every
modality that is in its prime learning window (Eq. 11) and ahead of another (Eq. 9-10).
Put it first in an ``optax.chain`` so that it acts before weight decay and momentum.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from inforeg_jax import window as window_lib
from inforeg_jax.labels import ParamLabels, modality_names, resolve_labels

# The paper's defaults (Sec. 4.7) and the released code's constants (METHOD.md).
PAPER_THRESHOLD, PAPER_WARMUP = 0.04, 2
OFFICIAL_THRESHOLD, OFFICIAL_WARMUP = 0.05, 0
OFFICIAL_LEAD_SCALE = 0.95
OFFICIAL_OTHER_SCALE = 0.10


class InfoRegState(NamedTuple):
  """State of `inforeg_transform`."""

  epoch_anchor: Any  # params at the first step of the current epoch, params' dtypes
  window: window_lib.TraceWindow  # step count, Tr(F_m) running sum and history
  alpha: jax.Array  # f32[M], coefficient applied at the last step (0 where not regulated)
  in_window: jax.Array  # bool[M], prime-learning-window flag at the last step (after warm-up)


def performance_gap(unimodal_losses: jax.Array) -> jax.Array:
  """Delta_m of Eq. 9-10, read in the performance sense (METHOD.md erratum).

  Delta_m = mean over the modalities m' with a larger loss of (l_m' - l_m); 0 if none.
  """
  diff = unimodal_losses[None, :] - unimodal_losses[:, None]  # [m, m'] = l_m' - l_m
  worse = diff > 0
  count = jnp.sum(worse, axis=1)
  return jnp.sum(jnp.where(worse, diff, 0.0), axis=1) / jnp.maximum(count, 1)


def released_trace_term(updates, flat_labels, names) -> jax.Array:
  """The released code's per-step trace: per modality, the sum over its weight tensors
  (rank >= 2: conv and linear weights) of the mean squared gradient."""
  leaves = jax.tree.leaves(updates)
  return jnp.stack([
      sum((jnp.mean(jnp.square(g.astype(jnp.float32)))
           for g, l in zip(leaves, flat_labels) if l == n and g.ndim >= 2), jnp.float32(0))
      for n in names])


def inforeg_transform(
    param_labels: ParamLabels,
    steps_per_epoch,
    beta=0.9,
    threshold=None,
    warmup_epochs=None,
    variant: Literal["paper", "official"] = "paper",
    modalities: Sequence[str] | None = None,
    window: window_lib.Window = "prime",
    criterion: window_lib.Criterion = "eq11",
    max_window_epochs: int = 3,
) -> optax.GradientTransformationExtraArgs:
  """InfoReg's adaptive unimodal regulation (paper, Algorithm 1).

  Args:
    param_labels: a pytree shaped like the params (or a function of the params that returns
      one) whose leaves name a modality, or are None for parameters never regulated.
    steps_per_epoch: optimizer steps in one epoch; the anchor and the traces roll over every
      ``steps_per_epoch`` calls.
    beta: sensitivity of alpha to the performance gap (Eq. 16). Paper default 0.9.
    threshold: K of Eq. 11. None: 0.04 (``paper``, Sec. 4.7) or 0.05 (``official``).
    warmup_epochs: epochs of plain training before regulating. None: 2 (``paper``) or 0
      (``official``, whose criterion is 1 at epoch 0).
    variant: ``"paper"`` (Algorithm 1 with the sign erratum applied) or ``"official"`` (the
      released code's rules: score, audio-only moving-average criterion, constants; two
      modalities, the first is the lead one).
    modalities: order of the modalities in the state's arrays; default, sorted names. The
      ``official`` variant's lead modality is the first.
    window: ``"prime"`` regulates inside the prime learning window (InfoReg); ``"whole"``
      ignores the window, ``"other"`` regulates only outside it (paper Table 4).
    criterion: the window's rule for the ``paper`` variant: ``"eq11"`` (the paper's),
      ``"bounded"`` (Eq. 11, closed after ``max_window_epochs`` consecutive open epochs) or
      ``"trend"`` (3-epoch means); see `window.flags`.
    max_window_epochs: the bound of ``criterion="bounded"``.

  ``update(grads, state, params, *, unimodal_losses=..., unimodal_scores=..., grad_sq=...)``:
  ``unimodal_losses`` maps each modality to its batch-mean unimodal cross-entropy (Eq. 8);
  the ``official`` variant needs ``unimodal_scores`` instead (the batch sum of each
  modality's true-class softmax probability). ``grad_sq`` (optional, f32[M] in the state's
  modality order): this step's ``||g_m||^2`` when the caller has it already (``paper``
  variant). Other keyword arguments are ignored.
  """
  if variant not in ("paper", "official"):
    raise ValueError(f"variant must be 'paper' or 'official', got {variant!r}")
  if window not in ("prime", "whole", "other"):
    raise ValueError(f"window must be 'prime', 'whole' or 'other', got {window!r}")
  if criterion not in ("eq11", "bounded", "trend"):
    raise ValueError(f"criterion must be 'eq11', 'bounded' or 'trend', got {criterion!r}")
  official = variant == "official"
  if threshold is None:
    threshold = OFFICIAL_THRESHOLD if official else PAPER_THRESHOLD
  if warmup_epochs is None:
    warmup_epochs = OFFICIAL_WARMUP if official else PAPER_WARMUP
  # Validate plain numbers; under inject_hyperparams they arrive as arrays.
  if isinstance(steps_per_epoch, int) and steps_per_epoch < 1:
    raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
  if isinstance(beta, (int, float)) and beta < 0:
    raise ValueError(f"beta must be >= 0, got {beta}")
  if isinstance(warmup_epochs, int) and warmup_epochs < 0:
    raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
  if isinstance(max_window_epochs, int) and max_window_epochs < 1:
    raise ValueError(f"max_window_epochs must be >= 1, got {max_window_epochs}")

  def setup(params):
    flat = resolve_labels(param_labels, params)
    names = tuple(modalities) if modalities is not None else modality_names(flat)
    missing = set(modality_names(flat)) - set(names)
    if len(names) < 2 or missing:
      raise ValueError(f"need >= 2 modalities covering the labels; got {names}, missing {missing}")
    if official and len(names) != 2:
      raise ValueError("variant='official' is defined for two modalities (lead one first)")
    return flat, names

  def init_fn(params):
    m = len(setup(params)[1])
    return InfoRegState(epoch_anchor=jax.tree.map(jnp.asarray, params),
                        window=window_lib.init(m), alpha=jnp.zeros([m], jnp.float32),
                        in_window=jnp.zeros([m], bool))

  def stack(values: dict, names, what: str) -> jax.Array:
    if values is None or set(values) != set(names):
      raise ValueError(f"inforeg_transform.update needs {what}= a dict keyed by {names}")
    return jnp.stack([jnp.asarray(values[n], jnp.float32) for n in names])

  def update_fn(updates, state, params=None, *, unimodal_losses=None, unimodal_scores=None,
                grad_sq=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError("inforeg_transform needs params (the regulation is w - w_anchor)")
    flat, names = setup(params)
    # Close the previous epoch (its trace enters the history); the anchor moves to params.
    trace = window_lib.roll(state.window, steps_per_epoch, threshold,
                            divisor=1 if official else steps_per_epoch)
    epoch = window_lib.epoch_of(trace, steps_per_epoch)
    first_step = trace.count % steps_per_epoch == 0
    anchor = jax.tree.map(lambda w, a: jnp.where(first_step, w, a), params, state.epoch_anchor)

    if official:
      in_window = jnp.broadcast_to(
          window_lib.official_window(trace.trace_history, 0, threshold, epoch), [2])
      s = stack(unimodal_scores, names, "unimodal_scores")
      gap = jnp.array([s[0] - s[1], s[1] - s[0]])
      alpha = jnp.array([OFFICIAL_LEAD_SCALE, OFFICIAL_OTHER_SCALE]) * jnp.exp(jnp.tanh(gap))
      leads = gap > 0
    else:
      in_window = window_lib.flags(trace, threshold, criterion, max_window_epochs)
      delta = performance_gap(stack(unimodal_losses, names, "unimodal_losses"))
      alpha = jnp.exp(beta * jnp.tanh(delta))  # Eq. 16
      leads = delta > 0
    warm = epoch >= warmup_epochs
    active = window_lib.gate(in_window, window) & leads & warm
    alpha = jnp.where(active, alpha, 0.0)

    # Eq. 12: grad of alpha/2 ||w_m - w_m^{t-1}||^2 is alpha (w_m - w_m^{t-1}).
    alpha_of = {n: alpha[i] for i, n in enumerate(names)}
    regulated = jax.tree.unflatten(jax.tree.structure(updates), [
        g if l is None else g + (alpha_of[l] * (w - a)).astype(g.dtype)
        for g, w, a, l in zip(jax.tree.leaves(updates), jax.tree.leaves(params),
                              jax.tree.leaves(anchor), flat)])

    if official:  # released code: after regulation, mean of g^2 per weight tensor, summed
      grad_sq = released_trace_term(regulated, flat, names)
    elif grad_sq is None:  # Eq. 7/13: the incoming gradient, before regulation
      grad_sq = window_lib.grad_sq_norms(updates, flat, names)
    new_state = InfoRegState(epoch_anchor=anchor,
                             window=window_lib.record(trace, jnp.asarray(grad_sq, jnp.float32)),
                             alpha=alpha, in_window=in_window & warm)
    return regulated, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def find_inforeg_state(opt_state) -> InfoRegState:
  """The InfoRegState inside an optimizer state (a chain, inject_hyperparams, ...)."""
  return window_lib.find_one(opt_state, InfoRegState)


def inforeg_diagnostics(opt_state, modalities: Sequence[str]) -> dict[str, jax.Array]:
  """Flat dict for logging: ``alpha_<m>`` and ``window_<m>`` of the last step, and
  ``trace_history_<m>`` (f32[TRACE_HISTORY], newest last, zeros before the first epoch).

  ``modalities``: the transform's order (its ``modalities`` argument, or the sorted names).
  """
  s = find_inforeg_state(opt_state)
  out = {}
  for i, m in enumerate(modalities):
    out[f"alpha_{m}"] = s.alpha[i]
    out[f"window_{m}"] = s.in_window[i].astype(jnp.float32)
    out[f"trace_history_{m}"] = s.window.trace_history[:, i]
  return out
