"""AGM's rules at their edges (the official numbers are in test_golden_agm.py): the clip's
strict threshold over every head weight, and coefficients of 1 outside the window."""

import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from inforeg_jax import models
from inforeg_jax.methods.agm import AGM, conditional_clip
from inforeg_jax.methods.base import Setup, StepContext
from inforeg_jax.methods.options import AGMOptions
from inforeg_jax.train import make_forward

clip = jax.jit(lambda g: conditional_clip(g, g["head"]))


def test_an_entry_of_exactly_the_threshold_is_not_clipped():
  grads = {"enc": jnp.full([2, 2], 3.0), "head": {"kernel": jnp.array([[1.0, -0.5]])}}
  out, big = clip(grads)
  assert not bool(big)
  np.testing.assert_array_equal(out["enc"], grads["enc"])


def test_the_largest_entry_over_every_head_weight_decides():
  grads = {"enc": jnp.full([2, 2], 3.0),
           "head": {"a": {"kernel": jnp.full([2, 2], 0.25)},
                    "b": {"kernel": jnp.array([[0.5, -2.0]])}}}
  out, big = clip(grads)
  assert bool(big)
  norm = float(np.sqrt(4 * 9 + 4 * 0.0625 + 0.25 + 4))
  np.testing.assert_allclose(out["enc"], 3.0 / (norm + 1e-6), rtol=1e-6)


class Enc(nn.Module):

  @nn.compact
  def __call__(self, x, train: bool):
    return nn.Dense(3)(x)


def agm(**options):
  mods = ("audio", "visual")
  return AGM(types.SimpleNamespace(options=AGMOptions(**{"alpha": 2.0, **options})),
             Setup(modalities=mods, num_classes=3, steps_per_epoch=2, window="prime"))


def agm_objective(method, active, epoch=2, last=(1.0, 1.0)):
  mods = ("audio", "visual")
  model = models.MultimodalNet({m: Enc for m in mods}, num_classes=3)
  rng = np.random.default_rng(0)
  batch = {"inputs": {m: jnp.asarray(rng.normal(size=(4, 2)), jnp.float32) for m in mods},
           "label": jnp.array([0, 1, 2, 1])}
  variables = model.init(jax.random.key(0), batch["inputs"], train=False)
  fwd = make_forward(model, variables.get("batch_stats", {}), jax.random.key(1))
  state = {"running_scores": jnp.array([0.4, 2.0]),  # far from this batch's: coefs != 1
           "last_coefs": jnp.asarray(last, jnp.float32)}
  ctx = StepContext(step=jnp.int32(2 * epoch + 1), epoch=jnp.int32(epoch),
                    active=jnp.asarray(active), hyper=types.SimpleNamespace(method=method.options))
  obj = method.objective(fwd, variables["params"], state, batch, ctx)
  coefs = np.array([obj.metrics["coef_audio"], obj.metrics["coef_visual"]])
  after = method.after_step(state, obj, None, ctx)
  return coefs, np.asarray(after["last_coefs"]), np.asarray(after["running_scores"])


def test_coefficients_are_one_outside_the_table4_gate():
  inside, _, _ = agm_objective(agm(), True)
  assert np.all(np.abs(inside - 1.0) > 1e-3)
  outside, last, _ = agm_objective(agm(), False)
  np.testing.assert_array_equal(outside, [1.0, 1.0])
  np.testing.assert_allclose(last, inside, rtol=1e-6)  # the hooks' scale is still set


def test_the_official_window_keeps_the_last_coefficient():
  """utils/config.py's --modulation_starts/--modulation_ends: before the window the hooks'
  scale is 1, inside it this step's coefficient, after it the last one set stays."""
  inside, last, running = agm_objective(agm(start_epoch=1, end_epoch=3), True, epoch=2)
  np.testing.assert_allclose(last, inside, rtol=1e-6)
  before, last_before, running_before = agm_objective(agm(start_epoch=3, end_epoch=5), True,
                                                      epoch=2)
  np.testing.assert_array_equal(before, [1.0, 1.0]) and np.testing.assert_array_equal(
      last_before, [1.0, 1.0])
  after, last_after, running_after = agm_objective(agm(start_epoch=0, end_epoch=1), True,
                                                   epoch=2, last=(0.25, 4.0))
  np.testing.assert_allclose(after, [0.25, 4.0])
  np.testing.assert_allclose(last_after, [0.25, 4.0])
  # the running means move at every step, inside the window or not (CREMAD_main.py:154-155)
  np.testing.assert_allclose(running_before, running)
  np.testing.assert_allclose(running_after, running)


def test_clamp_option_and_three_modality_clipping():
  assert agm().clamp == 10.0 and agm(clamp=False).clamp == float("inf")
  assert agm().clip == 1.0
  three = AGM(types.SimpleNamespace(options=AGMOptions()),
              Setup(modalities=("a", "b", "c"), num_classes=3, steps_per_epoch=2,
                    window="whole"))
  assert three.clamp == 7.0 and three.clip == 5.0  # URFunny_main.py:128-130, 203-207
  grads = {"head": {"kernel": jnp.full((2, 2), 3.0)}, "enc": jnp.full((4,), 3.0)}
  out, big = conditional_clip(grads, grads["head"], three.clip, three.clip)
  assert not bool(big)  # 3 is inside [-5, 5]: nothing clipped
  np.testing.assert_array_equal(out["enc"], grads["enc"])
