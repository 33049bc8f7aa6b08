"""Flax encoders and fusion heads; pure functions through ``model.apply``.

``MultimodalNet`` keeps each modality's encoder a top-level submodule named after the
modality (``params['audio']``, ``params['visual']``, ...) and the fusion in
``params['head']``, so that labelling parameters by modality is one line
(`modality_labels`). It returns the fused logits, each modality's unimodal logits
(METHOD.md: head slices plus bias / M for concat; the other modality's features zeroed for
the released sum/FiLM/gated fusions) and the features.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Literal, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_batching import custom_vmap

# Released-code initialisation: conv kaiming-normal (fan_out), linear xavier-normal, zero bias.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
dense_init = nn.initializers.xavier_normal()

Fusion = Literal["concat", "sum", "film", "gated"]


# ---------------------------------------------------------------- convolution for populations


def _hashable(x):
  """Lists (flax passes the padding as one) as tuples; named tuples (dimension numbers) kept."""
  if type(x) in (list, tuple):
    return tuple(_hashable(v) for v in x)
  return x


def member_conv(lhs, rhs, window_strides, padding, **kwargs):
  """``lax.conv_general_dilated`` that, vmapped over the members of a population (each with its
  own kernel), runs one native convolution per member instead of one grouped convolution:
  XLA's CPU backend runs grouped convolutions 3-4x slower per member than plain ones
  (docs/PERFORMANCE.md), while its other ops vectorise well. Unbatched, it is exactly
  ``lax.conv_general_dilated``; its derivatives are the native ones, computed the same way."""
  static = tuple(sorted((k, _hashable(v)) for k, v in kwargs.items()))
  return _member_conv_op(_hashable(window_strides), _hashable(padding), static)(lhs, rhs)


@functools.cache
def _member_conv_op(window_strides, padding, static):
  conv = functools.partial(lax.conv_general_dilated, window_strides=window_strides,
                           padding=padding, **dict(static))

  def per_member(f, n, batched, args):
    args = [a if b else jnp.broadcast_to(a, (n,) + a.shape) for a, b in zip(args, batched)]
    outs = [f(*[a[i] for a in args]) for i in range(n)]
    return jax.tree.map(lambda *o: jnp.stack(o), *outs)

  @custom_vmap
  def forward(x, w):
    return conv(x, w)

  @forward.def_vmap
  def _(n, batched, x, w):
    return per_member(conv, n, batched, (x, w)), True

  def grads(x, w, g):
    return jax.vjp(conv, x, w)[1](g)

  @custom_vmap
  def backward(x, w, g):
    return grads(x, w, g)

  @backward.def_vmap
  def _(n, batched, x, w, g):
    return per_member(grads, n, batched, (x, w, g)), (True, True)

  @jax.custom_vjp
  def op(x, w):
    return forward(x, w)

  op.defvjp(lambda x, w: (forward(x, w), (x, w)), lambda res, g: backward(*res, g))
  return op


def conv_for_backend() -> Callable | None:
  """The convolution the encoders use: `member_conv` on the CPU, XLA's own elsewhere (a
  grouped convolution over the members is fast on GPUs and TPUs)."""
  return member_conv if jax.default_backend() == "cpu" else None


class BasicBlock(nn.Module):
  features: int
  strides: int = 1
  dtype: Any = jnp.float32
  conv: Callable | None = None  # the convolution (`conv_for_backend`); None: XLA's

  @nn.compact
  def __call__(self, x, train: bool):
    conv = lambda f, k, s, name: nn.Conv(f, (k, k), (s, s), padding=k // 2, use_bias=False,
                                         kernel_init=conv_init, dtype=self.dtype, name=name,
                                         conv_general_dilated=self.conv)
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
  ``stages`` runs only those stages (and the stem when it includes 0), so that a model can
  interleave two trunks stage by stage (Greedy's MMTM fusion); the parameters are the same.
  """

  width: int = 64
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  dtype: Any = jnp.float32
  conv: Callable | None = None

  @property
  def num_stages(self) -> int:
    return len(self.stage_sizes)

  @nn.compact
  def __call__(self, x, train: bool, stages: Sequence[int] | None = None):
    stages = range(self.num_stages) if stages is None else stages
    if 0 in stages:
      x = nn.Conv(self.width, (7, 7), (2, 2), padding=3, use_bias=False, kernel_init=conv_init,
                  dtype=self.dtype, name="conv_stem",
                  conv_general_dilated=self.conv)(x.astype(self.dtype))
      x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                               dtype=self.dtype, name="bn_stem")(x))
      x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    for i in stages:
      for j in range(self.stage_sizes[i]):
        x = BasicBlock(self.width * 2**i, 2 if (i > 0 and j == 0) else 1, self.dtype,
                       self.conv, name=f"stage{i}_block{j}")(x, train)
    return x


class SmallCNN(nn.Module):
  """Conv-BN-ReLU stack with stride-2 downsampling, for small inputs (synthetic, AV-MNIST).
  ``stages`` runs only those layers (see `ResNet18`)."""

  widths: Sequence[int] = (16, 32, 64)
  dtype: Any = jnp.float32
  stem_stride: int = 1  # of the first convolution; the others have stride 2
  conv: Callable | None = None

  @property
  def num_stages(self) -> int:
    return len(self.widths)

  @nn.compact
  def __call__(self, x, train: bool, stages: Sequence[int] | None = None):
    x = x.astype(self.dtype)
    for i in range(self.num_stages) if stages is None else stages:
      stride = 2 if i else self.stem_stride
      x = nn.Conv(self.widths[i], (3, 3), (stride, stride), padding=1, use_bias=False,
                  kernel_init=conv_init, dtype=self.dtype, name=f"conv{i}",
                  conv_general_dilated=self.conv)(x)
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


class TwoModalityFusion(nn.Module):
  """The released fusion_modules.py (OGM-GE @ 343dc1d; the same in InfoReg's release) for
  two modalities, x the first (audio), y the second (visual):
  - sum (SumFusion, lines 5-13): ``fc_x(x) + fc_y(y)``;
  - film (FiLM, x_film=True, 27-56): ``gamma, beta = split(fc(x))``, ``fc_out(gamma y + beta)``,
    audio conditioning visual, no projections (the feature sizes must agree);
  - gated (GatedFusion, x_gate=True, 59-87): ``fc_out(sigmoid(fc_x(x)) * fc_y(y))``, no residual.

  A modality's unimodal logits (what OGM-GE's ratio, InfoReg's Delta and per-modality
  accuracy read):
  - sum: its own layer, ``fc_x(x)`` with ``fc_x``'s bias for audio, ``fc_y(y)`` for visual, as
    the official OGM-GE/PMR training code (OGM-GE main.py:83-86);
  - film, gated: the fused output with the other modality's features replaced by their batch
    mean (held constant), a mean ablation as Greedy's evaluation of one modality alone
    (balanced_mmtm.py:75-85, the other stream's training-set mean). Zeroing them instead
    (paper Sec. 4.5) leaves FiLM's visual and gated's audio logits a constant at
    initialisation (the zero-initialised bias times the modality), the same for every sample;
    the official codes define none (OGM-GE's raise a shape error; PMR's return the fused
    logits for both)."""

  num_classes: int
  fusion: Fusion

  @nn.compact
  def __call__(self, feats: dict[str, jax.Array]):
    names = list(feats)
    if len(names) != 2:
      raise ValueError(f"--fusion={self.fusion} is defined for two modalities (the released "
                       f"fusion_modules.py); {len(names)} given: use --fusion=concat")
    dense = lambda n, name: nn.Dense(n, kernel_init=dense_init, name=name)
    dim = feats[names[0]].shape[-1]
    x, y = feats[names[0]], feats[names[1]]
    if self.fusion == "sum":
      fc_x, fc_y = dense(self.num_classes, "fc_x"), dense(self.num_classes, "fc_y")
      out_x, out_y = fc_x(x), fc_y(y)
      return out_x + out_y, {names[0]: out_x, names[1]: out_y}
    if self.fusion == "film":
      if feats[names[1]].shape[-1] != dim:
        raise ValueError("--fusion=film needs features of equal size")
      fc, fc_out = dense(2 * dim, "fc"), dense(self.num_classes, "fc_out")

      def fuse(x, y):
        gamma, beta = jnp.split(fc(x), 2, axis=-1)
        return fc_out(gamma * y + beta)
    else:
      fc_x, fc_y, fc_out = dense(dim, "fc_x"), dense(dim, "fc_y"), dense(self.num_classes,
                                                                          "fc_out")
      fuse = lambda x, y: fc_out(nn.sigmoid(fc_x(x)) * fc_y(y))
    mean = lambda f: jnp.broadcast_to(jax.lax.stop_gradient(jnp.mean(f, 0, keepdims=True)),
                                      f.shape)
    uni = {names[0]: fuse(x, mean(y)), names[1]: fuse(mean(x), y)}
    return fuse(x, y), uni


class MultimodalNet(nn.Module):
  """Late-fusion network: ``encoders`` maps modality name -> encoder module factory."""

  encoders: dict[str, Callable[[], nn.Module]]
  num_classes: int
  fusion: Fusion = "concat"
  unimodal_heads: bool = False  # a linear head per modality gives its unimodal logits

  @nn.compact
  def __call__(self, inputs: dict[str, jax.Array], train: bool = False):
    feats = {m: make(name=m)(inputs[m], train) for m, make in self.encoders.items()}
    if self.fusion == "concat":
      fused, uni = ConcatHead(self.num_classes, name="head")(feats)
    else:
      fused, uni = TwoModalityFusion(self.num_classes, self.fusion, name="head")(feats)
    if self.unimodal_heads:  # MMPareto's and G-Blending's models: separate unimodal heads
      uni = {m: nn.Dense(self.num_classes, kernel_init=dense_init, name=f"unimodal_head_{m}")(f)
             for m, f in feats.items()}
    return {"logits": fused, "unimodal_logits": uni, "features": feats}


