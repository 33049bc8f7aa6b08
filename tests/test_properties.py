"""Property tests (hypothesis) of the gradient transformations over random parameter trees,
shapes, dtypes (float32, bfloat16), gradients, losses and scores:

- finite in, finite out (updates and state);
- nothing is regulated before the warm-up (InfoReg) or outside OGM-GE's epochs and gate;
- InfoReg's anchor is the params at the first step of every epoch (w - anchor = 0 there);
- track_window's history holds each closed epoch's mean ||g_m||^2 and its sum restarts at
  every epoch boundary;
- ``window="prime"`` and ``"other"`` split the steps and modalities regulated under
  ``"whole"``: disjoint, and together exactly whole's (given the same inputs).

Eager (no jit: every example has a new tree, and compiling each would cost more than running
it) and derandomized, with modest example counts: seconds in all, and the same examples on
every run (mutation testing needs that).
"""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inforeg_jax import window as W
from inforeg_jax.methods.ogm_ge import ogm_ge_transform
from inforeg_jax.regulation import inforeg_transform

FAST = settings(max_examples=10, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck), print_blob=True)
SHAPES = [(), (3,), (2, 2), (2, 1, 3)]
DTYPES = {"f32": jnp.float32, "bf16": jnp.bfloat16}


@st.composite
def problems(draw, min_modalities=2, max_modalities=3, max_epochs=5):
  """A random run: labels and a tree per step (params, gradients) and its per-step losses
  and scores. Gradients are scaled per (epoch, modality) so that traces rise and fall."""
  m = draw(st.integers(min_modalities, max_modalities))
  names = ["audio", "visual", "text"][:m]
  leaves = []  # (path, modality or None, shape, dtype)
  for n in names + [None]:
    for j in range(draw(st.integers(1, 3) if n is not None else st.integers(0, 2))):
      leaves.append((n or "head", f"p{j}", n, draw(st.sampled_from(SHAPES)),
                     DTYPES[draw(st.sampled_from(sorted(DTYPES)))]))
  spe = draw(st.integers(1, 2))
  epochs = draw(st.integers(3, max_epochs))
  seed = draw(st.integers(0, 2**16))
  scale = draw(st.sampled_from([1e-3, 1.0, 30.0]))
  epoch_scale = np.array(draw(st.lists(st.lists(st.floats(0.25, 4.0), min_size=m, max_size=m),
                                       min_size=epochs, max_size=epochs)))
  steps = spe * epochs
  losses = draw(st.lists(st.lists(st.floats(0.0, 30.0, width=32), min_size=m, max_size=m),
                         min_size=steps, max_size=steps))
  scores = draw(st.lists(st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0, 7.5]), min_size=m,
                                  max_size=m), min_size=steps, max_size=steps))
  rng = np.random.default_rng(seed)

  def tree(fn):
    out = {}
    for top, name, label, shape, dtype in leaves:
      out.setdefault(top, {})[name] = jnp.asarray(fn(label, shape), dtype)
    return out

  labels = {}
  for top, name, label, _, _ in leaves:
    labels.setdefault(top, {})[name] = label
  params_seq, grads_seq = [], []
  for step in range(steps):
    e = step // spe
    params_seq.append(tree(lambda l, s: rng.normal(size=s) * scale))
    grads_seq.append(tree(lambda l, s, e=e: rng.normal(size=s) * scale * (
        1.0 if l is None else epoch_scale[e, names.index(l)])))
  return dict(names=tuple(names), labels=labels, spe=spe, epochs=epochs, params=params_seq,
              grads=grads_seq, losses=[dict(zip(names, map(np.float32, l))) for l in losses],
              scores=[dict(zip(names, map(np.float32, s))) for s in scores])


def finite(tree) -> bool:
  return all(np.isfinite(np.asarray(x, np.float32)).all() for x in jax.tree.leaves(tree)
             if jnp.issubdtype(x.dtype, jnp.floating))


def same(a, b) -> bool:
  return all(x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def run_inforeg(p, **kw):
  tx = inforeg_transform(p["labels"], steps_per_epoch=p["spe"], modalities=p["names"], **kw)
  state = tx.init(p["params"][0])
  outs, states = [], []
  for params, grads, losses, scores in zip(p["params"], p["grads"], p["losses"], p["scores"]):
    u, state = tx.update(grads, state, params, unimodal_losses=losses, unimodal_scores=scores)
    outs.append(u)
    states.append(state)
  return outs, states


# ---- InfoReg ------------------------------------------------------------------------------------


@FAST
@given(problems(), st.sampled_from([0, 1, 2, 3]), st.sampled_from(["prime", "whole", "other"]))
def test_inforeg_finite_warmup_and_anchor(p, warmup, window):
  outs, states = run_inforeg(p, warmup_epochs=warmup, window=window)
  spe = p["spe"]
  for step, (u, s) in enumerate(zip(outs, states)):
    assert finite(u) and finite(s), step
    assert jax.tree.structure(u) == jax.tree.structure(p["grads"][step])
    for x, g in zip(jax.tree.leaves(u), jax.tree.leaves(p["grads"][step])):
      assert x.dtype == g.dtype and x.shape == g.shape
    epoch = step // spe
    if epoch < warmup:  # nothing regulated, no window flag, during the warm-up
      assert same(u, p["grads"][step]), step
      assert not np.any(np.asarray(s.alpha)) and not np.any(np.asarray(s.in_window))
    if step % spe == 0:  # the anchor moves to the params at every epoch's first step
      assert same(s.epoch_anchor, p["params"][step])
      assert same(u, p["grads"][step])  # w - anchor = 0
    else:
      assert same(s.epoch_anchor, states[step - 1].epoch_anchor)
    assert int(s.window.count) == step + 1


@st.composite
def two_modality_problems(draw):
  return draw(problems(max_modalities=2))


@FAST
@given(two_modality_problems(), st.sampled_from([0, 2]))
def test_inforeg_official_variant_finite_and_warm(p, warmup):
  outs, states = run_inforeg(p, variant="official", warmup_epochs=warmup)
  for step, (u, s) in enumerate(zip(outs, states)):
    assert finite(u) and finite(s)
    if step // p["spe"] < warmup:
      assert same(u, p["grads"][step]) and not np.any(np.asarray(s.alpha))
    if step % p["spe"] == 0:
      assert same(s.epoch_anchor, p["params"][step]) and same(u, p["grads"][step])


@FAST
@given(problems(), st.sampled_from([0, 2]), st.sampled_from(["eq11", "bounded", "trend"]))
def test_inforeg_prime_and_other_partition_whole(p, warmup, criterion):
  kw = dict(warmup_epochs=warmup, criterion=criterion, max_window_epochs=1, threshold=0.02)
  regulated = {}
  for window in ("prime", "other", "whole"):
    outs, states = run_inforeg(p, window=window, **kw)
    regulated[window] = np.stack([np.asarray(s.alpha) > 0 for s in states])
    if window == "prime":
      flags = np.stack([np.asarray(s.in_window) for s in states])
      # regulated inside the window only, and only modalities that lead
      assert not np.any(regulated["prime"] & ~flags)
    if window != "whole":
      for step, (u, g) in enumerate(zip(outs, p["grads"])):
        if not regulated[window][step].any():
          assert same(u, g)
  prime, other, whole = regulated["prime"], regulated["other"], regulated["whole"]
  assert not np.any(prime & other)
  np.testing.assert_array_equal(prime | other, whole)
  assert not np.any(whole[:warmup * p["spe"]])


# ---- OGM-GE -------------------------------------------------------------------------------------


def run_ogm(p, modulate=None, **kw):
  tx = ogm_ge_transform(p["labels"], p["spe"], modalities=p["names"], **kw)
  state = tx.init(p["params"][0])
  outs, states = [], []
  for step, (grads, scores) in enumerate(zip(p["grads"], p["scores"])):
    extra = {} if modulate is None else {"modulate": jnp.asarray(modulate[step])}
    u, state = tx.update(grads, state, p["params"][step], unimodal_scores=scores, **extra)
    outs.append(u)
    states.append(state)
  return outs, states


@FAST
@given(problems(), st.sampled_from([0.0, 0.1, 0.8, 5.0]), st.booleans(),
       st.integers(0, 2), st.integers(1, 4), st.integers(0, 2**10))
def test_ogm_ge_finite_and_only_inside_its_epochs_and_gate(p, alpha, noise, start, length,
                                                            gate_seed):
  end = start + length - 1
  modulate = np.random.default_rng(gate_seed).random(len(p["grads"])) < 0.7
  outs, states = run_ogm(p, modulate, alpha=alpha, noise=noise, start_epoch=start,
                         end_epoch=end)
  flat = jax.tree.leaves(p["labels"], is_leaf=lambda x: x is None)
  for step, (u, s, g) in enumerate(zip(outs, states, p["grads"])):
    assert finite(u) and finite(s)
    coef = np.asarray(s.coefficient)
    assert ((coef >= 0) & (coef <= 1)).all() and (coef < 1).sum() <= 1
    epoch = step // p["spe"]
    on = modulate[step] and start <= epoch <= end
    if not on:
      assert same(u, g) and (coef == 1).all(), step
    for x, y, label in zip(jax.tree.leaves(u), jax.tree.leaves(g), flat):
      assert x.dtype == y.dtype
      if label is None or y.ndim < 2:  # only encoders' weight tensors
        assert same(x, y)
      elif not noise:
        assert same(x, y * jnp.asarray(coef[p["names"].index(label)], y.dtype))


@FAST
@given(problems(), st.integers(0, 2**10))
def test_ogm_ge_prime_and_other_partition_whole(p, flag_seed):
  flags = np.random.default_rng(flag_seed).random(len(p["grads"])) < 0.5
  modulated = {}
  for window in ("prime", "other", "whole"):
    gate = np.asarray(W.gate(jnp.asarray(flags), window))
    _, states = run_ogm(p, gate, alpha=0.5, noise=False)
    modulated[window] = np.stack([np.asarray(s.coefficient) < 1 for s in states])
  assert not np.any(modulated["prime"] & modulated["other"])
  np.testing.assert_array_equal(modulated["prime"] | modulated["other"], modulated["whole"])


# ---- track_window -------------------------------------------------------------------------------


@FAST
@given(problems(max_epochs=5), st.sampled_from([0.0, 0.04, 0.3]))
def test_track_window_traces_reset_and_gate_partition(p, threshold):
  tx = W.track_window(p["labels"], p["spe"], W.WindowRule(threshold), modalities=p["names"])
  state = tx.init(p["params"][0])
  flat = jax.tree.leaves(p["labels"], is_leaf=lambda x: x is None)
  sums, closed, spe = np.zeros(len(p["names"])), [], p["spe"]
  for step, grads in enumerate(p["grads"]):
    u, state = tx.update(grads, state, p["params"][step])
    assert same(u, grads) and finite(state)
    sq = np.array([sum(float(np.sum(np.square(np.asarray(g, np.float64))))
                       for g, l in zip(jax.tree.leaves(grads), flat) if l == n)
                   for n in p["names"]])
    if step % spe == 0 and step > 0:
      closed.append(sums / spe)
      sums = np.zeros_like(sums)
      # the sum restarts at the boundary: it holds this step's ||g||^2 alone
      np.testing.assert_allclose(state.grad_sq_sum, sq, rtol=1e-2)
    sums = sums + sq
    np.testing.assert_allclose(state.grad_sq_sum, sums, rtol=1e-2)
    if closed:
      n = min(len(closed), W.TRACE_HISTORY)
      np.testing.assert_allclose(state.trace_history[-n:], np.stack(closed[-n:]), rtol=1e-2)
    # the window gate splits the steps: prime and other disjoint, together the whole run
    flags = W.flags(W.roll(state, spe, threshold), W.WindowRule(threshold))
    prime, other, whole = (np.asarray(W.gate(flags, w)) for w in ("prime", "other", "whole"))
    assert not np.any(prime & other) and np.array_equal(prime | other, whole) and whole.all()
