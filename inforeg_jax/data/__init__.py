"""Datasets: the built-in synthetic one and the prepared real ones (see ``data_prep``)."""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import numpy as np

from inforeg_jax.data.synthetic import SyntheticSpec, make_synthetic


@dataclasses.dataclass(frozen=True)
class Dataset:
  name: str
  train: Mapping[str, np.ndarray]  # modality arrays + 'label'
  test: Mapping[str, np.ndarray]
  num_classes: int
  kinds: Mapping[str, str]  # modality -> 'spectrogram' | 'frames' | 'sequence'
  preprocess: Callable | None = None  # on-device (batch, rng, train) -> batch

  @property
  def modalities(self) -> tuple[str, ...]:
    return tuple(self.kinds)


def load_dataset(name: str, data_dir: str = "", seed: int = 0) -> Dataset:
  """The dataset ``name``; real datasets are read from ``data_dir`` (prepared records)."""
  if name == "synthetic":
    splits = make_synthetic(SyntheticSpec())
    return Dataset(name, splits["train"], splits["test"], SyntheticSpec.num_classes,
                   {"audio": "spectrogram", "visual": "frames"})
  from inforeg_jax.data import records  # real data: prepared by data_prep
  return records.load_prepared(name, data_dir)
