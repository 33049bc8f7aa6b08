"""Each baseline's rule against a hand-computed case."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inforeg_jax import balancing

LABELS = {"audio": {"k": "audio", "b": "audio"}, "visual": {"k": "visual"}, "head": {"k": None}}


def params():
  return {"audio": {"k": jnp.full((2, 2), 2.0), "b": jnp.ones((2,))},
          "visual": {"k": jnp.ones((3, 2))}, "head": {"k": jnp.ones((2, 2))}}


def test_ogm_coefficients_two_modalities():
  # audio leads: ratio_v = 4/8 = 0.5, ratio_a = 2 -> coeff_a = 1 - tanh(0.1 * 2), coeff_v = 1
  coef = balancing.ogm_coefficients(jnp.array([8.0, 4.0]), 0.1)
  np.testing.assert_allclose(coef, [1 - math.tanh(0.2), 1.0], rtol=1e-6)


def test_ogm_ge_scales_only_weight_gradients_of_the_leader():
  p = params()
  tx = balancing.ogm_ge_transform(LABELS, steps_per_epoch=10, alpha=0.1, noise=False)
  grads = jax.tree.map(jnp.ones_like, p)
  out, state = tx.update(grads, tx.init(p), p,
                         unimodal_scores={"audio": jnp.float32(8), "visual": jnp.float32(4)})
  c = 1 - math.tanh(0.2)
  np.testing.assert_allclose(out["audio"]["k"], c)  # rank-2 kernel: scaled
  np.testing.assert_allclose(out["audio"]["b"], 1.0)  # bias: untouched, as the official code
  np.testing.assert_allclose(out["visual"]["k"], 1.0)
  np.testing.assert_allclose(out["head"]["k"], 1.0)
  off, _ = tx.update(grads, state, p, unimodal_scores={"audio": 8.0, "visual": 4.0},
                     modulate=False)
  np.testing.assert_allclose(off["audio"]["k"], 1.0)  # gated off (Table 4)


def test_ogm_ge_noise_has_the_gradient_std():
  p = {"audio": {"k": jnp.zeros((200, 100))}, "visual": {"k": jnp.zeros((2, 2))}}
  labels = {"audio": {"k": "audio"}, "visual": {"k": "visual"}}
  g = {"audio": {"k": jax.random.normal(jax.random.key(0), (200, 100)) * 3.0},
       "visual": {"k": jnp.ones((2, 2))}}
  tx = balancing.ogm_ge_transform(labels, steps_per_epoch=1, alpha=0.0, noise=True)
  out, _ = tx.update(g, tx.init(p), p, unimodal_scores={"audio": 2.0, "visual": 1.0})
  # alpha = 0: coefficient 1, so the difference is the noise alone, std ~ std(g) = 3
  assert abs(float(jnp.std(out["audio"]["k"] - g["audio"]["k"])) - 3.0) < 0.1


def test_greedy_freezes_the_faster_modality():
  p = params()
  tx = balancing.greedy_transform(LABELS, threshold=0.1)
  grads = {"audio": {"k": jnp.full((2, 2), 4.0), "b": jnp.full((2,), 4.0)},
           "visual": {"k": jnp.full((3, 2), 0.1)}, "head": {"k": jnp.ones((2, 2))}}
  out, state = tx.update(grads, tx.init(p), p)
  # speeds: audio 16*6 / (4*4 + 2) = 5.33, visual 0.01*6/6 = 0.01 -> audio frozen
  np.testing.assert_allclose(state.speed, [96 / 18, 0.01], rtol=1e-5)
  np.testing.assert_array_equal(state.frozen, [True, False])
  np.testing.assert_allclose(out["audio"]["k"], 0.0)
  np.testing.assert_allclose(out["visual"]["k"], 0.1)
  np.testing.assert_allclose(out["head"]["k"], 1.0)


def test_agm_responses_and_coefficients():
  fused = jnp.array([[3.0, 1.0]])
  uni = {"audio": jnp.array([[2.0, 0.0]]), "visual": jnp.array([[0.5, 1.5]])}
  r = balancing.agm_responses(fused, uni)
  np.testing.assert_allclose(r["audio"], [[(3 - 0.5 + 2) / 2, (1 - 1.5 + 0) / 2]])
  np.testing.assert_allclose(r["audio"] + r["visual"], fused)
  coef = balancing.agm_coefficients(jnp.array([0.6, 0.2]), 1.0)  # ratios 1.5, 0.5
  np.testing.assert_allclose(coef, [math.exp(-0.5), math.exp(0.5)], rtol=1e-6)
  # the value is unchanged, the gradient through each response scaled by its coefficient
  g = jax.grad(lambda x: jnp.sum(balancing.agm_logits({"a": x, "v": 2 * x}, coef)))(1.0)
  np.testing.assert_allclose(g, coef[0] + 2 * coef[1], rtol=1e-6)
  np.testing.assert_allclose(balancing.agm_logits({"a": 1.0, "v": 2.0}, coef), 3.0)


def test_pmr_prototypes_and_loss():
  protos = balancing.prototypes_init(2, [2])
  feats = [jnp.array([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])]
  labels = jnp.array([0, 0, 1])
  protos = balancing.update_prototypes(protos, feats, labels, 2, jnp.asarray(False))
  assert not bool(protos.ready)
  protos = balancing.update_prototypes(protos, feats, labels, 2, jnp.asarray(True))
  assert bool(protos.ready)
  np.testing.assert_allclose(protos.centroids[0], [[2.0, 0.0], [0.0, 2.0]])
  # two modalities: the one whose prototype probability is lower gets the positive weight
  good = jnp.array([[2.0, 0.0], [0.0, 2.0]])
  bad = jnp.array([[1.0, 1.0], [1.0, 1.0]])
  loss, w = balancing.pmr_loss([good, bad], [protos.centroids[0]] * 2, jnp.array([0, 1]), 1.0)
  s_good = 2 * (1 / (1 + math.exp(-8)))  # true-class probabilities from -||f - p||^2
  s_bad = 1.0
  np.testing.assert_allclose(w, [0.0, math.tanh(s_good / s_bad - 1)], rtol=1e-5)
  assert float(loss) > 0


def test_mmpareto_conflict_uses_min_norm_and_rescales():
  g_multi = {"audio": {"k": jnp.array([1.0, 0.0])}, "head": {"k": jnp.array([1.0])}}
  g_uni = {"audio": {"k": jnp.array([-1.0, 1.0])}, "head": {"k": jnp.array([2.0])}}
  out, cos = balancing.mmpareto_combine(g_multi, g_uni, ["audio", None], ["audio"])
  np.testing.assert_allclose(cos, [-1 / math.sqrt(2)], rtol=1e-6)
  # min-norm of gamma [1,0] + (1-gamma) [-1,1]: gamma = 0.6 -> [0.2, 0.4], rescaled to |[0,1]|=1
  v = np.array([0.2, 0.4])
  np.testing.assert_allclose(out["audio"]["k"], v / np.linalg.norm(v), rtol=1e-5)
  np.testing.assert_allclose(out["head"]["k"], [3.0])  # shared: the plain sum
  agree, cos2 = balancing.mmpareto_combine(g_multi, {"audio": {"k": jnp.array([1.0, 1.0])},
                                                     "head": {"k": jnp.array([0.0])}},
                                           ["audio", None], ["audio"])
  assert float(cos2[0]) > 0
  np.testing.assert_allclose(agree["audio"]["k"], [2.0, 1.0], rtol=1e-5)  # average, rescaled


def test_gblending_weights():
  # head 0 generalises (dG 0.2) with little overfitting (dO 0.1): 0.2 / 0.01 = 20;
  # head 1 dG 0.1, dO 0.2: 2.5; head 2 got worse on the holdout: 0
  w = balancing.gblending_weights([1.0, 1.0, 1.0], [1.2, 1.3, 1.6], [1.3, 1.3, 1.0],
                                  [1.4, 1.4, 1.5])
  np.testing.assert_allclose(w, np.array([20.0, 2.5, 0.0]) / 22.5, rtol=1e-6)
  np.testing.assert_allclose(balancing.gblending_weights([1, 1], [2, 2], [1, 1], [1, 1]), [0.5, 0.5])


@pytest.mark.parametrize("window, in_window, expected", [
    ("whole", False, True), ("prime", True, True), ("prime", False, False),
    ("other", True, False), ("other", False, True)])
def test_window_gate(window, in_window, expected):
  assert bool(balancing.gate(jnp.asarray(in_window), window)) == expected


def test_window_tracker_opens_on_rising_traces():
  t = balancing.window_init(2)
  flags = []
  for epoch, scale in enumerate([1.0, 1.0, 2.0, 2.0]):
    for _ in range(2):  # two steps an epoch
      t, flag = balancing.window_now(t, 2, 0.04)
      t = balancing.window_add(t, jnp.array([scale, 1.0]))
      flags.append(bool(flag))
  np.testing.assert_allclose(t.trace_history[-1], [2.0, 1.0])
  assert flags[6] and not flags[4]  # epoch 3 sees audio's trace rise 1 -> 2; epoch 2 does not
