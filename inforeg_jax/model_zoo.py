"""Builds the network a config asks for: encoders by input kind, fusion head."""

from __future__ import annotations

import functools

import jax.numpy as jnp

from inforeg_jax import models


def trunk(cfg):
  """The 2-D conv trunk ``--encoder`` names (a module factory), or None for transformer."""
  dtype = jnp.bfloat16 if cfg.compute_dtype == "bfloat16" else jnp.float32
  conv = models.conv_for_backend()
  if cfg.encoder == "resnet18":
    return functools.partial(models.ResNet18, width=cfg.width, dtype=dtype, conv=conv)
  if cfg.encoder == "small_cnn":
    return functools.partial(models.SmallCNN, widths=(cfg.width, 2 * cfg.width, 4 * cfg.width),
                             dtype=dtype, stem_stride=cfg.stem_stride, conv=conv)
  return None


def build_model(cfg, dataset, unimodal_heads: bool = False) -> models.MultimodalNet:
  """Late fusion: an encoder per modality by its input kind, the ``--fusion`` head."""
  trunk_ = trunk(cfg)
  encoders = {}
  for m, kind in dataset.kinds.items():
    if kind == "sequence":
      encoders[m] = functools.partial(models.SequenceEncoder, dim=cfg.width)
    elif cfg.encoder == "transformer":
      raise ValueError(f"the transformer encoder takes feature sequences; {m} is a {kind}")
    elif kind == "spectrogram":
      encoders[m] = functools.partial(models.SpectrogramEncoder, trunk=trunk_)
    else:
      encoders[m] = functools.partial(models.FramesEncoder, trunk=trunk_)
  return models.MultimodalNet(encoders, dataset.num_classes, cfg.fusion, unimodal_heads)
