"""Joint training: one fused cross-entropy; Joint training* adds the unimodal ones."""

from __future__ import annotations

from inforeg_jax.methods.base import Method


class Joint(Method):
  """The base hooks unchanged: one fused CE (plus ``unimodal_weight`` x the unimodal CEs)."""


class JointUni(Joint):
  unimodal_weight = 1.0

