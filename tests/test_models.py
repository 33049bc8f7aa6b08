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


RANDOM = {"audio": jax.random.normal(jax.random.key(2), (4, 33, 24)),
          "visual": jax.random.normal(jax.random.key(3), (4, 3, 32, 32, 3))}


@pytest.mark.parametrize("fusion", ["concat", "sum", "film", "gated"])
def test_each_fusions_unimodal_logits_depend_on_their_modality(fusion):
  """At initialisation already, each modality's unimodal logits differ across samples and
  follow that modality's input (zeroing the other modality's features instead left FiLM's
  visual and gated's audio logits one constant for every sample)."""
  net = resnet_net(fusion)
  variables = net.init(jax.random.key(0), RANDOM)
  out = net.apply(variables, RANDOM)
  assert out["logits"].shape == (4, 6)
  for m in ("audio", "visual"):
    uni = np.asarray(out["unimodal_logits"][m])
    assert uni.std(axis=0).min() > 1e-4, (fusion, m)  # varies over the samples
    moved = {**RANDOM, m: RANDOM[m].at[0].multiply(-1.0)}
    again = np.asarray(net.apply(variables, moved)["unimodal_logits"][m])
    assert not np.allclose(again[0], uni[0], atol=1e-6), (fusion, m)  # follows sample 0's own


@pytest.mark.parametrize("fusion", ["sum", "film", "gated"])
def test_unimodal_logits_definitions(fusion):
  """sum: each modality's own layer with its own bias (OGM-GE main.py:83-86); film, gated:
  the fused output with the other modality's features at their batch mean."""
  x = jax.random.normal(jax.random.key(4), (5, 8))
  y = jax.random.normal(jax.random.key(5), (5, 8))
  head = models.TwoModalityFusion(3, fusion)
  params = head.init(jax.random.key(6), {"audio": x, "visual": y})
  params = jax.tree.map(lambda p: p + 0.1, params)  # nonzero biases
  fused, uni = head.apply(params, {"audio": x, "visual": y})
  p = params["params"]
  dense = lambda name, v: v @ p[name]["kernel"] + p[name]["bias"]
  mean = lambda v: jnp.broadcast_to(v.mean(0, keepdims=True), v.shape)
  if fusion == "sum":
    want = {"audio": dense("fc_x", x), "visual": dense("fc_y", y)}
  elif fusion == "film":
    def fuse(a, v):
      gamma, beta = jnp.split(dense("fc", a), 2, axis=-1)
      return dense("fc_out", gamma * v + beta)
    want = {"audio": fuse(x, mean(y)), "visual": fuse(mean(x), y)}
  else:
    fuse = lambda a, v: dense("fc_out", jax.nn.sigmoid(dense("fc_x", a)) * dense("fc_y", v))
    want = {"audio": fuse(x, mean(y)), "visual": fuse(mean(x), y)}
  for m in want:
    np.testing.assert_allclose(uni[m], want[m], rtol=1e-5, atol=1e-6)
  if fusion == "sum":
    np.testing.assert_allclose(uni["audio"] + uni["visual"], fused, rtol=1e-5, atol=1e-6)


def test_concat_bias_is_split_evenly():
  feats = {"a": jnp.ones((2, 3)), "b": jnp.ones((2, 2)), "c": jnp.ones((2, 1))}
  head = models.ConcatHead(4)
  params = head.init(jax.random.key(0), feats)
  params = {"params": {"kernel": jnp.zeros((6, 4)), "bias": jnp.array([3.0, 6.0, 9.0, 0.0])}}
  fused, uni = head.apply(params, feats)
  for m in feats:
    np.testing.assert_allclose(uni[m], jnp.broadcast_to(jnp.array([1.0, 2.0, 3.0, 0.0]), (2, 4)))
  np.testing.assert_allclose(fused, sum(uni.values()))


def test_a_samples_features_do_not_depend_on_its_batch():
  """Evaluation mode: a sample's features in a batch equal its features alone (frames are
  folded into the batch and back per sample, never across samples)."""
  net = resnet_net()
  variables = net.init(jax.random.key(0), RANDOM)
  batch = net.apply(variables, RANDOM)["features"]
  for i in range(4):
    alone = net.apply(variables, jax.tree.map(lambda v: v[i:i + 1], RANDOM))["features"]
    for m in ("audio", "visual"):
      np.testing.assert_allclose(batch[m][i], alone[m][0], rtol=1e-4, atol=1e-5)


def test_batch_norm_running_statistics_move_by_a_tenth():
  """Flax's momentum 0.9 keeps 90% of the running mean per training step (PyTorch's
  momentum 0.1 written in Flax's convention): the released code's statistics speed."""
  trunk = functools.partial(models.SmallCNN, widths=(3,))
  x = 5.0 + jax.random.normal(jax.random.key(1), (8, 6, 6, 1))
  model = trunk()
  variables = model.init(jax.random.key(0), x, train=False)
  _, new = model.apply(variables, x, train=True, mutable=["batch_stats"])
  conv = jax.lax.conv_general_dilated(x, variables["params"]["conv0"]["kernel"], (1, 1),
                                      ((1, 1), (1, 1)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  batch_mean = conv.mean((0, 1, 2))
  np.testing.assert_allclose(new["batch_stats"]["bn0"]["mean"], 0.1 * batch_mean, rtol=1e-4,
                             atol=1e-6)


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
