import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inforeg_jax import models
from inforeg_jax.labels import modality_labels


def resnet_net(fusion="concat", dtype=jnp.float32):
  trunk = functools.partial(models.ResNet18, width=4, dtype=dtype)
  return models.MultimodalNet(
      {"audio": functools.partial(models.SpectrogramEncoder, trunk=trunk),
       "visual": functools.partial(models.FramesEncoder, trunk=trunk)}, num_classes=6,
      fusion=fusion)


INPUTS = {"audio": jnp.ones((2, 33, 24)), "visual": jnp.ones((2, 3, 32, 32, 3))}


def test_resnet18_layout_and_init():
  net = resnet_net()
  variables = net.init(jax.random.key(0), INPUTS)
  params = variables["params"]
  assert set(params) == {"audio", "visual", "head"}
  trunk = params["audio"]["ResNet18_0"]
  blocks = [k for k in trunk if k.startswith("stage")]
  assert len(blocks) == 8  # BasicBlock [2, 2, 2, 2]
  assert trunk["conv_stem"]["kernel"].shape == (7, 7, 1, 4)  # one-channel spectrogram
  assert params["visual"]["ResNet18_0"]["conv_stem"]["kernel"].shape == (7, 7, 3, 4)
  assert params["head"]["kernel"].shape == (2 * 32, 6)  # concat of two 8*width features
  np.testing.assert_array_equal(params["head"]["bias"], 0)
  np.testing.assert_array_equal(trunk["bn_stem"]["scale"], 1)
  # kaiming-normal fan_out: std sqrt(2 / (k*k*out))
  std = np.std(np.asarray(trunk["stage3_block0"]["conv1"]["kernel"]))
  assert abs(std / np.sqrt(2 / (9 * 32)) - 1) < 0.1


def test_concat_unimodal_logits_are_head_slices():
  net = resnet_net()
  variables = net.init(jax.random.key(0), INPUTS)
  out = net.apply(variables, INPUTS)
  uni = out["unimodal_logits"]
  np.testing.assert_allclose(uni["audio"] + uni["visual"], out["logits"], rtol=1e-5, atol=1e-6)
  w, b = variables["params"]["head"]["kernel"], variables["params"]["head"]["bias"]
  np.testing.assert_allclose(uni["audio"], out["features"]["audio"] @ w[:32] + b / 2, rtol=1e-5)


def test_frames_share_one_trunk_and_average_over_time():
  net = resnet_net()
  variables = net.init(jax.random.key(0), INPUTS)
  frames = jax.random.normal(jax.random.key(1), (2, 3, 32, 32, 3))
  feats = net.apply(variables, {**INPUTS, "visual": frames})["features"]["visual"]
  swapped = net.apply(variables, {**INPUTS, "visual": frames[:, ::-1]})["features"]["visual"]
  np.testing.assert_allclose(feats, swapped, rtol=1e-5, atol=1e-6)  # order-free mean over time


@pytest.mark.parametrize("fusion", ["sum", "film", "gated"])
def test_other_fusions_zero_the_other_features(fusion):
  net = resnet_net(fusion)
  variables = net.init(jax.random.key(0), INPUTS)
  out = net.apply(variables, INPUTS)
  assert out["logits"].shape == (2, 6)
  assert set(out["unimodal_logits"]) == {"audio", "visual"}
  assert not np.allclose(out["unimodal_logits"]["audio"], out["logits"])


def test_bf16_compute_keeps_fp32_params():
  net = resnet_net(dtype=jnp.bfloat16)
  variables = net.init(jax.random.key(0), INPUTS)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables["params"]))
  out = net.apply(variables, INPUTS)
  assert np.isfinite(np.asarray(out["logits"], np.float32)).all()


def test_sequence_encoder_for_three_modalities():
  enc = functools.partial(models.SequenceEncoder, dim=16, depth=1, heads=2)
  net = models.MultimodalNet({"audio": enc, "text": enc, "visual": enc}, num_classes=2)
  x = {m: jnp.ones((2, 5, 7)) for m in ("audio", "text", "visual")}
  out = net.apply(net.init(jax.random.key(0), x), x)
  assert out["logits"].shape == (2, 2) and len(out["unimodal_logits"]) == 3


def test_modality_labels():
  params = {"audio": {"a": 1, "b": {"c": 2}}, "visual": {"a": 3}, "head": {"k": 4}}
  labels = modality_labels(params, ("audio", "visual"))
  assert labels == {"audio": {"a": "audio", "b": {"c": "audio"}}, "visual": {"a": "visual"},
                    "head": {"k": None}}
