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


def test_coefficients_are_one_outside_the_window():
  mods = ("audio", "visual")
  method = AGM(types.SimpleNamespace(options=AGMOptions(alpha=2.0)),
               Setup(modalities=mods, num_classes=3, steps_per_epoch=2, window="prime",
                     threshold=0.04))
  model = models.MultimodalNet({m: Enc for m in mods}, num_classes=3)
  rng = np.random.default_rng(0)
  batch = {"inputs": {m: jnp.asarray(rng.normal(size=(4, 2)), jnp.float32) for m in mods},
           "label": jnp.array([0, 1, 2, 1])}
  variables = model.init(jax.random.key(0), batch["inputs"], train=False)
  fwd = make_forward(model, variables.get("batch_stats", {}), jax.random.key(1))
  state = {"running_scores": jnp.array([0.4, 2.0])}  # far from this batch's: coefs != 1

  def coefs(active):
    ctx = StepContext(step=jnp.int32(5), epoch=jnp.int32(2), active=jnp.asarray(active))
    _, aux = method.objective(fwd, variables["params"], state, batch, ctx)
    return np.array([aux["metrics"]["coef_audio"], aux["metrics"]["coef_visual"]])

  inside = coefs(True)
  assert np.all(np.abs(inside - 1.0) > 1e-3)
  np.testing.assert_array_equal(coefs(False), [1.0, 1.0])
