"""The datasets, one module each (``inforeg_jax/datasets/<name>.py``), and their registry.

A dataset module declares one `DatasetEntry`: its ``--dataset`` name, its preset (the
defaults a run on it starts from), the command that prepares it, how it loads (prepared
records by default) and the study's entries (`StudyData`: the prepared folders
`experiments.results` tabulates). Adding a dataset is its module and one `register` line::

    register(mine.DATASET)

The config (presets, ``--dataset`` choices), the loader (`inforeg_jax.data.load_dataset`), the
data's "run this first" lines and `experiments.results` read it from here. JAX-free: the
CLI's ``--help`` imports it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable


@dataclasses.dataclass(frozen=True)
class StudyData:
  """A prepared dataset the study's tables run on (`experiments.results --datasets`)."""

  folder: str | None  # under --data_root; None: built in, nothing to prepare
  prep: str | None = None  # the preparation, with DIR (its folder), FSDD, MNIST, FOLD
  folds: int = 1  # held-out folds, each its own prepared folder (<folder>_fold<k>)
  tuned_on: tuple[int, ...] | None = None  # per fold, the fold whose validation split tunes
  # it (None: each fold its own)
  # "module:function" (data_dir, fsdd_dir, mnist_dir) -> each test pair's recording, for the
  # recording-level bootstrap (None: the test pairs are independent recordings)
  recordings: str | None = None


@dataclasses.dataclass(frozen=True)
class DatasetEntry:
  name: str  # --dataset
  preset: dict[str, Any]  # the run's defaults on this data (beneath the flags)
  prep: str | None = None  # the command that prepares it ({d}: the folder); None: built in
  load: Callable | None = None  # (data_dir, seed) -> Dataset; None: the prepared records
  study: dict[str, StudyData] = dataclasses.field(default_factory=dict)


REGISTRY: dict[str, DatasetEntry] = {}


def register(entry: DatasetEntry) -> None:
  """Adds a dataset (``--dataset=<entry.name>``)."""
  REGISTRY[entry.name] = entry


def names() -> tuple[str, ...]:
  return tuple(REGISTRY)


def get(name: str) -> DatasetEntry:
  if name not in REGISTRY:
    raise ValueError(f"--dataset must be one of {', '.join(REGISTRY)}; got {name!r}")
  return REGISTRY[name]


def study() -> dict[str, tuple[str, StudyData]]:
  """{study name: (--dataset, its StudyData)} over the registered datasets."""
  return {k: (e.name, s) for e in REGISTRY.values() for k, s in e.study.items()}


def prep_command(name: str, data_dir: str) -> str:
  """The command that prepares dataset ``name`` into ``data_dir``."""
  entry = get(name)
  return (entry.prep or f"python -m data_prep.{name} --out_dir={{d}}").format(
      d=data_dir or f"data/{name}")


from inforeg_jax.datasets import avmnist, cremad, kinetics_sounds, mosi, synthetic  # noqa: E402

for _module in (synthetic, avmnist, cremad, kinetics_sounds, mosi):
  register(_module.DATASET)
