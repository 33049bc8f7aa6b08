"""Flax encoders and fusion heads; pure functions through ``model.apply``.

``MultimodalNet`` keeps each modality's encoder a top-level submodule named after the
modality (``params['audio']``, ``params['visual']``, ...) and the fusion in
``params['head']``, so that labelling parameters by modality is one line
(`modality_labels`). It returns the fused logits, each modality's unimodal logits
(METHOD.md: head slices plus bias / M for concat; the other modalities' features zeroed
for the other fusions) and the features.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# Released-code initialisation: conv kaiming-normal (fan_out), linear xavier-normal, zero bias.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
dense_init = nn.initializers.xavier_normal()

Fusion = Literal["concat", "sum", "film", "gated"]


class BasicBlock(nn.Module):
  features: int
  strides: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    conv = lambda f, k, s, name: nn.Conv(f, (k, k), (s, s), padding=k // 2, use_bias=False,
                                         kernel_init=conv_init, dtype=self.dtype, name=name)
    norm = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.9,
                                     epsilon=1e-5, dtype=self.dtype, name=name)
    y = nn.relu(norm("bn1")(conv(self.features, 3, self.strides, "conv1")(x)))
    y = norm("bn2")(conv(self.features, 3, 1, "conv2")(y))
    if self.strides != 1 or x.shape[-1] != self.features:
      x = norm("down_bn")(conv(self.features, 1, self.strides, "down_conv")(x))
    return nn.relu(x + y)


class ResNet18(nn.Module):
  """ResNet-18 trunk (BasicBlock [2,2,2,2], 7x7/2 stem, 3x3/2 max-pool); NHWC in, feature map out.

  ``width`` is the stem's channel count (64 in the paper); tests and CPU runs use 4-16.
  """

  width: int = 64
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(self.width, (7, 7), (2, 2), padding=3, use_bias=False, kernel_init=conv_init,
                dtype=self.dtype, name="conv_stem")(x.astype(self.dtype))
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                             dtype=self.dtype, name="bn_stem")(x))
    x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    for i, n in enumerate(self.stage_sizes):
      for j in range(n):
        x = BasicBlock(self.width * 2**i, 2 if (i > 0 and j == 0) else 1, self.dtype,
                       name=f"stage{i}_block{j}")(x, train)
    return x


class SmallCNN(nn.Module):
  """Conv-BN-ReLU stack with stride-2 downsampling, for small inputs (synthetic, AV-MNIST)."""

  widths: Sequence[int] = (16, 32, 64)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    x = x.astype(self.dtype)
    for i, w in enumerate(self.widths):
      x = nn.Conv(w, (3, 3), (2, 2) if i else (1, 1), padding=1, use_bias=False,
                  kernel_init=conv_init, dtype=self.dtype, name=f"conv{i}")(x)
      x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                               dtype=self.dtype, name=f"bn{i}")(x))
    return x


class SpectrogramEncoder(nn.Module):
  """[B, F, T] log spectrogram -> [B, D]: one-channel 2-D trunk, mean over space."""

  trunk: Callable[[], nn.Module]

  @nn.compact
  def __call__(self, x, train: bool):
    y = self.trunk()(x[..., None], train)
    return jnp.mean(y.astype(jnp.float32), axis=(1, 2))


class FramesEncoder(nn.Module):
  """[B, T, H, W, C] frames -> [B, D]: frames folded into the batch through one 2-D trunk
  shared over time, then the mean over time and space (released code)."""

  trunk: Callable[[], nn.Module]

  @nn.compact
  def __call__(self, x, train: bool):
    b, t = x.shape[:2]
    y = self.trunk()(x.reshape((b * t,) + x.shape[2:]), train)
    return jnp.mean(y.astype(jnp.float32).reshape((b, t, -1, y.shape[-1])), axis=(1, 2))


class SequenceEncoder(nn.Module):
  """[B, L, F] feature sequence -> [B, D]: linear embedding, pre-LN transformer layers, mean
  over time (MultiBench-style encoder for CMU-MOSI)."""

  dim: int = 64
  depth: int = 2
  heads: int = 4
  dropout: float = 0.1

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Dense(self.dim, kernel_init=dense_init, name="embed")(x.astype(jnp.float32))
    x = x + self.param("pos", nn.initializers.normal(0.02), (1, x.shape[1], self.dim))
    for i in range(self.depth):
      h = nn.LayerNorm(name=f"ln_attn{i}")(x)
      h = nn.MultiHeadDotProductAttention(self.heads, dropout_rate=self.dropout,
                                          deterministic=not train, name=f"attn{i}")(h, h)
      x = x + h
      h = nn.LayerNorm(name=f"ln_mlp{i}")(x)
      h = nn.Dense(self.dim, kernel_init=dense_init, name=f"mlp_out{i}")(
          nn.gelu(nn.Dense(4 * self.dim, kernel_init=dense_init, name=f"mlp_in{i}")(h)))
      x = x + nn.Dropout(self.dropout, deterministic=not train)(h)
    return jnp.mean(nn.LayerNorm(name="ln_out")(x), axis=1)


class ConcatHead(nn.Module):
  """Linear head on concat(features); unimodal logits = f_m @ W[slice_m] + b / M."""

  num_classes: int

  @nn.compact
  def __call__(self, feats: dict[str, jax.Array]):
    names = list(feats)
    dims = [feats[n].shape[-1] for n in names]
    kernel = self.param("kernel", dense_init, (sum(dims), self.num_classes))
    bias = self.param("bias", nn.initializers.zeros, (self.num_classes,))
    uni, start = {}, 0
    for n, d in zip(names, dims):
      uni[n] = feats[n] @ kernel[start:start + d] + bias / len(names)
      start += d
    return sum(uni.values()), uni


class FusedHead(nn.Module):
  """Sum, FiLM and gated fusions (paper Table 5). A modality's unimodal logits are the fused
  output with the other modalities' features set to zero (paper Sec. 4.5)."""

  num_classes: int
  fusion: Fusion

  @nn.compact
  def __call__(self, feats: dict[str, jax.Array]):
    names = list(feats)
    dim = feats[names[0]].shape[-1]
    proj = {n: nn.Dense(dim, kernel_init=dense_init, name=f"proj_{n}") for n in names}
    out = nn.Dense(self.num_classes, kernel_init=dense_init, name="out")
    # FiLM: gamma * x + shift from each other modality; gated: sigmoid gate (Kiela et al., 2018).
    cond = {n: nn.Dense(2 * dim if self.fusion == "film" else dim, kernel_init=dense_init,
                        name=f"{self.fusion}_{n}") for n in names[1:]}

    def fuse(f):
      if self.fusion == "sum":
        return out(sum(proj[n](f[n]) for n in names))
      x = proj[names[0]](f[names[0]])
      for n in names[1:]:
        h = proj[n](f[n])
        if self.fusion == "film":
          gamma, shift = jnp.split(cond[n](h), 2, axis=-1)
          x = gamma * x + shift
        else:
          x = x * nn.sigmoid(cond[n](h)) + h
      return out(x)

    fused = fuse(feats)
    uni = {m: fuse({n: f if n == m else jnp.zeros_like(f) for n, f in feats.items()})
           for m in names}
    return fused, uni


class MultimodalNet(nn.Module):
  """Late-fusion network: ``encoders`` maps modality name -> encoder module factory."""

  encoders: dict[str, Callable[[], nn.Module]]
  num_classes: int
  fusion: Fusion = "concat"

  @nn.compact
  def __call__(self, inputs: dict[str, jax.Array], train: bool = False):
    feats = {m: make(name=m)(inputs[m], train) for m, make in self.encoders.items()}
    if self.fusion == "concat":
      fused, uni = ConcatHead(self.num_classes, name="head")(feats)
    else:
      fused, uni = FusedHead(self.num_classes, self.fusion, name="head")(feats)
    return {"logits": fused, "unimodal_logits": uni, "features": feats}


def modality_labels(params, modalities: Sequence[str]):
  """param_labels for `inforeg_transform`: the modality name on its encoder, None elsewhere."""
  return {k: jax.tree.map(lambda _: k if k in modalities else None, v) for k, v in params.items()}
