"""MMPareto's rules beyond the official numbers of test_golden_mmpareto.py: the two-task
min-norm solution as a minimum, the cosine's edge cases, the step outside the window."""

import types

import jax
import jax.numpy as jnp
import numpy as np

from inforeg_jax.methods.base import Objective, Setup, StepContext
from inforeg_jax.methods.mmpareto import MMPareto, encoder_weights, min_norm_weights
from inforeg_jax.methods.options import MMParetoOptions


def test_min_norm_weights_minimise_the_norm_of_the_combination():
  rng = np.random.default_rng(0)
  for _ in range(20):
    g1, g2 = rng.normal(size=3), rng.normal(size=3)
    v11, v12, v22 = g1 @ g1, g1 @ g2, g2 @ g2
    k = np.asarray(min_norm_weights(jnp.float32(v11), jnp.float32(v12), jnp.float32(v22)))
    assert abs(k.sum() - 1) < 1e-6
    grid = np.linspace(0.001, 0.999, 9981)
    norms = np.linalg.norm(grid[:, None] * g1 + (1 - grid[:, None]) * g2, axis=1)
    assert abs(k[0] - grid[np.argmin(norms)]) < 2e-4, (v11, v12, v22)
  np.testing.assert_allclose(min_norm_weights(4.0, -1.0, 1.0), [2 / 7, 5 / 7], rtol=1e-6)
  np.testing.assert_allclose(min_norm_weights(2.0, 0.5, 1.0), [0.25, 0.75], rtol=1e-6)
  # equal norms: the minimum is the midpoint, whatever the angle (v12 below both norms)
  for v, v12 in ((1.0, -0.5), (2.0, 0.5), (1.0, -1.0), (3.0, 2.0)):
    np.testing.assert_allclose(min_norm_weights(v, v12, v), [0.5, 0.5], rtol=1e-6)


def test_encoder_weights_cosine_and_its_edges():
  small = [jnp.array([0.3, 0.4])]  # norm 0.5: a cosine below the unit scale still counts
  k, cos = encoder_weights(small, [jnp.array([0.4, 0.3])])
  assert float(cos) == np.float32(0.96) or abs(float(cos) - 0.96) < 1e-6
  np.testing.assert_array_equal(k, [0.5, 0.5])
  k, cos = encoder_weights(small, [jnp.array([-0.8, -0.1])])
  assert float(cos) < 0 and not np.allclose(k, [0.5, 0.5])
  k, cos = encoder_weights(small, [jnp.zeros(2)])
  assert float(cos) == 0.0


def fake_vjp(g0, g1):
  def vjp_fn(ct):
    assert ct.shape == (2,)  # one cotangent per term: fused, unimodal
    return (jax.tree.map(lambda a, b: ct[0] * a + ct[1] * b, g0, g1),)
  return vjp_fn


def test_gradients_inside_and_outside_the_window():
  method = MMPareto(types.SimpleNamespace(options=MMParetoOptions()),
                    Setup(modalities=("audio", "visual"), num_classes=2, steps_per_epoch=2,
                          window="whole"))
  g_mm = {"audio": jnp.array([1.0, 0.0]), "visual": jnp.array([0.0, 2.0])}
  g_uni = {"audio": jnp.array([-1.0, 0.5]), "visual": jnp.array([0.0, 1.0])}
  labels = ["audio", "visual"]
  obj = Objective(jnp.zeros(2), {}, {}, 0.0, {}, None)
  for active in (False, True):
    ctx = StepContext(step=jnp.int32(0), epoch=jnp.int32(0), active=jnp.asarray(active),
                      hyper=types.SimpleNamespace(method=method.options))
    grads, trace_grads, metrics = method.gradients(fake_vjp(g_mm, g_uni), obj, ctx, labels)
    jax.tree.map(np.testing.assert_array_equal, trace_grads, g_mm)  # Tr(F): the fused loss
    if not active:  # plain L_mm + sum L_m
      np.testing.assert_allclose(grads["audio"], [0.0, 0.5])
      np.testing.assert_allclose(grads["visual"], [0.0, 3.0])
    else:  # visual: cos > 0, (0.5, 0.5) and the 1.5 rescale of the sum
      np.testing.assert_allclose(grads["visual"], [0.0, 4.5], rtol=1e-6)
      assert float(metrics["cos_audio"]) < 0
      assert not np.allclose(grads["audio"], [0.0, 0.5])


def test_the_published_loss_and_heads():
  assert MMPareto.unimodal_weight == 1.0 and MMPareto.unimodal_heads  # L_mm + sum_m L_m
