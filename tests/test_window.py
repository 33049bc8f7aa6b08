"""The prime-learning-window machinery (inforeg_jax/window.py) function by function: Eq. 11's
strict ``> K`` on the relative rise over Tr^{t-1}, the lazy epoch roll, the running sum, the
other criteria, the released code's moving-average criterion, the Table 4 gate, the tracker
transformation and the state lookup. Plain arrays, no model: seconds in all."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from inforeg_jax import window as W


def history(*rows, m=None):
  """A [TRACE_HISTORY, M] trace history whose last rows are ``rows`` (zeros before)."""
  rows = np.asarray(rows, np.float32)
  if rows.ndim == 1:
    rows = rows[:, None]
  out = np.zeros((W.TRACE_HISTORY, rows.shape[1] if m is None else m), np.float32)
  out[len(out) - len(rows):] = rows
  return jnp.asarray(out)


def state(hist, count=0, grad_sq_sum=None, open_epochs=None):
  m = hist.shape[1]
  return W.TraceWindow(
      count=jnp.asarray(count, jnp.int32),
      grad_sq_sum=jnp.zeros([m], jnp.float32) if grad_sq_sum is None
      else jnp.asarray(grad_sq_sum, jnp.float32),
      trace_history=hist,
      open_epochs=jnp.zeros([m], jnp.int32) if open_epochs is None
      else jnp.asarray(open_epochs, jnp.int32),
      in_window=jnp.zeros([m], bool), grad_sq_m2=jnp.zeros([m], jnp.float32),
      se_history=jnp.zeros_like(hist))


def as_list(x):
  return np.asarray(x).tolist()


# ---- init, grad_sq_norms, epoch_of, record --------------------------------------------------


def test_init_shapes_and_dtypes():
  s = W.init(3)
  assert W.TRACE_HISTORY == 11  # the released code's 10-epoch moving average needs 11
  assert s.count.shape == () and s.count.dtype == jnp.int32
  assert s.grad_sq_sum.shape == (3,) and s.grad_sq_sum.dtype == jnp.float32
  assert s.trace_history.shape == (11, 3) and s.trace_history.dtype == jnp.float32
  assert s.open_epochs.shape == (3,) and s.open_epochs.dtype == jnp.int32
  assert not np.any(np.asarray(s.trace_history)) and int(s.count) == 0


def test_grad_sq_norms_per_modality_over_its_leaves():
  grads = {"a": jnp.full((2, 2), 2.0), "b": jnp.array([1.0, 3.0]),
           "c": jnp.array([5.0], jnp.bfloat16), "head": jnp.array([7.0])}
  flat = ["audio", "visual", "audio", None]  # leaves in key order: a, b, c, head
  out = W.grad_sq_norms(grads, flat, ("audio", "visual"))
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, [4 * 4.0 + 25.0, 10.0])
  np.testing.assert_allclose(W.grad_sq_norms(grads, flat, ("visual", "audio")), [10.0, 41.0])


def test_epoch_of():
  assert int(W.epoch_of(state(history(0.0), count=7), 3)) == 2
  assert int(W.epoch_of(state(history(0.0), count=6), 3)) == 2
  assert int(W.epoch_of(state(history(0.0), count=5), 3)) == 1


def test_record_adds_and_counts():
  s = W.record(state(history(0.0, m=2), count=4, grad_sq_sum=[1.0, 2.0]),
               jnp.array([0.5, 3.0]), 10)
  assert int(s.count) == 5
  np.testing.assert_allclose(s.grad_sq_sum, [1.5, 5.0])


# ---- Eq. 11 -----------------------------------------------------------------------------------


def test_eq11_is_the_rise_relative_to_the_last_epoch_strictly_above_k():
  # (Tr^{t-1} - Tr^{t-2}) / Tr^{t-1}: 1.25 over 1.0 is a rise of 0.2 (0.25 over Tr^{t-2}).
  h = history([1.0, 1.0, 1.0, 1.0], [1.25, 1.25, 1.25, 1.25])
  got = W.prime_window(h, jnp.array([0.19, 0.2, 0.21, 0.24]))
  assert as_list(got) == [True, False, False, False]
  # exactly K is not a rise above K; just above is
  h = history([1.0, 1.0], [1.25, 1.2500001])
  assert as_list(W.prime_window(h, 0.2)) == [False, True]


def test_eq11_uses_the_last_two_epochs_only():
  # only Tr^{t-1} and Tr^{t-2} count: an older, lower trace does not open the window
  h = history([0.1, 1.0], [1.0, 1.0], [1.0, 1.1])
  assert as_list(W.prime_window(h, 0.04)) == [False, True]
  # a fall is not a rise; traces below 1 work the same (the denominator is Tr^{t-1})
  h = history([0.5, 0.2], [0.4, 0.25])
  assert as_list(W.prime_window(h, 0.04)) == [False, True]
  assert as_list(W.prime_window(h, 0.19)) == [False, True]
  assert as_list(W.prime_window(h, 0.21)) == [False, False]


def test_eq11_needs_two_closed_epochs():
  assert as_list(W.prime_window(history(1.0), 0.04)) == [False]  # no Tr^{t-2}
  assert as_list(W.prime_window(history(0.0, 1.0), -0.5)) == [False]
  assert as_list(W.prime_window(history(1.0, 0.0), -2.0)) == [False]  # no Tr^{t-1}
  assert as_list(W.prime_window(history(1.0, 2.0), -2.0)) == [True]


# ---- roll --------------------------------------------------------------------------------------


def test_roll_inside_an_epoch_changes_nothing():
  h = history([1.0, 2.0], [1.5, 1.0])
  for count in (1, 2):
    s = state(h, count=count, grad_sq_sum=[3.0, 6.0], open_epochs=[2, 0])
    r = W.roll(s, 3, 0.04)
    np.testing.assert_array_equal(r.trace_history, h)
    np.testing.assert_array_equal(r.grad_sq_sum, [3.0, 6.0])
    np.testing.assert_array_equal(r.open_epochs, [2, 0])
    assert int(r.count) == count


def test_roll_at_step_zero_changes_nothing():
  s = state(history(0.0, m=2), count=0, grad_sq_sum=[3.0, 6.0])
  r = W.roll(s, 3, 0.04)
  assert not np.any(np.asarray(r.trace_history))
  np.testing.assert_array_equal(r.grad_sq_sum, [3.0, 6.0])


def test_roll_closes_the_epoch_with_its_mean():
  h = history([1.0, 2.0], [1.5, 1.0])
  s = state(h, count=6, grad_sq_sum=[6.0, 3.0], open_epochs=[2, 5])
  r = W.roll(s, 3, 0.04)
  want = np.asarray(h).copy()
  want[:-1] = want[1:]
  want[-1] = [2.0, 1.0]
  np.testing.assert_allclose(r.trace_history, want)
  np.testing.assert_array_equal(r.grad_sq_sum, [0.0, 0.0])
  # audio: 2.0 after 1.5 is a rise (window open one more epoch); visual: no rise (reset)
  np.testing.assert_array_equal(r.open_epochs, [3, 0])
  assert int(r.count) == 6  # roll does not count steps
  # the oldest epoch leaves the history
  full = jnp.arange(W.TRACE_HISTORY * 2, dtype=jnp.float32).reshape(-1, 2) + 1
  r = W.roll(state(full, count=3, grad_sq_sum=[30.0, 60.0]), 3, 0.04)
  np.testing.assert_allclose(r.trace_history[:-1], full[1:])


def test_roll_divisor_and_default_threshold():
  s = state(history([1.0, 1.0]), count=2, grad_sq_sum=[2.1, 2.09])
  r = W.roll(s, 2, divisor=1)
  np.testing.assert_allclose(r.trace_history[-1], [2.1, 2.09])
  # default K 0.04: a rise of 0.0421 (1.0 -> 1.044) opens, 0.0385 (1.0 -> 1.04) does not
  r = W.roll(state(history([1.0, 1.0]), count=2, grad_sq_sum=[2.088, 2.08]), 2)
  np.testing.assert_allclose(r.trace_history[-1], [1.044, 1.04], rtol=1e-6)
  np.testing.assert_array_equal(r.open_epochs, [1, 0])


def test_roll_open_epochs_count_up_and_reset():
  s = state(history(1.0), count=0)
  opens = []
  for trace in (2.0, 3.0, 4.0, 4.0, 5.0):  # rises, rises, rises, flat, rise
    s = W.record(s, jnp.array([trace]), 1)
    s = W.roll(s._replace(count=jnp.asarray(1, jnp.int32)), 1, 0.04)
    opens.append(int(s.open_epochs[0]))
  assert opens == [1, 2, 3, 0, 1]


# ---- flags: the criteria -----------------------------------------------------------------------


def test_flags_eq11_is_prime_window():
  h = history([1.0, 1.0, 2.0], [1.1, 0.9, 2.0])
  assert as_list(W.flags(state(h), W.WindowRule(0.04))) == [True, False, False]
  assert as_list(W.flags(state(h), W.WindowRule(0.04, "eq11"))) == [True, False, False]
  assert as_list(W.flags(state(h), W.WindowRule(0.1, "eq11"))) == [False, False, False]


def test_flags_bounded_closes_after_max_epochs():
  h = history([1.0, 1.0, 1.0, 1.0], [1.1, 1.1, 1.1, 0.9])
  s = state(h, open_epochs=[0, 2, 3, 0])
  assert as_list(W.flags(s, W.WindowRule(0.04, "bounded", 2))) == [True, True, False, False]
  assert as_list(W.flags(s, W.WindowRule(0.04, "bounded", 3))) == [True, True, True, False]
  # bound 0: only a window that has just opened; the rule's default bound is 3 (InfoReg's)
  assert as_list(W.flags(s, W.WindowRule(0.04, "bounded", 0))) == [True, False, False, False]
  assert W.WindowRule(0.04, "bounded").max_epochs == 3


def test_flags_trend_compares_three_epoch_means():
  # now = mean of the last 3 epochs, before = mean of the 3 before; relative to now, > K
  rows = [[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0],
          [1.0, 1.0, 1.0, 0.4], [1.0, 2.0, 1.0, 0.4], [2.2, 0.5, 1.0, 0.4]]
  h = history(*rows)
  # now: 1.4, 1.1667, 1.0, 0.4; before: 1, 1, 1, 1
  got = W.flags(state(h), W.WindowRule(0.2, "trend"))
  assert as_list(got) == [True, False, False, False]
  got = W.flags(state(h), W.WindowRule(0.1, "trend"))
  assert as_list(got) == [True, True, False, False]
  # exactly K is not above: (1.25 - 1) / 1.25 = 0.2
  h = history(*([[1.0]] * 3 + [[1.25]] * 3))
  assert as_list(W.flags(state(h), W.WindowRule(0.2, "trend"))) == [False]
  assert as_list(W.flags(state(h), W.WindowRule(0.19, "trend"))) == [True]
  # traces below 1: the ratio is over now (0.5 - 0.4) / 0.5 = 0.2, not over 1
  h = history(*([[0.4]] * 3 + [[0.5]] * 3))
  assert as_list(W.flags(state(h), W.WindowRule(0.15, "trend"))) == [True]
  assert as_list(W.flags(state(h), W.WindowRule(0.21, "trend"))) == [False]


def test_flags_trend_needs_six_closed_epochs():
  h = history(*([[1.0]] * 2 + [[2.0]] * 3))  # five epochs: the seventh-newest row is 0
  assert as_list(W.flags(state(h), W.WindowRule(0.04, "trend"))) == [False]
  h = history(*([[0.0]] + [[1.0]] * 2 + [[2.0]] * 3))
  assert as_list(W.flags(state(h), W.WindowRule(0.04, "trend"))) == [False]
  # a seventh-newest zero does not matter once the six newest are traces
  h = history(*([[0.0]] + [[1.0]] * 3 + [[2.0]] * 3))
  assert as_list(W.flags(state(h), W.WindowRule(0.04, "trend"))) == [True]


def test_flags_trend_window_edges():
  # the 7th-newest epoch is not in "before", the 4th-newest is not in "now"
  h = history([100.0], [1.0], [1.0], [1.0], [2.0], [1.0], [1.0])
  # now = 4/3, before = 1: rise 0.25
  assert as_list(W.flags(state(h), W.WindowRule(0.24, "trend"))) == [True]
  assert as_list(W.flags(state(h), W.WindowRule(0.26, "trend"))) == [False]
  h = history([1.0], [1.0], [3.0], [1.0], [1.0], [1.0])
  # now = 1 < before = 5/3: (1 - 5/3) / 1 = -2/3
  assert as_list(W.flags(state(h), W.WindowRule(-0.5, "trend"))) == [False]
  assert as_list(W.flags(state(h), W.WindowRule(-0.7, "trend"))) == [True]


def test_flags_unknown_criterion():
  with pytest.raises(ValueError, match="criterion"):
    W.flags(state(history(1.0)), W.WindowRule(0.04, "nope"))


# ---- the released code's criterion ---------------------------------------------------------------


def official_k(traces, epoch):
  hist = [0.0] * 10 + list(traces)
  if epoch == 0:
    return 1.0
  now, prev = np.mean(hist[-10:]), np.mean(hist[-11:-1])
  return (now - prev) / now if now != 0 else now - prev


@pytest.mark.parametrize("traces", [[1.0], [1.0, 0.2], [1.0, 0.06], [1.0, 0.04],
                                    [2.0, 1.0, 0.5, 0.1], list(np.linspace(1, 3, 11)),
                                    [0.0, 0.0], [5.0] * 12, [1.0] * 11 + [3.0]])
def test_official_window_matches_the_released_moving_average(traces):
  h = np.zeros((W.TRACE_HISTORY, 2), np.float32)
  t = np.asarray(traces[-W.TRACE_HISTORY:], np.float32)
  h[len(h) - len(t):, 1] = t
  h[:, 0] = 7.0  # the other modality's traces do not count
  for k in (0.0, 0.05, 0.1, 0.3):
    want = official_k(traces, len(traces)) > k
    assert bool(W.official_window(jnp.asarray(h), 1, k, len(traces))) == want, (traces, k)
  assert bool(W.official_window(jnp.asarray(h), 1, 0.99, 0))  # epoch 0: k = 1
  assert not bool(W.official_window(jnp.asarray(h), 1, 1.0, 0))


def test_official_window_relative_change_below_one():
  h = np.zeros((W.TRACE_HISTORY, 1), np.float32)
  h[-2:, 0] = [0.75, 0.25]  # now 0.1, prev 0.075: k = 0.25
  assert bool(W.official_window(jnp.asarray(h), 0, 0.24, 2))
  assert not bool(W.official_window(jnp.asarray(h), 0, 0.26, 2))
  h[-2:, 0] = [3.0, 1.0]  # now = 0.4: k = 0.1 / 0.4 = 0.25, not 0.1
  assert bool(W.official_window(jnp.asarray(h), 0, 0.2, 2))
  assert not bool(W.official_window(jnp.asarray(h), 0, 0.26, 2))


# ---- gate --------------------------------------------------------------------------------------


def test_gate():
  flags = jnp.array([True, False, True])
  assert as_list(W.gate(flags, "prime")) == [True, False, True]
  assert as_list(W.gate(flags, "other")) == [False, True, False]
  assert as_list(W.gate(flags, "whole")) == [True, True, True]
  assert W.gate(flags, "whole").dtype == jnp.bool_
  assert as_list(W.gate(jnp.asarray(False), "whole")) is True
  assert as_list(W.gate(False, "other")) is True
  with pytest.raises(ValueError, match="window"):
    W.gate(flags, "nope")


# ---- track_window and find_one -----------------------------------------------------------------


PARAMS = {"a": jnp.ones((2, 2)), "b": jnp.ones((3,)), "c": jnp.ones((1,)), "head": jnp.ones(2)}
LABELS = {"a": "visual", "b": "audio", "c": "audio", "head": None}


def test_track_window_records_per_epoch_traces():
  tx = W.track_window(LABELS, steps_per_epoch=2, rule=W.WindowRule(0.04))
  s = tx.init(PARAMS)
  assert s.grad_sq_sum.shape == (2,)  # modalities, not leaves
  update = jax.jit(tx.update)
  for step in range(5):
    g = jax.tree.map(lambda p, step=step: p * (step + 1.0), PARAMS)
    out, s = update(g, s, PARAMS)
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(g)):
      np.testing.assert_array_equal(a, b)  # the updates pass unchanged
  # sorted names: audio (b: 3 entries, c: 1 entry), visual (a: 4 entries)
  sq = lambda i: np.array([4.0, 4.0]) * (i + 1.0) ** 2
  np.testing.assert_allclose(s.trace_history[-2], (sq(0) + sq(1)) / 2)
  np.testing.assert_allclose(s.trace_history[-1], (sq(2) + sq(3)) / 2)
  np.testing.assert_allclose(s.grad_sq_sum, sq(4))
  assert int(s.count) == 5
  assert update._cache_size() == 1


def test_track_window_takes_grad_sq_and_modalities():
  tx = W.track_window(LABELS, steps_per_epoch=1, rule=W.WindowRule(0.5),
                     modalities=("visual", "audio"))
  s = tx.init(PARAMS)
  _, s = tx.update(PARAMS, s, grad_sq=jnp.array([3.0, 1.0]))
  np.testing.assert_allclose(s.grad_sq_sum, [3.0, 1.0])
  _, s = tx.update(PARAMS, s)  # computed: visual 4, audio 4
  np.testing.assert_allclose(s.trace_history[-1], [3.0, 1.0])
  np.testing.assert_allclose(s.grad_sq_sum, [4.0, 4.0])
  # its threshold decides the open count: audio rose 1 -> 4 (0.75 > 0.5), visual 3 -> 4 not
  _, s = tx.update(PARAMS, s, grad_sq=jnp.array([1.0, 1.0]), other_extra=1)
  np.testing.assert_array_equal(s.open_epochs, [0, 1])
  # and the flags it used for this step are in its state (what the train step logs)
  np.testing.assert_array_equal(s.in_window, [False, True])
  s = W.track_window(LABELS, 1, modalities=["audio"]).init(PARAMS)
  assert s.grad_sq_sum.shape == (1,)


def test_flags_official_and_upcoming():
  # the released criterion decides for every modality from the lead one's trace
  h = history([1.0, 5.0], [1.0, 5.0], [2.0, 1.0])
  rule = W.WindowRule(0.05, "official", lead=0)
  got = W.flags(state(h, count=6), rule, steps_per_epoch=2)
  assert as_list(got) == [bool(W.official_window(h, 0, 0.05, 3))] * 2
  assert as_list(W.flags(state(h, count=0), rule, steps_per_epoch=2)) == [True, True]  # epoch 0
  # upcoming: the flags of the next update, the finished epoch closed first
  s = state(history(1.0, 1.0, m=2), count=4, grad_sq_sum=[4.0, 2.0])
  assert as_list(W.upcoming(s, W.WindowRule(0.04), 2)) == [True, False]  # 1 -> 2, 1 -> 1
  assert as_list(W.upcoming(s._replace(count=jnp.asarray(5)), W.WindowRule(0.04), 2)) == [
      False, False]  # mid-epoch: nothing closed


def test_track_window_default_threshold():
  tx = W.track_window(LABELS, steps_per_epoch=1)
  s = tx.init(PARAMS)
  for sq in ([1.0, 1.0], [1.0, 1.0], [1.044, 1.04], [1.0, 1.0]):
    _, s = tx.update(PARAMS, s, grad_sq=jnp.array(sq))
  np.testing.assert_array_equal(s.open_epochs, [1, 0])


def test_track_window_steps_per_epoch():
  with pytest.raises(ValueError, match="steps_per_epoch"):
    W.track_window(LABELS, steps_per_epoch=0)
  W.track_window(LABELS, steps_per_epoch=1)


def test_track_window_in_a_chain_and_find_window():
  tx = optax.chain(W.track_window(LABELS, 2), optax.sgd(0.1))
  s = tx.init(PARAMS)
  found = W.find_window(s)
  assert isinstance(found, W.TraceWindow)
  assert found is s[0]
  assert W.find_one(s, W.TraceWindow) is s[0]
  two = optax.chain(W.track_window(LABELS, 2), W.track_window(LABELS, 3)).init(PARAMS)
  with pytest.raises(ValueError, match="found 2"):
    W.find_window(two)
  with pytest.raises(ValueError, match="found 0"):
    W.find_one(optax.sgd(0.1).init(PARAMS), W.TraceWindow)


# ---- the noise-aware window (ours) ------------------------------------------------------------


def test_record_and_roll_give_the_epochs_standard_error():
  """Welford's running squared deviations: the closed epoch's se is numpy's std(ddof=1) of
  its steps' ||g||^2 over sqrt(steps), in the trace's units (a sum's for the released
  variant's divisor 1)."""
  steps = np.array([[3.0, 1.0], [5.0, 1.5], [4.5, 0.5], [9.0, 1.0]], np.float32)  # 4 steps
  s = W.init(2)
  for x in steps:
    s = W.record(W.roll(s, 4), jnp.asarray(x), 4)
  rolled = W.roll(s, 4)  # the first step of the next epoch closes this one
  se = steps.std(axis=0, ddof=1) / np.sqrt(4)
  np.testing.assert_allclose(rolled.trace_history[-1], steps.mean(0), rtol=1e-6)
  np.testing.assert_allclose(rolled.se_history[-1], se, rtol=1e-5)
  assert not np.any(np.asarray(rolled.grad_sq_m2))  # restarted with the sum
  np.testing.assert_allclose(W.roll(s, 4, divisor=1).se_history[-1], 4 * se, rtol=1e-5)
  # a second epoch's se is its own steps' (nothing carried over)
  for x in 2 * steps[::-1]:
    rolled = W.record(W.roll(rolled, 4), jnp.asarray(x), 4)
  np.testing.assert_allclose(W.roll(rolled, 4).se_history[-1], 2 * se, rtol=1e-5)


def test_noise_aware_window_needs_the_rise_to_clear_k_by_two_standard_errors():
  """rise (1.2 - 1.0) / 1.2 = 0.1667; with se 0.01 and 0.02 the rise's noise is
  sqrt(0.01^2 + 0.02^2) / 1.2 = 0.01863: K 0.12 opens Eq. 11 and the noise-aware rule
  (0.1667 - 2 x 0.0186 = 0.129 > 0.12), K 0.13 opens Eq. 11 only."""
  h = history([1.0, 1.0], [1.2, 1.0])
  se = history([0.02, 0.5], [0.01, 0.5])
  rise, noise = W.rise_and_noise(h, se)
  np.testing.assert_allclose(rise, [0.2 / 1.2, 0.0], rtol=1e-6)
  np.testing.assert_allclose(noise[0], np.hypot(0.01, 0.02) / 1.2, rtol=1e-5)
  s = state(h)._replace(se_history=se)
  for k, eq11, aware in ((0.12, [True, False], [True, False]),
                         (0.13, [True, False], [False, False])):
    assert as_list(W.flags(s, W.WindowRule(k))) == eq11
    assert as_list(W.flags(s, W.WindowRule(k, "noise_aware"))) == aware
  # no noise: the noise-aware rule is Eq. 11
  quiet = state(h)
  assert as_list(W.flags(quiet, W.WindowRule(0.13, "noise_aware"))) == [True, False]
