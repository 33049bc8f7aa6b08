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

# The paper's defaults (Sec. 4.7; K's in `window`) and the released code's constants
# (METHOD.md).
PAPER_THRESHOLD, PAPER_WARMUP = window_lib.PAPER_THRESHOLD, 2
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


def default_threshold(variant: str = "paper") -> float:
  """K of Eq. 11 when none is given: 0.04 (paper Sec. 4.7), 0.05 (released code)."""
  return OFFICIAL_THRESHOLD if variant == "official" else PAPER_THRESHOLD


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
      ``"bounded"`` (Eq. 11, closed after ``max_window_epochs`` consecutive open epochs),
      ``"trend"`` (3-epoch means) or ``"noise_aware"`` (Eq. 11's rise must clear K by 2
      standard errors of the traces' epoch estimates); see `window.flags`.
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
  if criterion not in ("eq11", "bounded", "trend", "noise_aware"):
    raise ValueError("criterion must be 'eq11', 'bounded', 'trend' or 'noise_aware', got "
                     f"{criterion!r}")
  # Validate plain numbers; under inject_hyperparams or in a population they are arrays.
  if isinstance(steps_per_epoch, int) and steps_per_epoch < 1:
    raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
  if isinstance(beta, (int, float)) and beta < 0:
    raise ValueError(f"beta must be >= 0, got {beta}")
  if isinstance(warmup_epochs, int) and warmup_epochs < 0:
    raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
  if isinstance(max_window_epochs, int) and max_window_epochs < 1:
    raise ValueError(f"max_window_epochs must be >= 1, got {max_window_epochs}")
  threshold = default_threshold(variant) if threshold is None else threshold
  if variant == "official":
    return _official_inforeg(param_labels, steps_per_epoch, threshold,
                             OFFICIAL_WARMUP if warmup_epochs is None else warmup_epochs,
                             modalities, window)
  rule = window_lib.WindowRule(threshold, criterion, max_window_epochs)
  return _paper_inforeg(param_labels, steps_per_epoch, beta, rule,
                        PAPER_WARMUP if warmup_epochs is None else warmup_epochs,
                        modalities, window)


# ---------------------------------------------------------------- shared by both variants


def _names(param_labels, params, modalities, exactly: int | None = None):
  """(flat labels, modality order) of ``params``, checked."""
  flat = resolve_labels(param_labels, params)
  names = tuple(modalities) if modalities is not None else modality_names(flat)
  missing = set(modality_names(flat)) - set(names)
  if len(names) < 2 or missing:
    raise ValueError(f"need >= 2 modalities covering the labels; got {names}, missing {missing}")
  if exactly is not None and len(names) != exactly:
    raise ValueError("variant='official' is defined for two modalities (lead one first)")
  return flat, names


def _init(names_of):
  def init_fn(params):
    m = len(names_of(params)[1])
    state = window_lib.init(m)
    return InfoRegState(epoch_anchor=jax.tree.map(jnp.asarray, params), window=state,
                        alpha=jnp.zeros([m], jnp.float32), in_window=jnp.zeros([m], bool))
  return init_fn


def _stack(values: dict, names, what: str) -> jax.Array:
  if values is None or set(values) != set(names):
    raise ValueError(f"inforeg_transform.update needs {what}= a dict keyed by {names}")
  return jnp.stack([jnp.asarray(values[n], jnp.float32) for n in names])


def _rolled(state: InfoRegState, params, steps_per_epoch, threshold, divisor):
  """(the trace window with the finished epoch closed, its epoch, the anchor): at an epoch's
  first step the anchor w^{t-1} moves to the params."""
  trace = window_lib.roll(state.window, steps_per_epoch, threshold, divisor=divisor)
  first_step = trace.count % steps_per_epoch == 0
  anchor = jax.tree.map(lambda w, a: jnp.where(first_step, w, a), params, state.epoch_anchor)
  return trace, window_lib.epoch_of(trace, steps_per_epoch), anchor


def _regulate(updates, params, anchor, flat, names, alpha):
  """Eq. 12: the gradient of alpha/2 ||w_m - w_m^{t-1}||^2, alpha (w_m - w_m^{t-1}), added to
  every leaf of encoder m."""
  alpha_of = {n: alpha[i] for i, n in enumerate(names)}
  return jax.tree.unflatten(jax.tree.structure(updates), [
      g if l is None else g + (alpha_of[l] * (w - a)).astype(g.dtype)
      for g, w, a, l in zip(jax.tree.leaves(updates), jax.tree.leaves(params),
                            jax.tree.leaves(anchor), flat)])


def _finish(trace, in_window, anchor, alpha, warm, grad_sq, steps_per_epoch) -> InfoRegState:
  trace = trace._replace(in_window=in_window)
  return InfoRegState(epoch_anchor=anchor,
                      window=window_lib.record(trace, jnp.asarray(grad_sq, jnp.float32),
                                               steps_per_epoch),
                      alpha=alpha, in_window=in_window & warm)


# ---------------------------------------------------------------- the two algorithms


def _paper_inforeg(param_labels, steps_per_epoch, beta, rule: window_lib.WindowRule,
                   warmup_epochs, modalities, window) -> optax.GradientTransformationExtraArgs:
  """Algorithm 1: Delta_m from the unimodal losses (Eq. 9-10, erratum applied), the window
  of Eq. 11 (or our criteria) per modality, alpha = exp(beta tanh Delta) (Eq. 16), Tr(F)
  from the incoming gradient (Eq. 7, 13), after ``warmup_epochs``."""
  names_of = lambda params: _names(param_labels, params, modalities)

  def update_fn(updates, state, params=None, *, unimodal_losses=None, grad_sq=None, **extra):
    del extra
    if params is None:
      raise ValueError("inforeg_transform needs params (the regulation is w - w_anchor)")
    flat, names = names_of(params)
    trace, epoch, anchor = _rolled(state, params, steps_per_epoch, rule.threshold,
                                   steps_per_epoch)
    in_window = window_lib.flags(trace, rule, steps_per_epoch)
    delta = performance_gap(_stack(unimodal_losses, names, "unimodal_losses"))
    warm = epoch >= warmup_epochs
    active = window_lib.gate(in_window, window) & (delta > 0) & warm
    alpha = jnp.where(active, jnp.exp(beta * jnp.tanh(delta)), 0.0)  # Eq. 16
    if grad_sq is None:  # Eq. 7/13: the incoming gradient, before regulation
      grad_sq = window_lib.grad_sq_norms(updates, flat, names)
    return (_regulate(updates, params, anchor, flat, names, alpha),
            _finish(trace, in_window, anchor, alpha, warm, grad_sq, steps_per_epoch))

  return optax.GradientTransformationExtraArgs(_init(names_of), update_fn)


def _official_inforeg(param_labels, steps_per_epoch, threshold, warmup_epochs, modalities,
                      window) -> optax.GradientTransformationExtraArgs:
  """The released code (METHOD.md): scores are batch sums of the true-class probability, the
  lead (first) modality's 10-epoch moving-average criterion for both, alpha = 0.95 or 0.10
  times exp(tanh(score gap)) for the leader, the trace from the regulated gradient."""
  names_of = lambda params: _names(param_labels, params, modalities, exactly=2)
  rule = window_lib.WindowRule(threshold, "official", lead=0)

  def update_fn(updates, state, params=None, *, unimodal_scores=None, **extra):
    del extra
    if params is None:
      raise ValueError("inforeg_transform needs params (the regulation is w - w_anchor)")
    flat, names = names_of(params)
    trace, epoch, anchor = _rolled(state, params, steps_per_epoch, threshold, 1)
    in_window = window_lib.flags(trace, rule, steps_per_epoch)
    s = _stack(unimodal_scores, names, "unimodal_scores")
    gap = jnp.array([s[0] - s[1], s[1] - s[0]])
    warm = epoch >= warmup_epochs
    active = window_lib.gate(in_window, window) & (gap > 0) & warm
    alpha = jnp.array([OFFICIAL_LEAD_SCALE, OFFICIAL_OTHER_SCALE]) * jnp.exp(jnp.tanh(gap))
    alpha = jnp.where(active, alpha, 0.0)
    regulated = _regulate(updates, params, anchor, flat, names, alpha)
    # released code: after regulation, mean of g^2 per weight tensor, summed
    grad_sq = released_trace_term(regulated, flat, names)
    return regulated, _finish(trace, in_window, anchor, alpha, warm, grad_sq, steps_per_epoch)

  return optax.GradientTransformationExtraArgs(_init(names_of), update_fn)


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
