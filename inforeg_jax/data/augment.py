"""On-device augmentation for video frames, inside the jitted step.

Frames arrive as uint8 [B, T, H, W, 3]. Training: per-frame RandomResizedCrop (scale
(0.08, 1), ratio (3/4, 4/3), torchvision's defaults) and horizontal flip, then ImageNet
normalisation; evaluation: resize to the output size and normalise (released code).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

IMAGENET_MEAN = jnp.array([0.485, 0.456, 0.406], jnp.float32)
IMAGENET_STD = jnp.array([0.229, 0.224, 0.225], jnp.float32)


def _normalise(x):
  return (x / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


def _crop_resize(img, key, size):
  """RandomResizedCrop of one HWC frame to size x size, then a random horizontal flip."""
  h, w = img.shape[0], img.shape[1]
  k_scale, k_ratio, k_y, k_x, k_flip = jax.random.split(key, 5)
  area = h * w * jax.random.uniform(k_scale, (), minval=0.08, maxval=1.0)
  ratio = jnp.exp(jax.random.uniform(k_ratio, (), minval=jnp.log(3 / 4), maxval=jnp.log(4 / 3)))
  cw = jnp.clip(jnp.sqrt(area * ratio), 8.0, w)
  ch = jnp.clip(jnp.sqrt(area / ratio), 8.0, h)
  y0 = jax.random.uniform(k_y, ()) * (h - ch)
  x0 = jax.random.uniform(k_x, ()) * (w - cw)
  scale = jnp.stack([size / ch, size / cw])
  out = jax.image.scale_and_translate(img, (size, size, img.shape[2]), (0, 1), scale,
                                      -jnp.stack([y0, x0]) * scale, method="linear",
                                      antialias=False)
  return jnp.where(jax.random.bernoulli(k_flip), out[:, ::-1], out)


def augment_frames(frames, key, size: int, train: bool):
  """uint8 [B, T, H, W, 3] -> float32 normalised [B, T, size, size, 3]."""
  x = frames.astype(jnp.float32)
  b, t = x.shape[:2]
  flat = x.reshape((b * t,) + x.shape[2:])
  if train:
    keys = jax.random.split(key, b * t)
    flat = jax.vmap(functools.partial(_crop_resize, size=size))(flat, keys)
  elif flat.shape[1:3] != (size, size):
    flat = jax.image.resize(flat, (b * t, size, size, flat.shape[-1]), "linear", antialias=True)
  return _normalise(flat).reshape((b, t, size, size, -1))


def frames_preprocess(modality: str, size: int):
  """A `Preprocess` (batch, rng, train) -> batch that augments one frames modality."""

  def preprocess(batch, rng, train: bool):
    inputs = dict(batch["inputs"])
    inputs[modality] = augment_frames(inputs[modality], rng, size, train)
    return {**batch, "inputs": inputs}

  return preprocess
