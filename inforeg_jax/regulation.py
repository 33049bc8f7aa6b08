"""InfoReg as an optax gradient transformation (Algorithm 1 of the paper).

The transformation keeps everything Algorithm 1 needs in its state: the epoch anchor
``w^{t-1}`` (params at the first step of the epoch), the running sum of each modality's
squared gradient norm (Eq. 7, 13), the traces of earlier epochs, and the step count.
It adds ``alpha * (w_m - w_m^{t-1})``, the gradient of Eq. 12, to the encoder of every
modality that is in its prime learning window (Eq. 11) and ahead of another (Eq. 9-10).
Put it first in an ``optax.chain`` so that it acts before weight decay and momentum.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, NamedTuple, Sequence, Union

import jax
import jax.numpy as jnp
import optax

ParamLabels = Union[Any, Callable[[Any], Any]]

# Enough history for the released code's 10-epoch moving average (it needs 11 traces); its
# zero initialisation is the ten leading zeros the released code pads its history with.
TRACE_HISTORY = 11

# The released code's constants (METHOD.md, "What the released code does instead").
OFFICIAL_THRESHOLD = 0.05
OFFICIAL_LEAD_SCALE = 0.95
OFFICIAL_OTHER_SCALE = 0.10


class InfoRegState(NamedTuple):
  """State of `inforeg_transform`."""

  count: jax.Array  # int32 scalar, steps taken
  epoch_anchor: Any  # params at the first step of the current epoch, params' dtypes
  grad_sq_sum: jax.Array  # f32[M], this epoch's running sum of ||g_m||^2
  trace_history: jax.Array  # f32[TRACE_HISTORY, M], Tr(F_m) of past epochs, newest last
  alpha: jax.Array  # f32[M], coefficient applied at the last step (0 where not regulated)
  in_window: jax.Array  # bool[M], prime-learning-window flag at the last step


def _is_none(x) -> bool:
  return x is None


def resolve_labels(param_labels: ParamLabels, params) -> list:
  """Flat list of labels (modality name or None), one per leaf of ``params``."""
  labels = param_labels(params) if callable(param_labels) else param_labels
  label_def = jax.tree.structure(labels, is_leaf=_is_none)
  param_def = jax.tree.structure(params)
  if label_def != param_def:
    raise ValueError(
        "param_labels must have the structure of the params (a modality name or None per "
        f"leaf); got {label_def} for params {param_def}"
    )
  return jax.tree.leaves(labels, is_leaf=_is_none)


def modality_names(flat_labels: Sequence) -> tuple[str, ...]:
  """The modalities named by the labels, sorted (the default order of the state's arrays)."""
  return tuple(sorted({l for l in flat_labels if l is not None}))


def grad_sq_norms(grads, flat_labels: Sequence, modalities: Sequence[str]) -> jax.Array:
  """f32[M]: each modality's squared gradient norm summed over its leaves (Eq. 7)."""
  leaves = jax.tree.leaves(grads)
  return jnp.stack([
      optax.tree.norm([g for g, l in zip(leaves, flat_labels) if l == m], squared=True)
      .astype(jnp.float32)
      for m in modalities
  ])


def performance_gap(unimodal_losses: jax.Array) -> jax.Array:
  """Delta_m of Eq. 9-10, read in the performance sense (METHOD.md erratum).

  Delta_m = mean over the modalities m' with a larger loss of (l_m' - l_m); 0 if none.
  """
  diff = unimodal_losses[None, :] - unimodal_losses[:, None]  # [m, m'] = l_m' - l_m
  worse = diff > 0
  count = jnp.sum(worse, axis=1)
  return jnp.sum(jnp.where(worse, diff, 0.0), axis=1) / jnp.maximum(count, 1)


def close_epoch(count, steps_per_epoch, grad_sq_sum, trace_history, divisor):
  """At the first step of an epoch (count > 0): the finished epoch's trace (its sum of
  ||g_m||^2 over ``divisor``) enters the history, newest last, and the sum restarts.
  Returns (trace_history, grad_sq_sum)."""
  new_epoch = (count % steps_per_epoch == 0) & (count > 0)
  rolled = jnp.concatenate([trace_history[1:], (grad_sq_sum / divisor)[None]])
  return (jnp.where(new_epoch, rolled, trace_history),
          jnp.where(new_epoch, 0.0, grad_sq_sum))


def prime_window(trace_history: jax.Array, threshold) -> jax.Array:
  """bool[M]: Eq. 11 per modality, (Tr^{t-1} - Tr^{t-2}) / Tr^{t-1} > K; False until both
  epochs have a trace (a missing Tr^{t-2} is not a rise)."""
  last, before = trace_history[-1], trace_history[-2]
  safe = jnp.where(last > 0, last, 1.0)
  return (last > 0) & (before > 0) & ((last - before) / safe > threshold)


def official_window(trace_history: jax.Array, lead: int, threshold, epoch) -> jax.Array:
  """The released code's criterion: relative change of a 10-epoch moving average of the
  lead modality's trace, over a history padded with ten zeros; 1 at epoch 0."""
  t = trace_history[:, lead]
  now, prev = jnp.mean(t[-10:]), jnp.mean(t[-11:-1])
  k = jnp.where(epoch == 0, 1.0, (now - prev) / jnp.where(now != 0, now, 1.0))
  return k > threshold


def inforeg_transform(
    param_labels: ParamLabels,
    steps_per_epoch,
    beta=0.9,
    threshold=None,
    warmup_epochs=None,
    variant: Literal["paper", "official"] = "paper",
    modalities: Sequence[str] | None = None,
    window: Literal["prime", "whole", "other"] = "prime",
) -> optax.GradientTransformationExtraArgs:
  """InfoReg's adaptive unimodal regulation (paper, Algorithm 1).

  Args:
    param_labels: a pytree shaped like the params (or a function of the params that returns
      one) whose leaves name a modality, or are None for parameters never regulated.
    steps_per_epoch: optimizer steps in one epoch; the anchor and the traces roll over every
      ``steps_per_epoch`` calls.
    beta: sensitivity of alpha to the performance gap (Eq. 16). Paper default 0.9.
    threshold: K of Eq. 11. Default 0.04 (``paper``) or 0.05 (``official``).
    warmup_epochs: epochs of plain training before regulating. Default 2 (``paper``), 0
      (``official``, whose criterion is 1 at epoch 0).
    variant: ``"paper"`` (Algorithm 1 with the sign erratum applied) or ``"official"`` (the
      released code's rules: score, audio-only moving-average criterion, constants; two
      modalities, the first is the lead one).
    modalities: order of the modalities in the state's arrays; default, sorted names. The
      ``official`` variant's lead modality is the first.
    window: ``"prime"`` regulates inside the prime learning window (InfoReg); ``"whole"``
      ignores the window, ``"other"`` regulates only outside it (paper Table 4).

  ``update(grads, state, params, *, unimodal_losses=..., unimodal_scores=...)``:
  ``unimodal_losses`` maps each modality to its batch-mean unimodal cross-entropy (Eq. 8);
  the ``official`` variant needs ``unimodal_scores`` instead (the batch sum of each
  modality's true-class softmax probability). Other keyword arguments are ignored.
  """
  if variant not in ("paper", "official"):
    raise ValueError(f"variant must be 'paper' or 'official', got {variant!r}")
  if window not in ("prime", "whole", "other"):
    raise ValueError(f"window must be 'prime', 'whole' or 'other', got {window!r}")
  if threshold is None:
    threshold = 0.04 if variant == "paper" else OFFICIAL_THRESHOLD
  if warmup_epochs is None:
    warmup_epochs = 2 if variant == "paper" else 0
  # Validate plain numbers; under inject_hyperparams they arrive as arrays.
  if isinstance(steps_per_epoch, int) and steps_per_epoch < 1:
    raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
  if isinstance(beta, (int, float)) and beta < 0:
    raise ValueError(f"beta must be >= 0, got {beta}")
  if isinstance(warmup_epochs, int) and warmup_epochs < 0:
    raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")

  def setup(params):
    flat = resolve_labels(param_labels, params)
    names = tuple(modalities) if modalities is not None else modality_names(flat)
    missing = set(modality_names(flat)) - set(names)
    if len(names) < 2 or missing:
      raise ValueError(f"need >= 2 modalities covering the labels; got {names}, missing {missing}")
    if variant == "official" and len(names) != 2:
      raise ValueError("variant='official' is defined for two modalities (lead one first)")
    return flat, names

  def init_fn(params):
    _, names = setup(params)
    m = len(names)
    return InfoRegState(
        count=jnp.zeros([], jnp.int32),
        epoch_anchor=jax.tree.map(jnp.asarray, params),
        grad_sq_sum=jnp.zeros([m], jnp.float32),
        trace_history=jnp.zeros([TRACE_HISTORY, m], jnp.float32),
        alpha=jnp.zeros([m], jnp.float32),
        in_window=jnp.zeros([m], bool),
    )

  def stack(values: dict, names, what: str) -> jax.Array:
    if values is None or set(values) != set(names):
      raise ValueError(f"inforeg_transform.update needs {what}= a dict keyed by {names}")
    return jnp.stack([jnp.asarray(values[n], jnp.float32) for n in names])

  def update_fn(updates, state, params=None, *, unimodal_losses=None, unimodal_scores=None,
                **extra_args):
    del extra_args
    if params is None:
      raise ValueError("inforeg_transform needs params (the regulation is w - w_anchor)")
    flat, names = setup(params)
    epoch = state.count // steps_per_epoch
    # Close the previous epoch: its trace enters the history, the anchor moves to params.
    trace_history, grad_sq_sum = close_epoch(
        state.count, steps_per_epoch, state.grad_sq_sum, state.trace_history,
        1.0 if variant == "official" else steps_per_epoch)
    anchor = jax.tree.map(lambda w, a: jnp.where(state.count % steps_per_epoch == 0, w, a),
                          params, state.epoch_anchor)

    if variant == "paper":
      in_window = prime_window(trace_history, threshold)
      delta = performance_gap(stack(unimodal_losses, names, "unimodal_losses"))
      alpha = jnp.exp(beta * jnp.tanh(delta))  # Eq. 16
      leads = delta > 0
    else:
      in_window = jnp.broadcast_to(official_window(trace_history, 0, threshold, epoch), [2])
      s = stack(unimodal_scores, names, "unimodal_scores")
      gap = jnp.array([s[0] - s[1], s[1] - s[0]])
      alpha = jnp.array([OFFICIAL_LEAD_SCALE, OFFICIAL_OTHER_SCALE]) * jnp.exp(jnp.tanh(gap))
      leads = gap > 0
    in_scope = {"prime": in_window, "whole": True, "other": ~in_window}[window]
    active = in_scope & leads & (epoch >= warmup_epochs)
    alpha = jnp.where(active, alpha, 0.0)

    # Eq. 12: grad of alpha/2 ||w_m - w_m^{t-1}||^2 is alpha (w_m - w_m^{t-1}).
    alpha_of = {n: alpha[i] for i, n in enumerate(names)}
    treedef = jax.tree.structure(updates)
    regulated = [
        g if l is None else g + (alpha_of[l] * (w - a)).astype(g.dtype)
        for g, w, a, l in zip(jax.tree.leaves(updates), jax.tree.leaves(params),
                              jax.tree.leaves(anchor), flat)
    ]
    regulated = jax.tree.unflatten(treedef, regulated)

    if variant == "paper":  # Eq. 7/13: incoming gradient, before regulation
      grad_sq = grad_sq_norms(updates, flat, names)
    else:  # released code: after regulation, mean of g^2 per conv/linear weight, summed
      leaves = jax.tree.leaves(regulated)
      grad_sq = jnp.stack([
          sum((jnp.mean(jnp.square(g.astype(jnp.float32)))
               for g, l in zip(leaves, flat) if l == n and g.ndim >= 2), jnp.float32(0))
          for n in names
      ])
    new_state = InfoRegState(
        count=optax.safe_increment(state.count),
        epoch_anchor=anchor,
        grad_sq_sum=grad_sq_sum + grad_sq,
        trace_history=trace_history,
        alpha=alpha,
        in_window=jnp.asarray(in_window & (epoch >= warmup_epochs)),
    )
    return regulated, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def find_inforeg_state(opt_state) -> InfoRegState:
  """The InfoRegState inside an optimizer state (a chain, inject_hyperparams, ...)."""
  found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, InfoRegState))
           if isinstance(s, InfoRegState)]
  if len(found) != 1:
    raise ValueError(f"expected one InfoRegState in the optimizer state, found {len(found)}")
  return found[0]


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
    out[f"trace_history_{m}"] = s.trace_history[:, i]
  return out
