"""One place per dataset (inforeg_jax/datasets): the registry the config, the loader and the
study read; a new dataset is its module and one registry line, and trains."""

import os
import subprocess
import sys

import pytest

from inforeg_jax import datasets
from inforeg_jax.config import make_config, preset_values
from inforeg_jax.data import load_dataset, records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TOY = '''
import numpy as np
from inforeg_jax import datasets
from inforeg_jax.datasets import DatasetEntry


def load(data_dir, seed):
  from inforeg_jax.data import Dataset
  rng = np.random.default_rng(0)
  def split(n):
    label = rng.integers(0, 3, n).astype(np.int32)
    audio = rng.normal(size=(n, 6, 6)).astype(np.float32) + label[:, None, None]
    visual = rng.normal(size=(n, 1, 6, 6, 3)).astype(np.float32)
    return {"audio": audio, "visual": visual, "label": label}
  return Dataset("toy", split(64), split(32), 3, {"audio": "spectrogram", "visual": "frames"},
                 val=split(32))


DATASET = DatasetEntry("toy", preset={"epochs": 2, "width": 2, "batch_size": 16,
                                      "eval_batch_size": 32, "encoder": "small_cnn"}, load=load)
datasets.register(DATASET)
'''


def test_the_built_in_datasets_are_registered_with_their_presets():
  assert datasets.names() == ("synthetic", "avmnist", "cremad", "kinetics_sounds", "mosi")
  assert preset_values("avmnist")["width"] == datasets.get("avmnist").preset["width"] == 8
  assert make_config("cremad").encoder == "resnet18"  # the preset reaches the config
  with pytest.raises(ValueError, match="--dataset must be one of synthetic, avmnist"):
    make_config("nope")
  assert datasets.study()["avmnist_hard"][0] == "avmnist"  # the study's hard variant
  assert datasets.study()["avmnist_hard"][1].folds == 6
  # the data's "run this first" line comes from the entry
  with pytest.raises(records.MissingDataError, match="python -m data_prep.mosi --raw_dir=MOSI"):
    load_dataset("mosi", "")


def test_a_new_dataset_is_one_module_and_one_registry_line_and_trains(tmp_path):
  (tmp_path / "toy.py").write_text(TOY)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), ROOT]))
  run = [sys.executable, "-c", "import toy, sys; from experiments.run import main; "
         "sys.exit(main(sys.argv[1:]))"]
  help_text = subprocess.run(run + ["--help"], env=env, capture_output=True, text=True,
                             cwd=ROOT).stdout
  assert "toy}" in help_text.replace(" ", "")  # listed among --dataset's choices
  proc = subprocess.run(run + ["--dataset=toy", "--method=joint", f"--workdir={tmp_path / 'r'}",
                               "--plots=false"], env=env, capture_output=True, text=True,
                        cwd=ROOT, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  summary = (tmp_path / "r" / "summary.json").read_text()
  assert '"dataset": "toy"' in summary and '"epochs": 2' in summary  # its preset
