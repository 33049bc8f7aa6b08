"""data_prep.avmnist on a generated fixture tree, its bad inputs, and on the real files when
../shared/data has them."""

import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from experiments import run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "..", "shared", "data")


def make_fixture(root, per_digit=8, corrupt=False):
  fsdd, mnist = root / "fsdd" / "recordings", root / "mnist"
  fsdd.mkdir(parents=True)
  mnist.mkdir()
  rng = np.random.default_rng(0)
  for d in range(10):
    for i in range(per_digit):
      t = np.arange(rng.integers(2000, 6000)) / 8000
      wave = 0.3 * np.sin(2 * np.pi * (300 + 80 * d) * t) + 0.01 * rng.normal(size=t.shape)
      soundfile.write(fsdd / f"{d}_spk_{i}.wav", wave.astype(np.float32), 8000)
  if corrupt:
    (fsdd / "3_spk_99.wav").write_bytes(b"RIFF....not a wav")
    (fsdd / "notes.wav").write_bytes(b"x")
  n = 2400  # the last 2,000 images feed the test pairs
  labels = (np.arange(n) % 10).astype(np.uint8)
  images = rng.integers(0, 255, size=(n, 28, 28), dtype=np.uint8)
  with gzip.open(mnist / "t10k-images-idx3-ubyte.gz", "wb") as f:
    f.write((2051).to_bytes(4, "big") + n.to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
            + images.tobytes())
  with gzip.open(mnist / "t10k-labels-idx1-ubyte.gz", "wb") as f:
    f.write((2049).to_bytes(4, "big") + n.to_bytes(4, "big") + labels.tobytes())
  return fsdd.parent, mnist


def prep(fsdd, mnist, out):
  return subprocess.run([sys.executable, "-m", "data_prep.avmnist", f"--fsdd_dir={fsdd}",
                         f"--mnist_dir={mnist}", f"--out_dir={out}"], cwd=ROOT,
                        capture_output=True, text=True)


def test_prepares_reports_skips_is_idempotent_and_trains(tmp_path):
  fsdd, mnist = make_fixture(tmp_path, corrupt=True)
  out = tmp_path / "out"
  proc = prep(fsdd, mnist, out)
  assert proc.returncode == 0, proc.stderr
  manifest = json.loads((out / "manifest.json").read_text())
  assert manifest["counts"]["test"]["total"] == 50 and manifest["counts"]["train"]["total"] == 30
  assert manifest["counts"]["test"]["per_class"] == [5] * 10
  assert len(manifest["skipped"]) == 2 and "skipped 2" in proc.stdout
  assert np.load(out / "train" / "audio.npy").shape == (30, 129, 63)
  assert np.load(out / "test" / "visual.npy").shape == (50, 1, 28, 28, 1)
  again = prep(fsdd, mnist, out)
  assert again.returncode == 0 and "nothing to do" in again.stdout
  assert run.main(["--dataset=avmnist", f"--data_dir={out}", "--tiny", "--epochs=2",
                   "--batch_size=8", f"--workdir={tmp_path / 'run'}"]) == 0
  summary = json.loads((tmp_path / "run" / "summary.json").read_text())
  assert summary["dataset"] == "avmnist"
  assert set(summary["final"]) == {"acc", "acc_audio", "acc_visual", "f1_macro"}


@pytest.mark.parametrize("case", ["no_fsdd", "no_mnist_files", "not_idx"])
def test_bad_inputs_are_one_clear_line(tmp_path, case):
  fsdd, mnist = make_fixture(tmp_path, per_digit=1)
  if case == "no_fsdd":
    fsdd = tmp_path / "nope"
  elif case == "no_mnist_files":
    for f in mnist.iterdir():
      f.unlink()
  else:
    (mnist / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\0" * 16))
  proc = prep(fsdd, mnist, tmp_path / "out")
  assert proc.returncode == 2
  assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
  assert not (tmp_path / "out" / "manifest.json").exists()


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED, "fsdd")), reason="no ../shared/data")
def test_real_fsdd_and_mnist(tmp_path):
  proc = prep(os.path.join(SHARED, "fsdd"), os.path.join(SHARED, "mnist"), tmp_path / "out")
  assert proc.returncode == 0, proc.stderr
  manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
  assert manifest["counts"]["train"]["total"] == 2700 and manifest["counts"]["test"]["total"] == 300
  assert manifest["sources"]["mnist_images_md5"] == "2646ac647ad5339dbf082846283269ea"
