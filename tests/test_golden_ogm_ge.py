"""OGM-GE against numbers from a transcription of its official code (tests/golden/
make_ogm_ge.py, GeWu-Lab/OGM-GE_CVPR2022 @ 343dc1d main.py)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inforeg_jax.methods.ogm_ge import modulate_leaf, ogm_coefficients, ogm_ge_transform
from inforeg_jax.models import ConcatHead

GOLDEN = json.load(open(os.path.join(os.path.dirname(__file__), "golden", "ogm_ge.json")))
CASES = {c["name"]: c for c in GOLDEN["cases"]}


def label_of(name):
  layer = name.split(".")[1]
  return "audio" if "audio" in layer else "visual" if "visual" in layer else None


@pytest.mark.parametrize("name", [n for n in CASES if n.startswith("coefficients_")])
def test_coefficients(name):
  c = CASES[name]
  i, e = c["inputs"], c["expected"]
  coef = ogm_coefficients(jnp.array([i["score_a"], i["score_v"]], jnp.float32), i["alpha"])
  # atol: the official 1 - tanh(19.2) rounds to 0 in float64; ours is 4e-17
  np.testing.assert_allclose(coef, [e["coeff_a"], e["coeff_v"]], rtol=1e-5, atol=1e-12)


def test_concat_unimodal_logits_scores_and_coefficients():
  c = CASES["concat_logits_scores_coefficients_alpha_0.8"]
  i, e = c["inputs"], c["expected"]
  feats = {"audio": jnp.array(i["a"], jnp.float32), "visual": jnp.array(i["v"], jnp.float32)}
  params = {"kernel": jnp.array(i["weights"]["fc_out.weight"], jnp.float32).T,
            "bias": jnp.array(i["weights"]["fc_out.bias"], jnp.float32)}
  out, uni = ConcatHead(3).apply({"params": params}, feats)
  np.testing.assert_allclose(out, e["out"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(uni["audio"], e["out_a"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(uni["visual"], e["out_v"], rtol=1e-5, atol=1e-6)
  y = jnp.array(i["label"])
  score = lambda z: float(jnp.take_along_axis(jax.nn.softmax(z), y[:, None], 1).sum())
  np.testing.assert_allclose([score(uni["audio"]), score(uni["visual"])],
                             [e["score_a"], e["score_v"]], rtol=1e-5)
  np.testing.assert_allclose(
      ogm_coefficients(jnp.array([e["score_a"], e["score_v"]]), i["alpha"]),
      [e["coeff_a"], e["coeff_v"]], rtol=1e-5)


GRAD_CASES = [n for n in CASES if n.startswith(("ogm_ge_", "ogm_only_"))]


@pytest.mark.parametrize("name", GRAD_CASES)
def test_modulated_gradients_with_the_official_noise(name):
  """Each weight gradient becomes g * coeff + (std(g) + 1e-8) * z, with z the golden's
  standard normal draw; biases, batch norm and the head are untouched."""
  c = CASES[name]
  i, e = c["inputs"], c["expected"]
  coef = {"audio": e["coeff_a"], "visual": e["coeff_v"]}
  for pname, g in i["grads"].items():
    g = jnp.array(g, jnp.float32)
    label = label_of(pname)
    if label is None or g.ndim < 2 or not e["active"]:
      got = g  # untouched
    else:
      z = jnp.array(i["standard_normal_z"][pname], jnp.float32) if i["modulation"] == "OGM_GE" \
          else None
      got = modulate_leaf(g, coef[label], z)
    np.testing.assert_allclose(got, e["grads"][pname], rtol=2e-5, atol=1e-9, err_msg=pname)


@pytest.mark.parametrize("name", GRAD_CASES)
def test_transform_scales_the_selected_tensors_in_its_window(name):
  """The transformation itself (noise off: its draws are JAX's): which tensors are scaled,
  by which coefficient, and in which epochs (start <= epoch <= end, inclusive)."""
  c = CASES[name]
  i, e = c["inputs"], c["expected"]
  names = list(i["grads"])
  grads = {n.replace(".", "/"): jnp.array(i["grads"][n], jnp.float32) for n in names}
  labels = {n.replace(".", "/"): label_of(n) for n in names}
  spe = 2
  tx = ogm_ge_transform(labels, spe, alpha=i["alpha"], noise=False,
                        start_epoch=i["modulation_starts"], end_epoch=i["modulation_ends"],
                        modalities=("audio", "visual"))
  state = tx.init(grads)._replace(count=jnp.asarray(i["epoch"] * spe, jnp.int32))
  out, state = tx.update(grads, state, grads,
                         unimodal_scores={"audio": i["score_a"], "visual": i["score_v"]})
  coef = {"audio": e["coeff_a"], "visual": e["coeff_v"]}
  for n in names:
    g, label = grads[n.replace(".", "/")], label_of(n)
    scale = coef[label] if (e["active"] and label and g.ndim >= 2) else 1.0
    np.testing.assert_allclose(out[n.replace(".", "/")], g * scale, rtol=1e-5, err_msg=n)


def test_window_is_inclusive():
  c = CASES["modulation_window_defaults"]
  i = c["inputs"]
  labels = {"a": "audio", "v": "visual"}
  params = {"a": jnp.ones((2, 2)), "v": jnp.ones((2, 2))}
  tx = ogm_ge_transform(labels, 1, alpha=0.8, noise=False, start_epoch=i["modulation_starts"],
                        end_epoch=i["modulation_ends"])
  active = []
  for epoch in i["epochs"]:
    state = tx.init(params)._replace(count=jnp.asarray(epoch, jnp.int32))
    out, _ = tx.update(params, state, params, unimodal_scores={"audio": 2.0, "visual": 1.0})
    active.append(bool(out["a"][0, 0] < 1.0))
  assert active == c["expected"]["active"]


def test_parameter_selection_matches_on_conv_encoders():
  """Rank >= 2 encoder leaves: on conv encoders the official rank-4 selection (the last,
  un-wrapped name is an official quirk that selects nothing; not ours to copy)."""
  c = CASES["parameter_selection"]
  for name, rank in c["inputs"]["names_and_ranks"].items():
    if not name.startswith("module."):
      continue
    label = label_of(name)
    ours = label if (label is not None and rank >= 2) else None
    assert ours == c["expected"]["modulated"][name], name
