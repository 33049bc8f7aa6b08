"""inforeg_transform against an independent NumPy reference of Algorithm 1, and the contract
optax's own transformations meet."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from inforeg_jax import inforeg_diagnostics, inforeg_transform
from inforeg_jax.regulation import find_inforeg_state

MODS = ("audio", "visual", "text")
SPE = 3  # steps per epoch
EPOCHS = 7


def make_params(rng):
  return {"audio": {"w": rng.normal(size=(3, 2)).astype(np.float32)},
          "visual": {"w": rng.normal(size=(4,)).astype(np.float32),
                     "b": rng.normal(size=(2, 2)).astype(np.float32)},
          "text": {"w": rng.normal(size=(5,)).astype(np.float32)},
          "head": {"w": rng.normal(size=(2,)).astype(np.float32)}}


LABELS = {"audio": {"w": "audio"}, "visual": {"w": "visual", "b": "visual"},
          "text": {"w": "text"}, "head": {"w": None}}

# Gradient scale per (epoch, modality): audio's trace rises then falls, visual's rises late,
# text's stays flat, so that Eq. 11 switches on and off during the run.
SCALES = np.array([[1.0, 1.0, 1.0], [1.2, 1.0, 1.0], [1.5, 1.0, 1.0], [1.6, 1.3, 1.0],
                   [1.0, 1.6, 1.0], [0.8, 1.7, 1.0], [0.8, 1.7, 1.0]])


def reference_paper(params, grads_seq, losses_seq, beta, k, warmup, window="prime",
                    flags=None):
  """Algorithm 1 in plain NumPy, written from METHOD.md without the library's helpers.
  ``window``: regulate inside the prime learning window, outside it or always (Table 4);
  ``flags``, if a list: gets each step's [in window and warm] per modality."""
  out, history, anchor, sums = [], [], None, np.zeros(3)
  for step, (grads, losses) in enumerate(zip(grads_seq, losses_seq)):
    epoch = step // SPE
    if step % SPE == 0:
      if step > 0:
        history.append(sums / SPE)
        sums = np.zeros(3)
      anchor = {k1: {k2: v.copy() for k2, v in d.items()} for k1, d in params.items()}
    new = {k1: {k2: v.copy() for k2, v in d.items()} for k1, d in grads.items()}
    for i, m in enumerate(MODS):
      sums[i] += sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads[m].values())
      worse = [losses[j] - losses[i] for j in range(3) if losses[j] > losses[i]]
      delta = np.mean(worse) if worse else 0.0
      t1 = history[-1][i] if len(history) >= 1 else 0.0
      t2 = history[-2][i] if len(history) >= 2 else 0.0
      in_window = t1 > 0 and t2 > 0 and (t1 - t2) / t1 > k
      if flags is not None:
        if i == 0:
          flags.append([])
        flags[-1].append(in_window and epoch >= warmup)
      gate = {"prime": in_window, "other": not in_window, "whole": True}[window]
      if epoch >= warmup and gate and delta > 0:
        alpha = math.exp(beta * math.tanh(delta))
        for name in new[m]:
          new[m][name] = new[m][name] + alpha * (params[m][name] - anchor[m][name])
    out.append(new)
    # a plain SGD step so that params move away from the anchor
    params = {k1: {k2: v - 0.1 * new[k1][k2] for k2, v in d.items()} for k1, d in params.items()}
  return out, history


def run_transform(tx, params, grads_seq, losses_seq, **extra):
  state = tx.init(params)
  update = jax.jit(lambda g, s, p, l: tx.update(g, s, p, unimodal_losses=l, **extra))
  outs, states = [], []
  for grads, losses in zip(grads_seq, losses_seq):
    u, state = update(grads, state, params, dict(zip(MODS, losses)))
    outs.append(u)
    states.append(state)
    params = jax.tree.map(lambda p, g: p - 0.1 * g, params, u)
  return outs, states


def sequence(seed=0):
  rng = np.random.default_rng(seed)
  params = make_params(rng)
  grads_seq, losses_seq = [], []
  for step in range(SPE * EPOCHS):
    scale = SCALES[step // SPE]
    g = jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
    for i, m in enumerate(MODS):
      g[m] = jax.tree.map(lambda x, s=scale[i]: x * s, g[m])
    grads_seq.append(g)
    losses_seq.append(rng.uniform(0.5, 2.0, size=3).astype(np.float32))
  return params, grads_seq, losses_seq


def test_matches_numpy_reference_over_epochs():
  params, grads_seq, losses_seq = sequence()
  tx = inforeg_transform(LABELS, steps_per_epoch=SPE, beta=0.9, threshold=0.04, warmup_epochs=2,
                         modalities=MODS)
  outs, states = run_transform(tx, params, grads_seq, losses_seq)
  ref, history = reference_paper(params, grads_seq, losses_seq, 0.9, 0.04, 2)
  for got, want in zip(outs, ref):
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-5)
  # Traces of the closed epochs, newest last.
  got_hist = np.asarray(states[-1].window.trace_history)[-len(history):]
  np.testing.assert_allclose(got_hist, np.stack(history), rtol=1e-5)
  # The criterion switched both on and off after the warm-up, for more than one modality.
  windows = np.stack([np.asarray(s.in_window) for s in states[2 * SPE:]])
  assert windows.any(axis=0)[:2].all() and (~windows).any(axis=0)[:2].all()
  alphas = np.stack([np.asarray(s.alpha) for s in states])
  assert (alphas[: 2 * SPE] == 0).all()  # warm-up
  assert (alphas > 1).any()  # regulation happened
  head_grads = [np.asarray(o["head"]["w"]) for o in outs]
  np.testing.assert_array_equal(head_grads, [g["head"]["w"] for g in grads_seq])


def test_regulation_targets_leading_modality_only():
  params, grads_seq, _ = sequence(1)
  # audio best (lowest loss), text worst: audio and visual are ahead, text never.
  losses_seq = [np.array([0.2, 0.9, 1.5], np.float32)] * len(grads_seq)
  tx = inforeg_transform(LABELS, steps_per_epoch=SPE, window="whole", warmup_epochs=0,
                         modalities=MODS)
  _, states = run_transform(tx, params, grads_seq, losses_seq)
  alpha = np.asarray(states[-1].alpha)
  np.testing.assert_allclose(alpha[0], math.exp(0.9 * math.tanh((0.7 + 1.3) / 2)), rtol=1e-6)
  np.testing.assert_allclose(alpha[1], math.exp(0.9 * math.tanh(0.6)), rtol=1e-6)
  assert alpha[2] == 0


def test_first_step_of_epoch_anchors_at_params():
  params, grads_seq, losses_seq = sequence(2)
  tx = inforeg_transform(LABELS, steps_per_epoch=SPE, window="whole", warmup_epochs=0)
  outs, states = run_transform(tx, params, grads_seq, losses_seq)
  # At a step that opens an epoch, w - anchor = 0: the gradient passes unchanged.
  for step in range(0, len(outs), SPE):
    chex.assert_trees_all_close(outs[step], grads_seq[step], rtol=1e-6)
  assert not np.allclose(np.asarray(outs[1]["audio"]["w"]), grads_seq[1]["audio"]["w"])


def reference_official(params, grads_seq, scores_seq):
  """The released code's rules (METHOD.md), two modalities, audio first."""
  out, hist, anchor, sums = [], [0.0] * 10, None, np.zeros(2)
  k = 1.0
  for step, (grads, s) in enumerate(zip(grads_seq, scores_seq)):
    if step % SPE == 0:
      if step > 0:
        hist.append(sums[0])
        sums = np.zeros(2)
        k = (np.mean(hist[-10:]) - np.mean(hist[-11:-1])) / np.mean(hist[-10:])
      anchor = {m: {n: v.copy() for n, v in d.items()} for m, d in params.items()}
    coef = [0.0, 0.0]
    if k > 0.05:
      if s[0] > s[1]:
        coef[0] = 0.95 * math.exp(math.tanh(s[0] - s[1]))
      elif s[1] > s[0]:
        coef[1] = 0.10 * math.exp(math.tanh(s[1] - s[0]))
    new = {m: {n: v.copy() for n, v in d.items()} for m, d in grads.items()}
    for i, m in enumerate(("audio", "visual")):
      for n in new[m]:
        new[m][n] = new[m][n] + coef[i] * (params[m][n] - anchor[m][n])
        if new[m][n].ndim >= 2:
          sums[i] += float(np.mean(new[m][n].astype(np.float64) ** 2))
    out.append(new)
    params = {m: {n: v - 0.1 * new[m][n] for n, v in d.items()} for m, d in params.items()}
  return out


def test_official_variant_matches_released_rules():
  rng = np.random.default_rng(3)
  params = {"audio": {"k": rng.normal(size=(3, 2)).astype(np.float32)},
            "visual": {"k": rng.normal(size=(2, 2)).astype(np.float32),
                       "b": rng.normal(size=(2,)).astype(np.float32)},
            "head": {"k": rng.normal(size=(2, 2)).astype(np.float32)}}
  labels = {"audio": {"k": "audio"}, "visual": {"k": "visual", "b": "visual"}, "head": {"k": None}}
  grads_seq, scores_seq = [], []
  for _ in range(SPE * 14):
    grads_seq.append(jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params))
    scores_seq.append(rng.uniform(0, 3, size=2).astype(np.float32))
  tx = inforeg_transform(labels, steps_per_epoch=SPE, variant="official")
  state = tx.init(params)
  update = jax.jit(lambda g, s, p, sc: tx.update(g, s, p, unimodal_scores=sc))
  p = params
  ref = reference_official(params, grads_seq, scores_seq)
  on = []
  for g, sc, want in zip(grads_seq, scores_seq, ref):
    u, state = update(g, state, p, {"audio": sc[0], "visual": sc[1]})
    chex.assert_trees_all_close(u, want, rtol=1e-5, atol=1e-6)
    on.append(bool(state.in_window[0]))
    p = jax.tree.map(lambda a, b: a - 0.1 * b, p, u)
  assert on[0] and not on[-1]  # the padded moving average opens, then closes the window


# ---- the optax contract -------------------------------------------------------------------


def small():
  params = {"audio": {"w": jnp.ones((2, 2))}, "visual": {"w": jnp.full((3,), 2.0)},
            "head": {"w": jnp.zeros((2,))}}
  labels = {"audio": {"w": "audio"}, "visual": {"w": "visual"}, "head": {"w": None}}
  losses = {"audio": jnp.float32(0.3), "visual": jnp.float32(1.2)}
  return params, labels, losses


def test_jit_without_recompilation_and_ignores_unknown_extras():
  params, labels, losses = small()
  tx = inforeg_transform(labels, steps_per_epoch=2)
  state = tx.init(params)
  update = jax.jit(lambda g, s, p: tx.update(g, s, p, unimodal_losses=losses, other_thing=3))
  _, state = update(params, state, params)
  _, state = update(params, state, params)
  assert update._cache_size() == 1
  chex.assert_trees_all_equal_structs(state, tx.init(params))


def test_inside_chain_and_inject_hyperparams():
  params, labels, losses = small()
  tx = optax.chain(
      optax.inject_hyperparams(inforeg_transform)(labels, steps_per_epoch=1, beta=0.5,
                                                  threshold=0.04, warmup_epochs=0,
                                                  window="whole"),
      optax.add_decayed_weights(1e-4), optax.sgd(0.1, momentum=0.9))
  state = tx.init(params)
  for _ in range(3):
    grads = jax.tree.map(jnp.ones_like, params)
    updates, state = jax.jit(lambda g, s, p: tx.update(g, s, p, unimodal_losses=losses))(
        grads, state, params)
    params = optax.apply_updates(params, updates)
  assert float(state[0].hyperparams["beta"]) == 0.5
  diag = inforeg_diagnostics(state, ("audio", "visual"))
  np.testing.assert_allclose(diag["alpha_audio"], math.exp(0.5 * math.tanh(0.9)), rtol=1e-6)
  assert float(diag["alpha_visual"]) == 0.0
  assert diag["trace_history_audio"].shape == (11,)


def test_bf16_params_stay_bf16():
  params, labels, losses = small()
  params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
  tx = inforeg_transform(labels, steps_per_epoch=2, warmup_epochs=0, window="whole")
  state = tx.init(params)
  updates, state = tx.update(params, state, params, unimodal_losses=losses)
  updates, state = tx.update(updates, state, jax.tree.map(lambda p: p * 0.5, params),
                             unimodal_losses=losses)
  chex.assert_trees_all_equal_dtypes(updates, params)
  chex.assert_trees_all_equal_dtypes(state.epoch_anchor, params)
  assert state.window.grad_sq_sum.dtype == jnp.float32


def test_param_labels_as_function():
  params, labels, losses = small()
  tx = inforeg_transform(lambda p: labels, steps_per_epoch=2)
  state = tx.init(params)
  tx.update(params, state, params, unimodal_losses=losses)
  assert find_inforeg_state(state).window.grad_sq_sum.shape == (2,)


@pytest.mark.parametrize("kwargs, message", [
    (dict(steps_per_epoch=0), "steps_per_epoch"),
    (dict(steps_per_epoch=2, beta=-1.0), "beta"),
    (dict(steps_per_epoch=2, variant="nope"), "variant"),
    (dict(steps_per_epoch=2, window="nope"), "window"),
])
def test_bad_hyperparameters(kwargs, message):
  _, labels, _ = small()
  with pytest.raises(ValueError, match=message):
    inforeg_transform(labels, **kwargs)


def test_bad_labels_and_missing_losses():
  params, labels, losses = small()
  with pytest.raises(ValueError, match="structure"):
    inforeg_transform({"audio": "audio"}, steps_per_epoch=2).init(params)
  one = jax.tree.map(lambda l: "audio" if l else None, labels, is_leaf=lambda x: x is None)
  with pytest.raises(ValueError, match=">= 2 modalities"):
    inforeg_transform(one, steps_per_epoch=2).init(params)
  tx = inforeg_transform(labels, steps_per_epoch=2)
  with pytest.raises(ValueError, match="unimodal_losses"):
    tx.update(params, tx.init(params), params)


# ---- Table 4's windows, the warm-up, the defaults --------------------------------------------


@pytest.mark.parametrize("window", ["prime", "other", "whole"])
@pytest.mark.parametrize("warmup", [0, 3])
def test_windows_and_warmup_match_the_reference(window, warmup):
  """Regulated inside the window (InfoReg), outside it (``other``) or always, after a warm-up
  of 0 or 3 epochs; the in-window flag is False during the warm-up, whatever the traces."""
  params, grads_seq, losses_seq = sequence()
  tx = inforeg_transform(LABELS, steps_per_epoch=SPE, beta=0.9, threshold=0.04,
                         warmup_epochs=warmup, modalities=MODS, window=window)
  outs, states = run_transform(tx, params, grads_seq, losses_seq)
  flags = []
  ref, _ = reference_paper(params, grads_seq, losses_seq, 0.9, 0.04, warmup, window, flags)
  for got, want in zip(outs, ref):
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-5)
  got_flags = np.stack([np.asarray(s.in_window) for s in states])
  np.testing.assert_array_equal(got_flags, np.array(flags))
  alphas = np.stack([np.asarray(s.alpha) for s in states])
  assert (alphas[:warmup * SPE] == 0).all()
  assert (alphas[warmup * SPE:] > 1).any()
  if warmup == 3:  # a window is open at epoch 2 (text's): warm-up >= 3 must hide it
    h = np.asarray(states[2 * SPE].window.trace_history)
    assert ((h[-1] - h[-2]) / h[-1] > 0.04).any()
    assert not got_flags[:3 * SPE].any()


def designed(traces, spe=1):
  """Params and gradients whose per-epoch Tr(F) (paper: sum of g^2 over the modality's
  leaves, one step an epoch, so the anchor is always the params and w - anchor = 0) is
  ``traces[e] = (audio, visual)``."""
  params = {"audio": {"k": jnp.zeros((2, 2)), "b": jnp.zeros((2,))},
            "visual": {"k": jnp.zeros((2, 2))}, "head": {"k": jnp.zeros((2,))}}
  labels = {"audio": {"k": "audio", "b": "audio"}, "visual": {"k": "visual"},
            "head": {"k": None}}
  grads = []
  for ta, tv in traces:
    for _ in range(spe):
      # audio: the kernel carries the whole trace; the bias adds 0.5 (paper counts it)
      grads.append({"audio": {"k": jnp.full((2, 2), np.sqrt((ta - 0.5) / 4), jnp.float32),
                              "b": jnp.full((2,), 0.5, jnp.float32)},
                    "visual": {"k": jnp.full((2, 2), np.sqrt(tv / 4), jnp.float32)},
                    "head": {"k": jnp.ones((2,))}})
  return params, labels, grads


def run_designed(tx, params, grads, **extras):
  state = tx.init(params)
  update = jax.jit(lambda g, s, p, e: tx.update(g, s, p, **e))
  states = []
  for g in grads:
    _, state = update(g, state, params, extras)
    states.append(state)
  return states


def test_paper_defaults_k_004_and_two_warmup_epochs():
  # audio's trace rises by 0.042 of Tr^{t-1} into epoch 1 (> K = 0.04, < 0.044); visual's
  # by 0.038; epoch 2 is the first after the two warm-up epochs.
  t0, t1 = 2.0, 2.0 / (1 - 0.042)
  params, labels, grads = designed([(t0, 2.0), (t1, 2.0 / (1 - 0.038)), (t1, 2.0), (t1, 2.0)])
  losses = {"audio": jnp.float32(0.2), "visual": jnp.float32(1.0)}
  tx = inforeg_transform(labels, steps_per_epoch=1)
  states = run_designed(tx, params, grads, unimodal_losses=losses)
  flags = [np.asarray(s.in_window).tolist() for s in states]
  assert flags == [[False, False], [False, False], [True, False], [False, False]]
  alphas = [np.asarray(s.alpha).tolist() for s in states]
  assert alphas[2][0] == pytest.approx(math.exp(0.9 * math.tanh(0.8)), rel=1e-6)
  assert alphas[2][1] == 0 and alphas[3] == [0, 0]
  np.testing.assert_allclose(states[-1].window.trace_history[-2:, 0], [t1, t1], rtol=1e-5)
  # three warm-up epochs: epoch 2 is still warm-up
  states = run_designed(inforeg_transform(labels, steps_per_epoch=1, warmup_epochs=3), params,
                        grads, unimodal_losses=losses)
  assert not np.any([np.asarray(s.in_window) for s in states])
  # K = 0.045 closes it
  states = run_designed(inforeg_transform(labels, steps_per_epoch=1, threshold=0.045), params,
                        grads, unimodal_losses=losses)
  assert not np.any([np.asarray(s.in_window) for s in states])


def test_paper_grad_sq_given_replaces_the_computed_one():
  params, labels, grads = designed([(1.0, 1.0)] * 3)
  losses = {"audio": jnp.float32(0.2), "visual": jnp.float32(1.0)}
  tx = inforeg_transform(labels, steps_per_epoch=1)
  states = run_designed(tx, params, grads, unimodal_losses=losses,
                        grad_sq=jnp.array([3.0, 5.0]))
  np.testing.assert_allclose(states[-1].window.trace_history[-1], [3.0, 5.0])
  states = run_designed(tx, params, grads, unimodal_losses=losses)
  np.testing.assert_allclose(states[-1].window.trace_history[-1], [1.0, 1.0], rtol=1e-6)


def test_official_defaults_k_005_beyond_epoch_0_and_no_warmup():
  # released criterion on audio: k = 1 at epoch 0 and 1; at epoch 2, k = t1 / (t0 + t1)
  # = 0.052 (> 0.05, < 0.055); at epoch 3, k = 0.045 / ... < 0.05. Visual's traces rise
  # steeply and never matter.
  t0, t1 = 1.0, 0.052 / 0.948
  t2 = 0.045 * (t0 + t1) / (1 - 0.045)
  params, labels, grads = designed([(t0 + 0.5, 0.1), (t1 + 0.5, 1.0), (t2 + 0.5, 9.0),
                                    (1.5, 90.0)])
  scores = {"audio": jnp.float32(5.0), "visual": jnp.float32(3.0)}
  tx = inforeg_transform(labels, steps_per_epoch=1, variant="official")
  states = run_designed(tx, params, grads, unimodal_scores=scores)
  # the official trace: the kernel's mean g^2 only (rank >= 2; the bias is left out)
  hist = np.asarray(states[-1].window.trace_history)
  np.testing.assert_allclose(hist[-3:, 0], [t0 / 4, t1 / 4, t2 / 4], rtol=1e-5)
  flags = [np.asarray(s.in_window).tolist() for s in states]
  assert flags == [[True, True], [True, True], [True, True], [False, False]]
  alphas = np.stack([np.asarray(s.alpha) for s in states])
  np.testing.assert_allclose(alphas[:3, 0], 0.95 * math.exp(math.tanh(2.0)), rtol=1e-6)
  assert (alphas[:, 1] == 0).all() and alphas[3, 0] == 0
  # the other modality leads: its scale is 0.10
  states = run_designed(tx, params, grads[:1], unimodal_scores={"audio": jnp.float32(1.0),
                                                                "visual": jnp.float32(1.5)})
  np.testing.assert_allclose(states[0].alpha, [0.0, 0.10 * math.exp(math.tanh(0.5))],
                             rtol=1e-6)
  # equal scores: nobody leads, nothing is regulated
  states = run_designed(tx, params, grads[:2], unimodal_scores={"audio": jnp.float32(2.0),
                                                                "visual": jnp.float32(2.0)})
  assert not np.any([np.asarray(s.alpha) for s in states])


def test_official_variant_counts_only_weight_tensors():
  """The released trace counts the rank >= 2 tensors, here with a bias in audio too."""
  rng = np.random.default_rng(5)
  params = {"audio": {"k": rng.normal(size=(3, 2)).astype(np.float32),
                      "b": rng.normal(size=(2,)).astype(np.float32)},
            "visual": {"k": rng.normal(size=(2, 2)).astype(np.float32),
                       "b": rng.normal(size=(2,)).astype(np.float32)},
            "head": {"k": rng.normal(size=(2, 2)).astype(np.float32)}}
  labels = {"audio": {"k": "audio", "b": "audio"}, "visual": {"k": "visual", "b": "visual"},
            "head": {"k": None}}
  grads_seq, scores_seq = [], []
  for step in range(SPE * 12):
    scale = 3.0 if step // SPE == 4 else 1.0  # a jump in audio's trace reopens the window
    g = jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
    g["audio"]["b"] = g["audio"]["b"] * 30.0  # a huge bias gradient must not count
    g["audio"]["k"] = g["audio"]["k"] * scale
    grads_seq.append(g)
    scores_seq.append(rng.choice([0.5, 1.0, 2.0], size=2).astype(np.float32))
  tx = inforeg_transform(labels, steps_per_epoch=SPE, variant="official")
  update = jax.jit(lambda g, s, p, sc: tx.update(g, s, p, unimodal_scores=sc))
  state, p = tx.init(params), params
  on = []
  for g, sc, want in zip(grads_seq, scores_seq, reference_official(params, grads_seq,
                                                                   scores_seq)):
    u, state = update(g, state, p, {"audio": sc[0], "visual": sc[1]})
    chex.assert_trees_all_close(u, want, rtol=1e-5, atol=1e-6)
    on.append(bool(state.in_window[0]))
    p = jax.tree.map(lambda a, b: a - 0.1 * b, p, u)
  assert on[0] and not all(on) and any(on[5 * SPE:])


def test_bounded_and_trend_criteria_pass_through():
  # traces rising every epoch: Eq. 11 never closes; bounded closes after max_window_epochs
  traces = [(1.0 + e, 1.0) for e in range(9)]
  params, labels, grads = designed(traces)
  losses = {"audio": jnp.float32(0.2), "visual": jnp.float32(1.0)}

  def flags(**kw):
    tx = inforeg_transform(labels, steps_per_epoch=1, warmup_epochs=0, **kw)
    return [bool(s.in_window[0]) for s in run_designed(tx, params, grads,
                                                         unimodal_losses=losses)]

  eq11 = flags()
  assert eq11 == [False, False] + [True] * 7
  assert flags(criterion="bounded") == flags(criterion="bounded", max_window_epochs=3)
  assert flags(criterion="bounded", max_window_epochs=3) == [False, False] + [True] * 3 + [
      False] * 4
  assert flags(criterion="bounded", max_window_epochs=4) == [False, False] + [True] * 4 + [
      False] * 3
  trend = flags(criterion="trend")
  assert trend == [False] * 6 + [True] * 3


def test_performance_gap():
  from inforeg_jax.regulation import performance_gap
  np.testing.assert_allclose(performance_gap(jnp.array([0.2, 0.9, 1.5])), [1.0, 0.6, 0.0],
                             rtol=1e-6)
  # ties are not a gap; the mean is over the worse modalities only
  np.testing.assert_allclose(performance_gap(jnp.array([1.0, 1.0, 3.0, 0.5])),
                             [2.0, 2.0, 0.0, (0.5 + 0.5 + 2.5) / 3], rtol=1e-6)
  np.testing.assert_allclose(performance_gap(jnp.array([1.0, 1.0])), [0.0, 0.0])


def test_released_trace_term():
  from inforeg_jax.regulation import released_trace_term
  g = {"a": jnp.full((2, 2), 2.0), "b": jnp.full((3,), 5.0), "c": jnp.full((1, 2, 2), 3.0),
       "d": jnp.full((2, 2), 7.0), "e": jnp.full((2, 2), 11.0)}
  flat = ["audio", "audio", "audio", "visual", None]
  out = released_trace_term(g, flat, ("audio", "visual"))
  np.testing.assert_allclose(out, [4.0 + 9.0, 49.0])
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(released_trace_term({"b": jnp.ones(3)}, ["audio"], ("audio",)),
                             [0.0])


@pytest.mark.parametrize("kwargs, message", [
    (dict(steps_per_epoch=2, criterion="nope"), "criterion"),
    (dict(steps_per_epoch=2, warmup_epochs=-1), "warmup_epochs"),
    (dict(steps_per_epoch=2, max_window_epochs=0), "max_window_epochs"),
])
def test_more_bad_hyperparameters(kwargs, message):
  _, labels, _ = small()
  with pytest.raises(ValueError, match=message):
    inforeg_transform(labels, **kwargs)


def test_smallest_valid_hyperparameters():
  params, labels, losses = small()
  tx = inforeg_transform(labels, steps_per_epoch=1, beta=0.0, warmup_epochs=0,
                         max_window_epochs=1, criterion="bounded", window="whole")
  _, state = tx.update(params, tx.init(params), params, unimodal_losses=losses)
  np.testing.assert_allclose(state.alpha, [1.0, 0.0])  # exp(0 * tanh(.)) for the leader
  # arrays (inject_hyperparams) are not checked
  inforeg_transform(labels, steps_per_epoch=jnp.asarray(0), beta=jnp.asarray(-1.0),
                    warmup_epochs=jnp.asarray(-1), max_window_epochs=jnp.asarray(0))


def test_setup_errors():
  params, labels, losses = small()
  with pytest.raises(ValueError, match="missing"):
    inforeg_transform(labels, steps_per_epoch=2, modalities=("audio", "text")).init(params)
  with pytest.raises(ValueError, match="official"):
    inforeg_transform(labels, steps_per_epoch=2, variant="official",
                      modalities=("audio", "visual", "text")).init(params)
  three = {"audio": {"w": "audio"}, "visual": {"w": "visual"}, "head": {"w": "text"}}
  with pytest.raises(ValueError, match="official"):
    inforeg_transform(three, steps_per_epoch=2, variant="official").init(params)
  tx = inforeg_transform(three, steps_per_epoch=2)
  assert tx.init(params).alpha.shape == (3,)
  tx = inforeg_transform(labels, steps_per_epoch=2, modalities=("visual", "audio"))
  state = tx.init(params)
  _, state = tx.update(params, state, params, unimodal_losses=losses)
  with pytest.raises(ValueError, match="params"):
    tx.update(params, state)
  with pytest.raises(ValueError, match="unimodal_losses"):
    tx.update(params, state, params, unimodal_losses={"audio": 1.0})
  official = inforeg_transform(labels, steps_per_epoch=2, variant="official")
  with pytest.raises(ValueError, match="unimodal_scores"):
    official.update(params, official.init(params), params, unimodal_losses=losses)


def test_state_order_follows_modalities():
  params, labels, losses = small()  # audio's loss 0.3 < visual's 1.2: audio leads
  tx = inforeg_transform(labels, steps_per_epoch=1, warmup_epochs=0, window="whole",
                         modalities=("visual", "audio"))
  updates, state = tx.update(params, tx.init(params), params, unimodal_losses=losses)
  np.testing.assert_allclose(state.alpha, [0.0, math.exp(0.9 * math.tanh(0.9))], rtol=1e-6)
  diag = inforeg_diagnostics(state, ("visual", "audio"))
  assert set(diag) == {"alpha_visual", "alpha_audio", "window_visual", "window_audio",
                       "trace_history_visual", "trace_history_audio"}
  assert float(diag["alpha_audio"]) > 1 and float(diag["window_audio"]) == 0.0
  assert diag["window_audio"].dtype == jnp.float32
  assert find_inforeg_state([optax.sgd(1.0).init(params), state]) is state
