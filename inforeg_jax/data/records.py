"""Prepared records written by ``data_prep``: read back memory-mapped."""

from __future__ import annotations

import json
import os

PREP_COMMANDS = {
    "cremad": "python -m data_prep.cremad --raw_dir=CREMA-D --out_dir={d}",
    "kinetics_sounds": ("python -m data_prep.kinetics_sounds --raw_dir=KS --out_dir={d} "
                        "--train_list=my_train.txt --test_list=my_test.txt"),
    "mosi": "python -m data_prep.mosi --raw_dir=MOSI --out_dir={d}",
    "avmnist": "python -m data_prep.avmnist --fsdd_dir=FSDD --mnist_dir=MNIST --out_dir={d}",
}


class MissingDataError(RuntimeError):
  """The prepared dataset is not where the config says."""


def load_prepared(name: str, data_dir: str):
  manifest = os.path.join(data_dir or ".", "manifest.json")
  if not data_dir or not os.path.exists(manifest):
    raise MissingDataError(
        f"no prepared {name} data in {data_dir or '(no --data_dir given)'}: run "
        + PREP_COMMANDS[name].format(d=data_dir or f"data/{name}")
        + f" first, then pass --data_dir")
  with open(manifest) as f:
    json.load(f)
  raise MissingDataError(f"loading prepared {name} records is not implemented yet")
