"""Datasets: the built-in synthetic one and the prepared real ones (see ``data_prep``)."""

from __future__ import annotations

from inforeg_jax.data import records
from inforeg_jax.data.dataset import Dataset, select_modalities
from inforeg_jax.data.synthetic import SyntheticSpec, make_synthetic

__all__ = ["Dataset", "load_dataset", "select_modalities"]


def load_dataset(name: str, data_dir: str = "", seed: int = 0) -> Dataset:
  """The dataset ``name``; real datasets are read from ``data_dir`` (prepared records)."""
  if name == "synthetic":
    splits = make_synthetic(SyntheticSpec())
    return Dataset(name, splits["train"], splits["test"], SyntheticSpec.num_classes,
                   {"audio": "spectrogram", "visual": "frames"}, val=splits.get("val"))
  return records.load_prepared(name, data_dir)
