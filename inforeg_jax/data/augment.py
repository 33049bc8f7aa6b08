"""On-device augmentation for video frames, inside the jitted step.

Frames arrive as uint8 [B, T, H, W, 3]. When a dataset stores more frames per clip than a
sample uses (``frames_per_sample`` in its manifest: CREMA-D stores every frame the release
extracts), each example first draws its frames: training takes ``frames_per_sample`` distinct
frames at random, in temporal order (the released CramedDataset draws them anew each time a
clip is loaded), evaluation takes evenly spaced ones (the middles of equal segments). Then,
training: per-frame RandomResizedCrop (scale (0.08, 1), ratio (3/4, 4/3), torchvision's
defaults) and horizontal flip, then ImageNet normalisation; evaluation: resize to the output
size and normalise (released code).
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


def frame_indices(key, batch: int, stored: int, count: int, train: bool):
  """int32 [batch, count]: which of the ``stored`` frames each example uses. Training: distinct
  frames drawn at random, sorted; evaluation: the middles of ``count`` equal segments."""
  if count >= stored:
    return jnp.broadcast_to(jnp.arange(stored, dtype=jnp.int32), (batch, stored))
  if train:
    order = jnp.argsort(jax.random.uniform(key, (batch, stored)), axis=1)
    return jnp.sort(order[:, :count], axis=1).astype(jnp.int32)
  middles = (2 * jnp.arange(count) + 1) * stored // (2 * count)
  return jnp.broadcast_to(middles.astype(jnp.int32), (batch, count))


def sample_frames(frames, key, count: int, train: bool):
  """[B, T, ...] -> [B, count, ...]: the frames each example uses (see `frame_indices`)."""
  idx = frame_indices(key, frames.shape[0], frames.shape[1], count, train)
  return jnp.take_along_axis(frames, idx.reshape(idx.shape + (1,) * (frames.ndim - 2)), axis=1)


def frames_preprocess(modality: str, size: int, frames_per_sample: int | None = None):
  """A `Preprocess` (batch, rng, train) -> batch that augments one frames modality; with
  ``frames_per_sample``, each example first draws that many of its stored frames."""

  def preprocess(batch, rng, train: bool):
    inputs = dict(batch["inputs"])
    frames = inputs[modality]
    if frames_per_sample:
      rng, pick = jax.random.split(rng)
      frames = sample_frames(frames, pick, frames_per_sample, train)
    inputs[modality] = augment_frames(frames, rng, size, train)
    return {**batch, "inputs": inputs}

  return preprocess
