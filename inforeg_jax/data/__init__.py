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
  val: Mapping[str, np.ndarray] | None = None  # the validation split, when there is one

  @property
  def modalities(self) -> tuple[str, ...]:
    return tuple(self.kinds)


def select_modalities(dataset: Dataset, names) -> Dataset:
  """The dataset restricted to ``names`` (a unimodal or partial baseline)."""
  unknown = set(names) - set(dataset.kinds)
  if unknown:
    raise ValueError(f"--modalities: {sorted(unknown)} not in {list(dataset.kinds)}")
  keep = lambda arrays: {k: v for k, v in arrays.items() if k in names or k == "label"}
  return dataclasses.replace(dataset, train=keep(dataset.train), test=keep(dataset.test),
                             val=None if dataset.val is None else keep(dataset.val),
                             kinds={m: k for m, k in dataset.kinds.items() if m in names})


def load_dataset(name: str, data_dir: str = "", seed: int = 0) -> Dataset:
  """The dataset ``name``; real datasets are read from ``data_dir`` (prepared records)."""
  if name == "synthetic":
    splits = make_synthetic(SyntheticSpec())
    return Dataset(name, splits["train"], splits["test"], SyntheticSpec.num_classes,
                   {"audio": "spectrogram", "visual": "frames"}, val=splits.get("val"))
  from inforeg_jax.data import records  # real data: prepared by data_prep

  return records.load_prepared(name, data_dir)
