"""The prime learning window (paper Sec. 3.2-3.3): Tr(F_m) per epoch and the Eq. 11 criterion.

One machinery for InfoReg and for every baseline that Table 4 confines to the window (or keeps
out of it). ``TraceWindow`` holds the running sum of this epoch's per-batch ``||g_m||^2``
(Eq. 7, 13) and the traces of earlier epochs; `track_window` is an optax transformation that
records it (updates pass unchanged), and `inforeg_transform` keeps one inside its own state, so
every optimizer built by the trainer holds exactly one (`find_window`).

An epoch is closed lazily, at the first step of the next one (`roll`), so the criterion for a
step is a pure function of the state before it (`flags`). What decides the window is one
`WindowRule` (K and the criterion), computed by `flags` alone: the transformation that applies
it records the flags it used in its state (``TraceWindow.in_window``), and the train step
logs those, so the logged window is always the applied one.
"""

from __future__ import annotations

from typing import Literal, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from inforeg_jax.labels import ParamLabels, modality_names, resolve_labels

# Epochs of trace history kept: enough for the released code's 10-epoch moving average (it
# needs 11 traces; the zero initialisation is the ten zeros its history starts with).
TRACE_HISTORY = 11
PAPER_THRESHOLD = 0.04  # K of Eq. 11 (paper Sec. 4.7): the one place its default is written
NOISE_SE = 2.0  # the noise-aware window: the rise must clear K by this many standard errors

Criterion = Literal["eq11", "bounded", "trend", "noise_aware", "official"]
Window = Literal["prime", "whole", "other"]


class WindowRule(NamedTuple):
  """What decides the prime learning window: K of Eq. 11 (a traced value in a population) and
  the criterion (`flags`)."""

  threshold: object = PAPER_THRESHOLD  # K
  criterion: Criterion = "eq11"
  max_epochs: int = 3  # the bound of "bounded"
  lead: int = 0  # "official": the modality whose trace decides (the released code's audio)


class TraceWindow(NamedTuple):
  """Tr(F_m) bookkeeping: this epoch's running sum and the closed epochs' traces."""

  count: jax.Array  # int32 scalar, steps recorded
  grad_sq_sum: jax.Array  # f32[M], this epoch's sum of ||g_m||^2
  trace_history: jax.Array  # f32[TRACE_HISTORY, M], Tr(F_m) of past epochs, newest last
  open_epochs: jax.Array  # int32[M], consecutive closed epochs the window has been open
  in_window: jax.Array | None = None  # bool[M], the flags the last update used
  grad_sq_m2: jax.Array | None = None  # f32[M], this epoch's sum of squared deviations
  se_history: jax.Array | None = None  # f32[TRACE_HISTORY, M], each trace's standard error


def init(num_modalities: int) -> TraceWindow:
  m = num_modalities
  return TraceWindow(count=jnp.zeros([], jnp.int32), grad_sq_sum=jnp.zeros([m], jnp.float32),
                     trace_history=jnp.zeros([TRACE_HISTORY, m], jnp.float32),
                     open_epochs=jnp.zeros([m], jnp.int32), in_window=jnp.zeros([m], bool),
                     grad_sq_m2=jnp.zeros([m], jnp.float32),
                     se_history=jnp.zeros([TRACE_HISTORY, m], jnp.float32))


def grad_sq_norms(grads, flat_labels: Sequence, modalities: Sequence[str]) -> jax.Array:
  """f32[M]: each modality's squared gradient norm over its leaves, the batch term of Eq. 7."""
  leaves = jax.tree.leaves(grads)
  return jnp.stack([
      optax.tree.norm([g for g, l in zip(leaves, flat_labels) if l == m], squared=True)
      .astype(jnp.float32) for m in modalities])


def epoch_of(state: TraceWindow, steps_per_epoch) -> jax.Array:
  return state.count // steps_per_epoch


def rise_and_noise(trace_history, se_history=None):
  """(rise, noise), f32[M]: Eq. 11's relative rise (Tr^{t-1} - Tr^{t-2}) / Tr^{t-1}, and the
  standard error of that rise from the two epochs' estimates, sqrt(se^2 + se^2) / Tr^{t-1}
  (zeros without ``se_history``)."""
  last, before = trace_history[-1], trace_history[-2]
  safe = jnp.where(last > 0, last, 1.0)
  noise = (jnp.zeros_like(last) if se_history is None else
           jnp.sqrt(jnp.square(se_history[-1]) + jnp.square(se_history[-2])) / safe)
  return (last - before) / safe, noise


def prime_window(trace_history: jax.Array, threshold, se_history=None,
                 noise_se: float = 0.0) -> jax.Array:
  """bool[M], Eq. 11 per modality: (Tr^{t-1} - Tr^{t-2}) / Tr^{t-1} > K. False until both
  epochs have a trace (a missing Tr^{t-2} is not a rise). With ``noise_se`` > 0 (the
  noise-aware window, ours), the rise must exceed K by that many standard errors of itself."""
  rise, noise = rise_and_noise(trace_history, se_history)
  last, before = trace_history[-1], trace_history[-2]
  return (last > 0) & (before > 0) & (rise - noise_se * noise > threshold)


def roll(state: TraceWindow, steps_per_epoch, threshold=PAPER_THRESHOLD,
         divisor=None) -> TraceWindow:
  """At the first step of an epoch (count > 0): the finished epoch's trace (its sum over
  ``divisor``, default ``steps_per_epoch``: the mean of Eq. 7) and its standard error (from
  its steps' spread) enter the histories, the sums restart, and each modality's count of
  consecutive open epochs is updated."""
  divisor = steps_per_epoch if divisor is None else divisor
  new_epoch = (state.count % steps_per_epoch == 0) & (state.count > 0)
  push = lambda h, x: jnp.where(new_epoch, jnp.concatenate([h[1:], x[None]]), h)
  history = push(state.trace_history, state.grad_sq_sum / divisor)
  n = jnp.asarray(steps_per_epoch, jnp.float32)  # the sum's standard error, in its own units
  se = jnp.sqrt(state.grad_sq_m2 / jnp.maximum(n - 1, 1.0) * n) / divisor
  opened = prime_window(history, threshold)
  open_epochs = jnp.where(new_epoch, jnp.where(opened, state.open_epochs + 1, 0),
                          state.open_epochs)
  return state._replace(grad_sq_sum=jnp.where(new_epoch, 0.0, state.grad_sq_sum),
                        grad_sq_m2=jnp.where(new_epoch, 0.0, state.grad_sq_m2),
                        trace_history=history, se_history=push(state.se_history, se),
                        open_epochs=open_epochs)


def record(state: TraceWindow, grad_sq: jax.Array, steps_per_epoch) -> TraceWindow:
  """Adds this step's ||g_m||^2 (Eq. 13) to the epoch's sum and, by Welford's update, to its
  squared deviations; counts the step."""
  n = (state.count % steps_per_epoch + 1).astype(jnp.float32)  # this step's place in the epoch
  before = jnp.where(n > 1, state.grad_sq_sum / jnp.maximum(n - 1, 1.0), 0.0)
  total = state.grad_sq_sum + grad_sq
  m2 = state.grad_sq_m2 + (grad_sq - before) * (grad_sq - total / n)
  return state._replace(count=optax.safe_increment(state.count), grad_sq_sum=total,
                        grad_sq_m2=m2)


def flags(state: TraceWindow, rule: WindowRule, steps_per_epoch=None) -> jax.Array:
  """bool[M]: whether each modality is in its prime learning window, from a rolled state (the
  criteria compare traces by ratios, so the trace's scale, mean or sum, does not matter).

  ``rule.criterion``:
  - ``"eq11"``: the paper's Eq. 11 on the last two epochs' traces.
  - ``"bounded"``: Eq. 11, but a window closes after ``max_epochs`` consecutive open epochs
    (our option, docs/RESULTS.md: on AV-MNIST the leader's trace rises all run and Eq. 11
    never closes).
  - ``"trend"``: the relative rise of the 3-epoch mean over the previous 3-epoch mean
    exceeds K, so one noisy epoch neither opens nor keeps the window open (our option).
  - ``"noise_aware"``: Eq. 11, but the rise must exceed K by ``NOISE_SE`` standard errors of
    itself (the two epochs' Tr(F) estimates' spread over their steps; our option).
  - ``"official"``: the released code's moving-average criterion on the ``lead`` modality's
    trace, for every modality (`official_window`; needs ``steps_per_epoch`` for the epoch).
  """
  history, threshold, criterion = state.trace_history, rule.threshold, rule.criterion
  if criterion == "eq11":
    return prime_window(history, threshold)
  if criterion == "bounded":
    return prime_window(history, threshold) & (state.open_epochs <= rule.max_epochs)
  if criterion == "noise_aware":
    return prime_window(history, threshold, state.se_history, NOISE_SE)
  if criterion == "official":
    epoch = epoch_of(state, steps_per_epoch)
    return jnp.broadcast_to(official_window(history, rule.lead, threshold, epoch),
                            history.shape[1:])
  if criterion == "trend":
    now, before = jnp.mean(history[-3:], axis=0), jnp.mean(history[-6:-3], axis=0)
    full = jnp.all(history[-6:] > 0, axis=0)
    return full & ((now - before) / jnp.where(now > 0, now, 1.0) > threshold)
  raise ValueError("criterion must be eq11, bounded, trend, noise_aware or official; got "
                   f"{criterion!r}")


def upcoming(state: TraceWindow, rule: WindowRule, steps_per_epoch) -> jax.Array:
  """bool[M]: the flags the next update of the transformation holding ``state`` will use."""
  return flags(roll(state, steps_per_epoch, rule.threshold), rule, steps_per_epoch)


def official_window(trace_history: jax.Array, lead: int, threshold, epoch) -> jax.Array:
  """The released code's criterion: relative change of a 10-epoch moving average of the
  lead modality's trace, over a history padded with ten zeros; 1 at epoch 0."""
  t = trace_history[:, lead]
  now, prev = jnp.mean(t[-10:]), jnp.mean(t[-11:-1])
  k = jnp.where(epoch == 0, 1.0, (now - prev) / jnp.where(now != 0, now, 1.0))
  return k > threshold


def gate(in_window, window: Window):
  """Whether an adjustment applies now (Table 4): over the ``whole`` run, inside the
  ``prime`` learning window, or only in the ``other`` periods."""
  if window == "whole":
    return jnp.ones_like(jnp.asarray(in_window), bool)
  if window == "prime":
    return jnp.asarray(in_window)
  if window == "other":
    return ~jnp.asarray(in_window)
  raise ValueError(f"window must be prime, whole or other; got {window!r}")


EQ11 = WindowRule()  # Eq. 11 with the paper's K


def track_window(param_labels: ParamLabels, steps_per_epoch: int, rule: WindowRule = EQ11,
                 modalities: Sequence[str] | None = None
                 ) -> optax.GradientTransformationExtraArgs:
  """Records Tr(F_m) per epoch in the optimizer state, and the window flags of ``rule`` for
  each step (``in_window``); the updates pass unchanged.

  ``update(..., grad_sq=f32[M])`` takes this step's ``||g_m||^2`` when the caller has
  computed it already (the train step does), else computes it from the updates.
  """
  if steps_per_epoch < 1:
    raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")

  def names_of(params):
    flat = resolve_labels(param_labels, params)
    return flat, tuple(modalities) if modalities is not None else modality_names(flat)

  def init_fn(params):
    return init(len(names_of(params)[1]))

  def update_fn(updates, state, params=None, *, grad_sq=None, **extra_args):
    del params, extra_args
    if grad_sq is None:
      grad_sq = grad_sq_norms(updates, *names_of(updates))
    state = roll(state, steps_per_epoch, rule.threshold)
    state = state._replace(in_window=flags(state, rule, steps_per_epoch))
    return updates, record(state, jnp.asarray(grad_sq, jnp.float32), steps_per_epoch)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def find_one(opt_state, kind: type):
  """The one state of type ``kind`` inside an optimizer state (a chain, inject_hyperparams,
  ...); a ValueError if there is not exactly one."""
  found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, kind))
           if isinstance(s, kind)]
  if len(found) != 1:
    raise ValueError(f"expected one {kind.__name__} in the optimizer state, found {len(found)}")
  return found[0]


def find_window(opt_state) -> TraceWindow:
  """The one TraceWindow inside an optimizer state (a tracker's or InfoReg's)."""
  return find_one(opt_state, TraceWindow)
