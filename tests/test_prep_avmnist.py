"""data_prep.avmnist on generated fixture trees (idx files and a locally built TFDS mnist),
its bad inputs, and on the real files when ../shared/data has them."""

import gzip
import io
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile

from data_prep import avmnist
from experiments import run
from inforeg_jax.data import records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "..", "shared", "data")


def write_idx(path, array, magic):
  n = len(array)
  dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
  with gzip.open(path, "wb") as f:
    f.write(magic.to_bytes(4, "big") + dims + array.astype(np.uint8).tobytes())
  assert n == array.shape[0]


def make_fixture(root, per_digit=12, images=400, train_images=0, corrupt=False):
  """FSDD-like clips (indices 0..per_digit-1: 0-4 test, 5-9 val, 10+ train) and MNIST-like idx
  files (``images`` test images, ``train_images`` training images when > 0)."""
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
    soundfile.write(fsdd / "4_spk_98.wav", np.full(4000, np.nan, np.float32), 8000,
                    subtype="FLOAT")
    whole = io.BytesIO()
    soundfile.write(whole, (0.1 * rng.normal(size=6000)).astype(np.float32), 8000,
                    format="WAV", subtype="PCM_16")
    (fsdd / "5_spk_97.wav").write_bytes(whole.getvalue()[:6000])  # header promises 12,000
  for prefix, n in (("t10k", images), ("train", train_images)):
    if n:
      write_idx(mnist / f"{prefix}-images-idx3-ubyte.gz",
                rng.integers(0, 255, size=(n, 28, 28)), 2051)
      write_idx(mnist / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10, 2049)
  return fsdd.parent, mnist


def prep(*flags):
  return subprocess.run([sys.executable, "-m", "data_prep.avmnist", *map(str, flags)], cwd=ROOT,
                        capture_output=True, text=True)


def manifest_of(out):
  return json.loads((out / "manifest.json").read_text())


def arrays(out, split):
  m = manifest_of(out)
  return records.read_split(str(out / m["version"] / split))


def test_prepares_every_image_reports_skips_is_idempotent_and_trains(tmp_path):
  fsdd, mnist = make_fixture(tmp_path, images=200, corrupt=True)
  out = tmp_path / "out"
  proc = prep(f"--fsdd_dir={fsdd}", f"--mnist_dir={mnist}", f"--out_dir={out}")
  assert proc.returncode == 0, proc.stderr
  m = manifest_of(out)
  # 200 test-set images, per digit 80/10/10; one pair per image
  assert {s: m["counts"][s]["total"] for s in m["counts"]} == {"train": 160, "val": 20,
                                                                 "test": 20}
  assert m["counts"]["test"]["per_class"] == [2] * 10
  assert m["sources"]["clips_per_split"] == {"train": 20, "val": 50, "test": 50}
  assert m["sources"]["pairs_per_clip_min_max"]["train"] == [8, 8]  # cycled evenly
  reasons = {os.path.basename(k): v for k, v in m["skipped"].items()}
  assert set(reasons) == {"3_spk_99.wav", "notes.wav", "4_spk_98.wav", "5_spk_97.wav"}
  assert "non-finite" in reasons["4_spk_98.wav"] and "truncated" in reasons["5_spk_97.wav"]
  assert "skipped 4" in proc.stdout
  # the format: a version folder, every file listed with its size, shape, dtype and checksum
  assert m["format"] == records.FORMAT and (out / m["version"]).is_dir()
  entry = m["files"]["train/audio.npy"]
  assert entry["shape"] == [160, 32, 32] and entry["dtype"] == "<f4"  # the default 32x32
  assert entry["bytes"] == (out / m["version"] / "train" / "audio.npy").stat().st_size
  assert entry["sha256"] == records.sha256_file(str(out / m["version"] / "train" / "audio.npy"))
  assert m["command"].startswith("python -m data_prep.avmnist --fsdd_dir=")
  assert m["options"]["audio_bins"] == 32 and m["options"]["seed"] == 0
  assert arrays(out, "val")["visual"].shape == (20, 1, 28, 28, 1)
  # images are disjoint between splits (each fixture image is distinct)
  seen = [set(map(bytes, arrays(out, s)["visual"].reshape(-1, 784))) for s in
          ("train", "val", "test")]
  assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
  again = prep(f"--fsdd_dir={fsdd}", f"--mnist_dir={mnist}", f"--out_dir={out}")
  assert again.returncode == 0 and "nothing to do" in again.stdout
  t0 = time.time()
  assert run.main(["--dataset=avmnist", f"--data_dir={out}", "--tiny", "--epochs=2",
                   "--batch_size=16", "--limit_train=64", f"--workdir={tmp_path / 'run'}"]) == 0
  print(f"run {time.time() - t0:.1f}s")
  summary = json.loads((tmp_path / "run" / "summary.json").read_text())
  assert summary["dataset"] == "avmnist"
  assert {"acc", "acc_audio", "acc_visual"} <= set(summary["final"])


def test_smaller_audio_and_a_new_version_replaces_the_old(tmp_path):
  fsdd, mnist = make_fixture(tmp_path, images=200)
  out = tmp_path / "out"
  assert prep(f"--fsdd_dir={fsdd}", f"--mnist_dir={mnist}", f"--out_dir={out}").returncode == 0
  first = manifest_of(out)["version"]
  proc = prep(f"--fsdd_dir={fsdd}", f"--mnist_dir={mnist}", f"--out_dir={out}",
              "--audio_bins=32", "--audio_frames=16", "--seed=3")
  assert proc.returncode == 0, proc.stderr
  m = manifest_of(out)
  assert m["version"] != first and not (out / first).exists()  # the old version removed
  assert [p.name for p in out.iterdir() if p.name.startswith("v-")] == [m["version"]]
  assert m["shapes"]["audio"] == [32, 16] and m["options"]["seed"] == 3
  audio = arrays(out, "train")["audio"]
  assert audio.shape == (160, 32, 16) and np.isfinite(audio).all()
  data = records.load_prepared("avmnist", str(out))
  assert len(data.val["label"]) == 20 and len(data.test["label"]) == 20


def test_mnist_training_set_gives_train_and_val(tmp_path):
  fsdd, mnist = make_fixture(tmp_path, images=100, train_images=600)
  out = tmp_path / "out"
  proc = prep(f"--fsdd_dir={fsdd}", f"--mnist_dir={mnist}", f"--out_dir={out}")
  assert proc.returncode == 0, proc.stderr
  m = manifest_of(out)
  assert {s: m["counts"][s]["total"] for s in m["counts"]} == {"train": 500, "val": 100,
                                                                 "test": 100}
  assert "MNIST train" in m["sources"]["image_split"]


def build_tfds_mnist(data_dir, n_train, n_test):
  """A tiny `mnist` in the array_record format, built from Python without TensorFlow."""
  tfds = pytest.importorskip("tensorflow_datasets")
  from PIL import Image

  rng = np.random.default_rng(1)

  def png(a):
    b = io.BytesIO()
    Image.fromarray(a).save(b, format="PNG")
    return b.getvalue()

  class Mnist(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    name = "mnist"
    VERSION = tfds.core.Version("3.0.1")
    code_path = None  # tfds would look for checksums beside this test module

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(28, 28, 1)),
          "label": tfds.features.ClassLabel(num_classes=10)}), supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(n_train), "test": self._generate_examples(n_test)}

    def _generate_examples(self, n):
      for i in range(n):
        yield i, {"image": png(rng.integers(0, 255, (28, 28), dtype=np.uint8)), "label": i % 10}

  Mnist(data_dir=str(data_dir), file_format="array_record").download_and_prepare()


def test_tfds_mnist_source(tmp_path):
  build_tfds_mnist(tmp_path / "tfds", n_train=120, n_test=30)
  fsdd, _ = make_fixture(tmp_path, images=0)
  out = tmp_path / "out"
  proc = prep(f"--fsdd_dir={fsdd}", f"--tfds_data_dir={tmp_path / 'tfds'}", f"--out_dir={out}")
  assert proc.returncode == 0, proc.stderr
  m = manifest_of(out)
  assert {s: m["counts"][s]["total"] for s in m["counts"]} == {"train": 100, "val": 20,
                                                                 "test": 30}
  assert m["options"]["mnist_source"] == "tfds"
  assert "nothing to do" in prep(f"--fsdd_dir={fsdd}", f"--tfds_data_dir={tmp_path / 'tfds'}",
                                 f"--out_dir={out}").stdout
  # a data_dir without mnist: one line
  proc = prep(f"--fsdd_dir={fsdd}", f"--tfds_data_dir={tmp_path}", f"--out_dir={tmp_path / 'o'}")
  assert proc.returncode == 2 and proc.stderr.startswith("error: --tfds_data_dir=")
  assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


@pytest.mark.parametrize("case", ["no_fsdd", "no_mnist_files", "not_idx", "truncated_gz",
                                  "damaged_idx", "both_sources", "bad_flag", "abbreviated",
                                  "negative_seed", "zero_bins", "too_many_bins"])
def test_bad_inputs_are_one_clear_line(tmp_path, capsys, case):
  fsdd, mnist = make_fixture(tmp_path, images=100)
  out = tmp_path / "out"
  flags = [f"--fsdd_dir={fsdd}", f"--mnist_dir={mnist}", f"--out_dir={out}"]
  images = mnist / "t10k-images-idx3-ubyte.gz"
  if case == "no_fsdd":
    flags[0] = f"--fsdd_dir={tmp_path / 'nope'}"
  elif case == "no_mnist_files":
    for f in mnist.iterdir():
      f.unlink()
  elif case == "not_idx":
    (mnist / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\0" * 16))
  elif case == "truncated_gz":
    images.write_bytes(images.read_bytes()[:2000])
  elif case == "damaged_idx":
    raw = gzip.decompress(images.read_bytes())
    images.write_bytes(gzip.compress(raw[:-784]))  # the header still says 100 images
  elif case == "both_sources":
    flags.append(f"--tfds_data_dir={tmp_path}")
  elif case == "bad_flag":
    flags.append("--bogus=1")
  elif case == "abbreviated":
    flags[2] = f"--out={out}"
  elif case == "negative_seed":
    flags.append("--seed=-1")
  elif case == "zero_bins":
    flags.append("--audio_bins=0")
  else:
    flags.append("--audio_bins=200")
  if case == "truncated_gz":  # as a user runs it: one line, exit status 2, no traceback
    proc = prep(*flags)
    rc, err = proc.returncode, proc.stderr
  else:
    with pytest.raises(SystemExit) as exit_:
      avmnist.main(flags)
    rc, err = exit_.value.code, capsys.readouterr().err
  assert rc == 2
  assert err.startswith("error: ") and "Traceback" not in err
  assert err.count("\n") == 1, err
  if case in ("truncated_gz", "damaged_idx"):
    assert str(images) in err
  assert not (out / "manifest.json").exists()
  assert not out.exists() or not [p for p in out.iterdir() if p.name.startswith("v-")]


def test_help_names_the_module_and_every_flag():
  proc = prep("--help")
  assert proc.returncode == 0
  assert proc.stdout.startswith("usage: python -m data_prep.avmnist")
  for flag in ("--fsdd_dir", "--mnist_dir", "--tfds_data_dir", "--out_dir", "--seed",
               "--image_energy_removed", "--audio_snr_db", "--audio_bins", "--audio_frames"):
    assert flag in proc.stdout
  assert "(default: 32)" in proc.stdout and "area-averaged" in proc.stdout


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED, "fsdd")), reason="no ../shared/data")
def test_real_fsdd_and_mnist(tmp_path):
  out = tmp_path / "out"
  proc = prep(f"--fsdd_dir={os.path.join(SHARED, 'fsdd')}",
              f"--mnist_dir={os.path.join(SHARED, 'mnist')}", f"--out_dir={out}")
  assert proc.returncode == 0, proc.stderr
  m = manifest_of(out)
  assert {s: m["counts"][s]["total"] for s in m["counts"]} == {"train": 8000, "val": 1000,
                                                                 "test": 1000}
  assert m["sources"]["clips_per_split"] == {"train": 2400, "val": 300, "test": 300}
  assert m["skipped"] == {}
  assert m["sources"]["mnist_images_md5"] == "2646ac647ad5339dbf082846283269ea"
  data = records.load_prepared("avmnist", str(out))
  assert data.train["audio"].shape == (8000, 32, 32)
