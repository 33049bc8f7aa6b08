"""OGM-GE's rule (inforeg_jax/methods/ogm_ge.py) beyond the golden numbers: the tie rule, the
noise from the unscaled gradient, the epochs and the gate, the noise draws, the defaults and
the Method wiring. No model, no jit: seconds."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inforeg_jax import config, window
from inforeg_jax.hyper import hyper_of
from inforeg_jax.methods.base import Setup
from inforeg_jax.methods.ogm_ge import (OGMGE, OGMGEState, modulate_leaf, ogm_coefficients,
                                        ogm_ge_transform)


def damp(alpha, ratio):
  return 1 - math.tanh(alpha * ratio)


# ---- coefficients -------------------------------------------------------------------------------


def test_two_modalities_the_official_rule():
  # visual ahead (ratio_v = s_v / s_a > 1): visual damped, audio 1
  np.testing.assert_allclose(ogm_coefficients(jnp.array([2.0, 3.0]), 0.5),
                             [1.0, damp(0.5, 1.5)], rtol=1e-6)
  # audio ahead: audio damped with ratio_a = s_a / s_v
  np.testing.assert_allclose(ogm_coefficients(jnp.array([3.0, 2.0]), 0.5),
                             [damp(0.5, 1.5), 1.0], rtol=1e-6)
  # a tie damps audio (the official else-branch: ratio_v > 1 is false)
  np.testing.assert_allclose(ogm_coefficients(jnp.array([2.0, 2.0]), 0.5),
                             [damp(0.5, 1.0), 1.0], rtol=1e-6)
  # alpha 0: nothing changes
  np.testing.assert_allclose(ogm_coefficients(jnp.array([3.0, 1.0]), 0.0), [1.0, 1.0])


def test_three_modalities_ratio_against_the_mean_of_the_others():
  s = jnp.array([1.0, 4.0, 2.0])  # ratios 1/3, 4/1.5, 2/2.5
  np.testing.assert_allclose(ogm_coefficients(s, 0.3), [1.0, damp(0.3, 4 / 1.5), 1.0],
                             rtol=1e-6)
  s = jnp.array([1.0, 1.0, 1.0])  # all ratios 1: the first is damped
  np.testing.assert_allclose(ogm_coefficients(s, 0.3), [damp(0.3, 1.0), 1.0, 1.0], rtol=1e-6)
  s = jnp.array([0.5, 3.0, 3.0])  # a tie for the lead: the first of them
  np.testing.assert_allclose(ogm_coefficients(s, 0.3), [1.0, damp(0.3, 3 / 1.75), 1.0],
                             rtol=1e-6)


def test_zero_scores():
  np.testing.assert_allclose(ogm_coefficients(jnp.array([0.0, 0.0]), 0.5), [1.0, 1.0])
  # the other score 0: an infinite ratio damps to 0, without NaN
  np.testing.assert_allclose(ogm_coefficients(jnp.array([0.0, 2.0]), 0.5), [1.0, 0.0],
                             atol=1e-30)


def test_large_ratio_keeps_precision():
  coef = ogm_coefficients(jnp.array([1.0, 9.0]), 1.0)  # 1 - tanh(9) = 3.0e-8
  np.testing.assert_allclose(coef, [1.0, 1 - math.tanh(9.0)], rtol=1e-4)


# ---- modulate_leaf ------------------------------------------------------------------------------


def test_modulate_leaf_noise_from_the_unscaled_gradient():
  g = jnp.array([[1.0, 2.0], [3.0, 6.0]])
  z = jnp.array([[0.5, -1.0], [2.0, 0.0]])
  std = np.std(np.asarray(g), ddof=1) + 1e-8  # torch.std: unbiased, of g before scaling
  np.testing.assert_allclose(modulate_leaf(g, 0.25, z), np.asarray(g) * 0.25 + std * z,
                             rtol=1e-6)
  np.testing.assert_allclose(modulate_leaf(g, 0.25, None), np.asarray(g) * 0.25, rtol=1e-7)
  # a constant gradient: std 0, the noise is 1e-8 z
  zero = jnp.zeros((2, 3))
  z = jnp.arange(6.0).reshape(2, 3) - 2
  np.testing.assert_allclose(modulate_leaf(zero, 0.5, z), 1e-8 * np.asarray(z), rtol=1e-6)


def test_modulate_leaf_keeps_bf16():
  g = jnp.ones((2, 2), jnp.bfloat16) * 3
  out = modulate_leaf(g, 0.5, jnp.zeros((2, 2)))
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out, np.float32), 1.5)


# ---- the transformation -------------------------------------------------------------------------


LABELS = {"a": "audio", "ab": "audio", "v": "visual", "vb": "visual", "head": None}


def tree(scale=1.0):
  return {"a": jnp.arange(6.0).reshape(2, 3) * scale + 1, "ab": jnp.array([1.0, 2.0]) * scale,
          "v": jnp.arange(4.0).reshape(2, 2) * scale - 1, "vb": jnp.array([3.0]) * scale,
          "head": jnp.ones((2, 2)) * scale}


SCORES = {"audio": 3.0, "visual": 1.0}  # audio leads: ratio 3


def expected(g, state, coef, noise=True, active=True):
  """What the transformation must return: the weight tensors scaled (plus the noise drawn
  from fold_in(key, count), split per leaf), the rest untouched."""
  leaves, treedef = jax.tree.flatten(g)
  keys = jax.random.split(jax.random.fold_in(state.key, state.count), len(leaves))
  flat = [LABELS[k] for k in sorted(g)]
  out = []
  for x, label, k in zip(leaves, flat, keys):
    if label is None or x.ndim < 2 or not active:
      out.append(np.asarray(x))
      continue
    c = coef[("audio", "visual").index(label)]
    y = np.asarray(x) * c
    if noise:
      y = y + (np.std(np.asarray(x), ddof=1) + 1e-8) * np.asarray(jax.random.normal(k, x.shape))
    out.append(y)
  return jax.tree.unflatten(treedef, out)


def close(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)


def test_transform_scales_weights_adds_noise_and_keeps_the_rest():
  tx = ogm_ge_transform(LABELS, 2, alpha=0.5, seed=3)
  state = tx.init(tree())
  assert state.coefficient.shape == (2,) and state.count.dtype == jnp.int32
  coef = [damp(0.5, 3.0), 1.0]
  for step in range(3):
    g = tree(step + 1.0)
    out, new = tx.update(g, state, unimodal_scores=SCORES)
    close(out, expected(g, state, coef))
    np.testing.assert_allclose(new.coefficient, coef, rtol=1e-6)
    assert int(new.count) == step + 1
    np.testing.assert_array_equal(jax.random.key_data(new.key), jax.random.key_data(state.key))
    state = new
  # the same leaf values at two steps get different noise; two leaves with the same values too
  g = {"a": jnp.ones((2, 2)), "b": jnp.ones((2, 2)) * 2, "c": jnp.ones((2, 2))}
  labels = {"a": "audio", "b": "visual", "c": "audio"}
  g["a"] = g["c"] = jnp.array([[1.0, 2.0], [3.0, 4.0]])
  tx = ogm_ge_transform(labels, 1, alpha=0.5)
  s0 = tx.init(g)
  o0, s1 = tx.update(g, s0, unimodal_scores=SCORES)
  o1, _ = tx.update(g, s1, unimodal_scores=SCORES)
  assert not np.allclose(o0["a"], o0["c"]) and not np.allclose(o0["a"], o1["a"])
  o0_again, _ = tx.update(g, s0, unimodal_scores=SCORES)
  np.testing.assert_array_equal(o0["a"], o0_again["a"])  # a pure function of the state


def test_defaults():
  tx = ogm_ge_transform(LABELS, 1)
  state = tx.init(tree())
  out, new = tx.update(tree(), state, unimodal_scores=SCORES)  # modulate defaults to True
  coef = [damp(0.1, 3.0), 1.0]  # alpha 0.1
  np.testing.assert_allclose(new.coefficient, coef, rtol=1e-6)
  close(out, expected(tree(), state, coef, noise=True))  # noise on, seed 0
  np.testing.assert_array_equal(jax.random.key_data(state.key),
                                jax.random.key_data(jax.random.key(0)))
  # epochs 0 to 50 inclusive
  for epoch, on in [(0, True), (50, True), (51, False)]:
    s = state._replace(count=jnp.asarray(epoch, jnp.int32))
    _, new = tx.update(tree(), s, unimodal_scores=SCORES)
    assert (float(new.coefficient[0]) < 1) == on, epoch


@pytest.mark.parametrize("count, modulate, on", [
    (2, True, False), (3, True, False), (4, True, True), (7, True, True), (9, True, True),
    (10, True, False), (5, False, False), (0, False, False)])
def test_active_only_in_its_epochs_and_gate(count, modulate, on):
  # two steps an epoch, epochs 2..4 inclusive
  tx = ogm_ge_transform(LABELS, 2, alpha=0.5, start_epoch=2, end_epoch=4)
  state = tx.init(tree())._replace(count=jnp.asarray(count, jnp.int32))
  out, new = tx.update(tree(), state, unimodal_scores=SCORES, modulate=jnp.asarray(modulate))
  coef = [damp(0.5, 3.0), 1.0] if on else [1.0, 1.0]
  np.testing.assert_allclose(new.coefficient, coef, rtol=1e-6)
  close(out, expected(tree(), state, coef, active=on))


def test_modalities_order_and_errors():
  tx = ogm_ge_transform(LABELS, 1, alpha=0.5, noise=False, modalities=("visual", "audio"))
  out, new = tx.update(tree(), tx.init(tree()), unimodal_scores=SCORES)
  np.testing.assert_allclose(new.coefficient, [1.0, damp(0.5, 3.0)], rtol=1e-6)
  np.testing.assert_allclose(out["a"], tree()["a"] * damp(0.5, 3.0), rtol=1e-6)
  np.testing.assert_allclose(out["v"], tree()["v"])
  with pytest.raises(ValueError, match="unimodal_scores"):
    tx.update(tree(), tx.init(tree()))
  with pytest.raises(ValueError, match="alpha"):
    ogm_ge_transform(LABELS, 1, alpha=-0.1)
  with pytest.raises(ValueError, match="steps_per_epoch"):
    ogm_ge_transform(LABELS, 0)
  tx = ogm_ge_transform(LABELS, 1, alpha=0.0, noise=False)
  out, _ = tx.update(tree(), tx.init(tree()), unimodal_scores=SCORES, other=1)
  close(out, tree())


def test_jit_keeps_the_tree():
  tx = ogm_ge_transform(LABELS, 2, alpha=0.5)
  state = tx.init(tree())
  out, state = jax.jit(lambda g, s: tx.update(g, s, unimodal_scores=SCORES))(tree(), state)
  assert jax.tree.structure(out) == jax.tree.structure(tree())


# ---- the Method ---------------------------------------------------------------------------------


def test_method_transforms_and_metrics():
  cfg = config.make_config(method="ogm_ge", seed=5, **{
      "ogm_ge.alpha": 0.5, "ogm_ge.noise": False, "ogm_ge.start_epoch": 1,
      "ogm_ge.end_epoch": 2})
  m = OGMGE(cfg, Setup(("audio", "visual"), 3, steps_per_epoch=2, window="whole"))
  txs = m.transforms(LABELS, hyper_of(m.cfg))
  assert len(txs) == 2
  states = [t.init(tree()) for t in txs]
  assert isinstance(window.find_window(states), window.TraceWindow)
  ogm = window.find_one(states, OGMGEState)
  np.testing.assert_array_equal(jax.random.key_data(ogm.key),
                                jax.random.key_data(jax.random.key(5)))
  tx = txs[1]
  s = ogm._replace(count=jnp.asarray(2, jnp.int32))  # epoch 1
  out, s = tx.update(tree(), s, unimodal_scores=SCORES)
  np.testing.assert_allclose(out["a"], tree()["a"] * damp(0.5, 3.0), rtol=1e-6)
  _, late = tx.update(tree(), s._replace(count=jnp.asarray(6, jnp.int32)),
                      unimodal_scores=SCORES)
  np.testing.assert_allclose(late.coefficient, [1.0, 1.0])
  metrics = m.step_metrics([states[0], s], {})
  assert set(metrics) == {"coef_audio", "coef_visual"}
  np.testing.assert_allclose(metrics["coef_audio"], damp(0.5, 3.0), rtol=1e-6)
