"""Builds the network a config asks for: encoders by input kind, fusion head."""

from __future__ import annotations

import functools

import jax.numpy as jnp

from inforeg_jax import models


def build_model(cfg, dataset, unimodal_heads: bool = False) -> models.MultimodalNet:
  dtype = jnp.bfloat16 if cfg.compute_dtype == "bfloat16" else jnp.float32
  if cfg.encoder == "resnet18":
    trunk = functools.partial(models.ResNet18, width=cfg.width, dtype=dtype)
  elif cfg.encoder == "small_cnn":
    trunk = functools.partial(models.SmallCNN, widths=(cfg.width, 2 * cfg.width, 4 * cfg.width),
                              dtype=dtype)
  elif cfg.encoder != "transformer":
    raise ValueError(f"--encoder must be small_cnn, resnet18 or transformer; got {cfg.encoder!r}")
  encoders = {}
  for m, kind in dataset.kinds.items():
    if kind == "sequence":
      encoders[m] = functools.partial(models.SequenceEncoder, dim=cfg.width)
    elif cfg.encoder == "transformer":
      raise ValueError(f"the transformer encoder takes feature sequences; {m} is a {kind}")
    elif kind == "spectrogram":
      encoders[m] = functools.partial(models.SpectrogramEncoder, trunk=trunk)
    else:
      encoders[m] = functools.partial(models.FramesEncoder, trunk=trunk)
  return models.MultimodalNet(encoders, dataset.num_classes, cfg.fusion, unimodal_heads)
