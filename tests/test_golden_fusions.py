"""The fusion heads against the released fusion_modules.py (tests/golden/make_fusions.py,
GeWu-Lab/OGM-GE_CVPR2022 @ 343dc1d; the same modules in InfoReg's release)."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from inforeg_jax.models import ConcatHead, TwoModalityFusion

GOLDEN = json.load(open(os.path.join(os.path.dirname(__file__), "golden", "fusions.json")))
CASES = [c for c in GOLDEN["cases"] if c["inputs"].get("x_film", True)
         and c["inputs"].get("x_gate", True)]  # the modules as the releases build them


def dense(w, name):
  return {"kernel": jnp.array(w[f"{name}.weight"], jnp.float32).T,
          "bias": jnp.array(w[f"{name}.bias"], jnp.float32)}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_fusion_output_and_unimodal_logits(case):
  i, e = case["inputs"], case["expected"]
  feats = {"audio": jnp.array(i["x_audio"], jnp.float32),
           "visual": jnp.array(i["y_visual"], jnp.float32)}
  names = {n.split(".")[0] for n in i["weights"]}
  params = {n: dense(i["weights"], n) for n in names}
  if i["fusion"] == "concat":
    head = ConcatHead(i["output_dim"])
    params = params["fc_out"]
  else:
    head = TwoModalityFusion(i["output_dim"], i["fusion"])
  out, uni = head.apply({"params": params}, feats)
  np.testing.assert_allclose(out, e["output"], rtol=1e-5, atol=1e-6)
  if i["fusion"] in ("concat", "sum"):
    # the official training code's unimodal logits (OGM-GE main.py:82-93): concat's head
    # slices with bias / 2; sum's own layers, each with its own bias
    np.testing.assert_allclose(uni["audio"], e["ogm_ge_train_unimodal"]["out_a"], rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(uni["visual"], e["ogm_ge_train_unimodal"]["out_v"], rtol=1e-5,
                               atol=1e-6)
  else:
    # the official code has none here (its unimodal logits fail on these shapes); ours: the
    # fused output (checked above) with the other modality's features at their batch mean
    assert "error" in e["ogm_ge_train_unimodal"]
    mean = lambda v: jnp.broadcast_to(v.mean(0, keepdims=True), v.shape)
    audio_alone = head.apply({"params": params}, {**feats, "visual": mean(feats["visual"])})[0]
    visual_alone = head.apply({"params": params}, {**feats, "audio": mean(feats["audio"])})[0]
    np.testing.assert_allclose(uni["audio"], audio_alone, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(uni["visual"], visual_alone, rtol=1e-5, atol=1e-6)
