"""`Dataset`: the splits a run trains and evaluates on, and what the loop needs to know of them."""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import numpy as np


@dataclasses.dataclass(frozen=True)
class Dataset:
  name: str
  train: Mapping[str, np.ndarray]  # modality arrays + 'label'
  test: Mapping[str, np.ndarray]
  num_classes: int
  kinds: Mapping[str, str]  # modality -> 'spectrogram' | 'frames' | 'sequence'
  preprocess: Callable | None = None  # on-device (batch, rng, train) -> batch
  val: Mapping[str, np.ndarray] | None = None  # the validation split, when there is one
  # what the data is: the prepared records' manifest version and checksums (None: built in);
  # a checkpoint records it so that --resume on other data is refused
  identity: Mapping | None = None

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
