"""data_prep.mosi on a generated MultiBench-style pickle; a 3-modality transformer run on it."""

import json
import os
import pickle
import subprocess
import sys

import numpy as np

from experiments import run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_pickle(raw, n=(40, 8, 16), length=6):
  raw.mkdir()
  rng = np.random.default_rng(0)
  data = {}
  for split, size in zip(("train", "valid", "test"), n):
    score = rng.uniform(-3, 3, size=(size, 1, 1)).astype(np.float32)
    audio = rng.normal(size=(size, length, 74)).astype(np.float32)
    audio[0, 0, 0] = -np.inf  # COVAREP's -inf
    data[split] = {"text": rng.normal(size=(size, length, 300)).astype(np.float32)
                   + score[:, :, :1],
                   "audio": audio, "vision": rng.normal(size=(size, length, 35)).astype(np.float32),
                   "labels": score, "id": np.arange(size)}
  with open(raw / "mosi_data.pkl", "wb") as f:
    pickle.dump(data, f)


def prep(raw, out):
  return subprocess.run([sys.executable, "-m", "data_prep.mosi", f"--raw_dir={raw}",
                         f"--out_dir={out}"], cwd=ROOT, capture_output=True, text=True)


def test_mosi_prep_and_three_modality_run(tmp_path):
  make_pickle(tmp_path / "raw")
  out = tmp_path / "out"
  proc = prep(tmp_path / "raw", out)
  assert proc.returncode == 0, proc.stderr
  m = json.loads((out / "manifest.json").read_text())
  assert m["counts"]["train"]["total"] == 40 and m["counts"]["val"]["total"] == 8
  assert m["sources"]["non_finite_values_zeroed"]["train/audio"] == 1
  assert m["kinds"] == {"text": "sequence", "audio": "sequence", "visual": "sequence"}
  assert np.isfinite(np.load(out / m["version"] / "train" / "audio.npy")).all()
  assert m["command"] == f"python -m data_prep.mosi --raw_dir={tmp_path / 'raw'} --out_dir={out}"
  assert "nothing to do" in prep(tmp_path / "raw", out).stdout
  assert run.main(["--dataset=mosi", f"--data_dir={out}", "--tiny", "--epochs=3",
                   "--batch_size=8", "--width=16", f"--workdir={tmp_path / 'run'}"]) == 0
  summary = json.loads((tmp_path / "run" / "summary.json").read_text())
  assert set(summary["final"]) >= {"acc", "acc_text", "acc_audio", "acc_visual"}


def test_not_a_pickle(tmp_path):
  (tmp_path / "raw").mkdir()
  (tmp_path / "raw" / "mosi_data.pkl").write_bytes(b"nope")
  proc = prep(tmp_path / "raw", tmp_path / "out")
  assert proc.returncode == 2 and "not a readable pickle" in proc.stderr
  assert "Traceback" not in proc.stderr
