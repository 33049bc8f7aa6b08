"""Parameter labels: which modality's encoder each parameter belongs to (None: shared)."""

from __future__ import annotations

from typing import Any, Callable, Sequence, Union

import jax

ParamLabels = Union[Any, Callable[[Any], Any]]


def _is_none(x) -> bool:
  return x is None


def resolve_labels(param_labels: ParamLabels, params) -> list:
  """Flat list of labels (modality name or None), one per leaf of ``params``."""
  labels = param_labels(params) if callable(param_labels) else param_labels
  label_def = jax.tree.structure(labels, is_leaf=_is_none)
  param_def = jax.tree.structure(params)
  if label_def != param_def:
    raise ValueError(
        "param_labels must have the structure of the params (a modality name or None per "
        f"leaf); got {label_def} for params {param_def}")
  return jax.tree.leaves(labels, is_leaf=_is_none)


def modality_names(flat_labels: Sequence) -> tuple[str, ...]:
  """The modalities named by the labels, sorted (the default order of state arrays)."""
  return tuple(sorted({l for l in flat_labels if l is not None}))


def modality_labels(params, modalities: Sequence[str]):
  """Labels for a `MultimodalNet`'s params: the modality name on each leaf of its encoder
  (the top-level submodule named after it), None elsewhere (the head)."""
  return {k: jax.tree.map(lambda _: k if k in modalities else None, v) for k, v in params.items()}
