"""MMPareto against numbers from a transcription of its official code (tests/golden/
make_mmpareto.py, GeWu-Lab/MMPareto_ICML2024 @ a339db3, code/MMPareto.py:88-210,
code/min_norm_solvers.py).

The golden's parameters (DataParallel names) become a pytree: ``module.audio_net.*`` under
"audio" (label audio), ``module.visual_net.*`` under "visual" (label visual), the three heads
(``head``, ``head_audio``, ``head_video``) under their own names (label None). ``g_mm`` is the
gradient of the multimodal loss ("both"), ``g_uni`` that of the sum of the unimodal losses (on
encoder m it is g_m). Covered on every case: the gradient handed to SGD (``final_grad``, heads
included), the per-encoder cosine, the weights k and their branch, the per-tensor rescale
(``diff`` > 1 or not, the 0/0 tensor), through ``mmpareto_combine`` and through
`MMPareto.gradients` (which also returns g_mm for Tr(F)).
"""

import functools
import json
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inforeg_jax.methods.base import Objective, Setup, StepContext
from inforeg_jax.methods.mmpareto import (MMPareto, combine_tensor, encoder_weights,
                                          mmpareto_combine)
from inforeg_jax.methods.options import MMParetoOptions

GOLDEN = json.load(open(os.path.join(os.path.dirname(__file__), "golden", "mmpareto.json")))
CASES = {c["name"]: c for c in GOLDEN["cases"]}
MODS = ("audio", "visual")
GAMMA = GOLDEN["source"]["gamma"]


def close(actual, expected, rtol=1e-5):
  expected = np.asarray(expected, np.float64)
  atol = rtol * max(1.0, float(np.max(np.abs(expected)))) if expected.size else 0.0
  np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol, atol=atol)


def place(name):
  """(group, label) of a golden parameter name."""
  parts = name.split(".")
  if parts[1] in ("audio_net", "visual_net"):
    m = parts[1][:-len("_net")]
    return m, m
  assert parts[1] in ("head", "head_audio", "head_video"), name
  return parts[1], None


def golden_grads(case, name):
  """(g_mm, g_uni) of one parameter in float64, zeros where a loss does not reach it."""
  i = case["inputs"]
  get = lambda loss: np.asarray(i["grads"][loss].get(name, np.zeros(i["shapes"][name])),
                                np.float64)
  return get("both"), get("audio") + get("visual")


def trees(case):
  """(g_mm, g_uni, labels) pytrees {group: {name: f32 array}} from a golden case."""
  g_mm, g_uni, labels = {}, {}, {}
  for name in case["inputs"]["param_names"]:
    group, label = place(name)
    a, b = golden_grads(case, name)
    g_mm.setdefault(group, {})[name] = jnp.asarray(a, jnp.float32)
    g_uni.setdefault(group, {})[name] = jnp.asarray(b, jnp.float32)
    labels.setdefault(group, {})[name] = label
  return g_mm, g_uni, labels


def flat_labels_of(labels, g_mm):
  # same structure as g_mm; dict leaves in the same (sorted-key) order
  return jax.tree.leaves(labels, is_leaf=lambda x: x is None or isinstance(x, str))


@functools.partial(jax.jit, static_argnums=(2,))
def combine(g_mm, g_uni, flat_labels):
  return mmpareto_combine(g_mm, g_uni, list(flat_labels), MODS, GAMMA)


def method():
  cfg = types.SimpleNamespace(options=MMParetoOptions())
  return MMPareto(cfg, Setup(modalities=MODS, num_classes=3, steps_per_epoch=1, window="whole"))


@functools.partial(jax.jit, static_argnums=(2,))
def through_method(g_mm, g_uni, flat_labels):
  """`MMPareto.gradients` on a vjp of the terms (L_mm, sum_m L_m) whose gradients are the
  golden's."""
  def vjp_fn(ct):
    return (jax.tree.map(lambda a, b: ct[0] * a + ct[1] * b, g_mm, g_uni),)

  m = method()
  ctx = StepContext(step=jnp.zeros([], jnp.int32), epoch=jnp.zeros([], jnp.int32),
                    active=jnp.asarray(True), hyper=types.SimpleNamespace(method=m.options))
  obj = Objective(jnp.zeros([2]), {}, {}, 0.0, {}, None)
  return tuple(m.gradients(vjp_fn, obj, ctx, list(flat_labels)))


def test_gamma_default_is_the_official():
  assert MMParetoOptions().gamma == GAMMA == 1.5


@pytest.mark.parametrize("name", list(CASES))
def test_final_gradient(name):
  c = CASES[name]
  e = c["expected"]
  g_mm, g_uni, labels = trees(c)
  flat = tuple(flat_labels_of(labels, g_mm))
  assert len(flat) == len(jax.tree.leaves(g_mm))
  out, cos = combine(g_mm, g_uni, flat)
  grads, fisher, metrics = through_method(g_mm, g_uni, flat)
  for name_ in c["inputs"]["param_names"]:
    group, _ = place(name_)
    close(out[group][name_], e["final_grad"][name_])
    close(grads[group][name_], e["final_grad"][name_])
    np.testing.assert_array_equal(fisher[group][name_], g_mm[group][name_])
  for k, m in enumerate(MODS):
    np.testing.assert_allclose(cos[k], e["cos"][m], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics[f"cos_{m}"], e["cos"][m], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(CASES))
def test_weights_and_per_tensor_rescale(name):
  """k (0.5/0.5 when cos > 0, else the two-task min-norm weights, the 0.999 / 0.001 edges),
  and per tensor gamma * max(1, ||g_mm + g_m|| / ||new||) * new."""
  c = CASES[name]
  e = c["expected"]
  g_mm, g_uni, _ = trees(c)
  for m in MODS:
    names = [n for n in c["inputs"]["param_names"] if place(n)[1] == m]
    k, cos = encoder_weights([g_mm[m][n] for n in names], [g_uni[m][n] for n in names])
    close(k, e["k"][m])
    assert (e["branch"][m] == "equal") == (float(cos) > 0)
    for n in names:
      a, b = golden_grads(c, n)
      new = 2 * (e["k"][m][0] * a + e["k"][m][1] * b)
      diff = e["diff"][n]
      if diff is None:  # 0/0: the tensor is zero in both and stays 0
        assert not a.any() and not b.any()
        np.testing.assert_array_equal(combine_tensor(g_mm[m][n], g_uni[m][n], k, GAMMA), 0.0)
        continue
      assert e["rescaled"][n] == (diff > 1)
      want = GAMMA * max(1.0, diff) * new
      close(want, e["final_grad"][n], rtol=1e-10)  # the golden's own bookkeeping
      close(combine_tensor(g_mm[m][n], g_uni[m][n], k, GAMMA), e["final_grad"][n])
