"""Datasets: the built-in synthetic one and the prepared real ones (see ``data_prep``)."""

from __future__ import annotations

from inforeg_jax import datasets
from inforeg_jax.data import records
from inforeg_jax.data.dataset import Dataset, select_modalities

__all__ = ["Dataset", "load_dataset", "select_modalities"]


def load_dataset(name: str, data_dir: str = "", seed: int = 0) -> Dataset:
  """The dataset ``name`` (`inforeg_jax.datasets`): its own loader, else the prepared records
  in ``data_dir``."""
  entry = datasets.get(name)
  if entry.load is not None:
    return entry.load(data_dir, seed)
  return records.load_prepared(name, data_dir)
