"""Prepared records: the format ``data_prep`` writes and the runner reads back memory-mapped.

A prepared dataset is a folder::

    manifest.json          name, num_classes, kinds {modality: spectrogram|frames|sequence},
                           frame_crop, counts per split and class, shapes, source checksums
    train/<array>.npy      one array per modality plus label, first axis = example
    test/<array>.npy

Plain ``.npy`` files read with ``mmap_mode='r'``: a batch is one fancy index per array (see
``pipeline``), no per-example decoding, no extra dependency. ``manifest.json`` is written
last, so a folder without it is an unfinished preparation, never a complete-looking one.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Mapping

import numpy as np

PREP_COMMANDS = {
    "cremad": "python -m data_prep.cremad --raw_dir=CREMA-D --out_dir={d}",
    "kinetics_sounds": ("python -m data_prep.kinetics_sounds --raw_dir=KS --out_dir={d} "
                        "--train_list=my_train.txt --test_list=my_test.txt"),
    "mosi": "python -m data_prep.mosi --raw_dir=MOSI --out_dir={d}",
    "avmnist": "python -m data_prep.avmnist --fsdd_dir=FSDD --mnist_dir=MNIST --out_dir={d}",
}
MANIFEST = "manifest.json"


class MissingDataError(RuntimeError):
  """The prepared dataset is not where the config says."""


def write_split(out_dir: str, split: str, arrays: Mapping[str, np.ndarray]) -> None:
  """Writes one split atomically: into a temporary folder, renamed when complete."""
  final = os.path.join(out_dir, split)
  tmp = final + ".partial"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  for key, value in arrays.items():
    np.save(os.path.join(tmp, f"{key}.npy"), value)
  shutil.rmtree(final, ignore_errors=True)
  os.rename(tmp, final)


def write_manifest(out_dir: str, manifest: dict) -> None:
  tmp = os.path.join(out_dir, MANIFEST + ".partial")
  with open(tmp, "w") as f:
    json.dump(manifest, f, indent=2, sort_keys=True)
  os.replace(tmp, os.path.join(out_dir, MANIFEST))


def read_manifest(out_dir: str) -> dict | None:
  path = os.path.join(out_dir, MANIFEST)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def read_split(out_dir: str, split: str) -> dict[str, np.ndarray]:
  folder = os.path.join(out_dir, split)
  return {name[:-4]: np.load(os.path.join(folder, name), mmap_mode="r")
          for name in sorted(os.listdir(folder)) if name.endswith(".npy")}


def write_fake_records(out_dir: str, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Writes ``arrays`` as a train split and returns it memory-mapped (for benchmarks)."""
  write_split(out_dir, "train", arrays)
  return read_split(out_dir, "train")


def load_prepared(name: str, data_dir: str):
  """The prepared dataset in ``data_dir`` as a `Dataset`, or a MissingDataError naming the
  ``data_prep`` command to run."""
  from inforeg_jax.data import Dataset
  from inforeg_jax.data.augment import frames_preprocess

  manifest = read_manifest(data_dir) if data_dir else None
  if manifest is None:
    raise MissingDataError(
        f"no prepared {name} data in {data_dir or '(no --data_dir given)'}: run "
        + PREP_COMMANDS[name].format(d=data_dir or f"data/{name}")
        + " first, then pass --data_dir")
  if manifest["name"] != name:
    raise MissingDataError(f"{data_dir} holds prepared {manifest['name']}, not {name}")
  kinds = manifest["kinds"]
  frames = [m for m, k in kinds.items() if k == "frames"]
  preprocess = None
  if frames and manifest.get("frame_crop"):
    preprocess = frames_preprocess(frames[0], manifest["frame_crop"])
  return Dataset(name, read_split(data_dir, "train"), read_split(data_dir, "test"),
                 manifest["num_classes"], kinds, preprocess)
