"""data_prep.cremad on a fixture tree laid out like CREMA-D (16 kHz wavs, FLV videos)."""

import json
import os
import subprocess
import sys

import av
import numpy as np
import soundfile

from experiments import run
from inforeg_jax.data import records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LABELS = ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"]


def write_flv(path, seconds, shade):
  with av.open(str(path), "w") as c:
    s = c.add_stream("flv", rate=30)
    s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
    for i in range(int(30 * seconds)):
      img = np.full((48, 64, 3), (shade + 3 * i) % 255, np.uint8)
      for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
        c.mux(p)
    for p in s.encode():
      c.mux(p)


def make_fixture(root):
  audio, video = root / "AudioWAV", root / "VideoFlash"
  audio.mkdir(parents=True)
  video.mkdir()
  rng = np.random.default_rng(0)
  clips = []
  for speaker in range(1001, 1005):
    for k, label in enumerate(LABELS):
      clip = f"{speaker}_IEO_{label}_XX"
      t = np.arange(int(16000 * rng.uniform(1.5, 2.5))) / 16000
      soundfile.write(audio / f"{clip}.wav", (0.2 * np.sin(2 * np.pi * (200 + 50 * k) * t))
                      .astype(np.float32), 16000)
      write_flv(video / f"{clip}.flv", 1.2, 40 * k)
      clips.append((clip, label))
  # bad inputs: a corrupt video, an unknown label, a wav without its video, NaN audio
  soundfile.write(audio / "1009_IEO_ANG_XX.wav", np.zeros(8000, np.float32), 16000)
  (video / "1009_IEO_ANG_XX.flv").write_bytes(b"FLV garbage")
  soundfile.write(audio / "1009_IEO_XYZ_XX.wav", np.zeros(8000, np.float32), 16000)
  soundfile.write(audio / "1010_IEO_SAD_XX.wav", np.zeros(8000, np.float32), 16000)
  soundfile.write(audio / "1011_IEO_HAP_XX.wav", np.full(8000, np.nan, np.float32), 16000,
                  subtype="FLOAT")
  write_flv(video / "1011_IEO_HAP_XX.flv", 0.5, 10)
  return clips


def split_arrays(out, split):
  m = json.loads((out / "manifest.json").read_text())
  return records.read_split(str(out / m["version"] / split))


def prep(*flags):
  return subprocess.run([sys.executable, "-m", "data_prep.cremad", *flags], cwd=ROOT,
                        capture_output=True, text=True)


def test_cremad_prep_end_to_end(tmp_path):
  raw, out = tmp_path / "CREMA-D", tmp_path / "out"
  make_fixture(raw)
  flags = [f"--raw_dir={raw}", f"--out_dir={out}", "--frame_size=40", "--frame_crop=32",
           "--val_fraction=0.25"]
  proc = prep(*flags)
  assert proc.returncode == 0, proc.stderr
  m = json.loads((out / "manifest.json").read_text())
  assert sum(m["counts"][s]["total"] for s in ("train", "val", "test")) == 24
  assert m["counts"]["val"]["total"] > 0
  # corrupt video, unknown label, missing video, NaN audio
  assert len(m["skipped"]) == 4, m["skipped"]
  assert "non-finite" in m["skipped"]["1011_IEO_HAP_XX"]
  assert m["frames_stored"] == 9 and m["frames_per_sample"] == 3
  audio, visual = split_arrays(out, "train")["audio"], split_arrays(out, "train")["visual"]
  assert audio.shape[1:] == (257, 188) and audio.dtype == np.float32
  # 1.2 s at 30 fps: frames 0, 10, 20, 30 extracted, stretched evenly to the 9 stored
  assert visual.shape[1:] == (9, 40, 40, 3) and visual.dtype == np.uint8
  shades = visual[0, :, 20, 20, 0].astype(int).tolist()
  runs = [shades[0:2], shades[2:4], shades[4:7], shades[7:9]]  # stretch(4, 9): 0,0,1,1,2,2,2,3,3
  assert all(len(set(r)) == 1 for r in runs) and len(set(shades)) == 4, shades
  assert "nothing to do" in prep(*flags).stdout  # idempotent
  data = records.load_prepared("cremad", str(out))
  assert data.preprocess is not None and data.val is not None
  assert run.main(["--dataset=cremad", f"--data_dir={out}", "--tiny", "--epochs=1",
                   "--batch_size=8", f"--workdir={tmp_path / 'run'}"]) == 0


def test_split_dir_and_resume_from_cache(tmp_path):
  raw, out, splits = tmp_path / "CREMA-D", tmp_path / "out", tmp_path / "splits"
  clips = make_fixture(raw)
  splits.mkdir()
  (splits / "train.csv").write_text("".join(f"{c},{l}\n" for c, l in clips[:18]))
  (splits / "test.csv").write_text("".join(f"{c},{l}\n" for c, l in clips[18:]))
  flags = [f"--raw_dir={raw}", f"--out_dir={out}", f"--split_dir={splits}", "--frame_size=40"]
  assert prep(*flags).returncode == 0
  m = json.loads((out / "manifest.json").read_text())
  assert m["counts"]["train"]["total"] == 18 and m["counts"]["test"]["total"] == 6
  # An interrupted run: no manifest, the per-clip cache kept; the rerun completes from it.
  first = np.asarray(split_arrays(out, "test")["audio"])
  (out / "manifest.json").unlink()
  assert prep(*flags).returncode == 0
  np.testing.assert_array_equal(split_arrays(out, "test")["audio"], first)
  # other processing options get their own cache, never the stale clips
  assert prep(*flags[:-1], "--frame_size=24").returncode == 0
  assert split_arrays(out, "test")["visual"].shape[2:4] == (24, 24)
  assert len(list((out / ".cache").iterdir())) == 2


def test_bad_split_file_and_missing_dir(tmp_path):
  raw = tmp_path / "CREMA-D"
  make_fixture(raw)
  (tmp_path / "s").mkdir()
  (tmp_path / "s" / "train.csv").write_text("1001_IEO_NEU_XX,CALM\n")
  (tmp_path / "s" / "test.csv").write_text("")
  proc = prep(f"--raw_dir={raw}", f"--out_dir={tmp_path / 'o'}", f"--split_dir={tmp_path / 's'}")
  assert proc.returncode == 2 and "CALM" in proc.stderr and "Traceback" not in proc.stderr
  proc = prep(f"--raw_dir={tmp_path / 'none'}", f"--out_dir={tmp_path / 'o'}")
  assert proc.returncode == 2 and proc.stderr.startswith("error: --raw_dir=")
  proc = prep(f"--raw_dir={raw}", f"--out_dir={tmp_path / 'o'}", "--frames_per_sample=12")
  assert proc.returncode == 2 and "--frames_stored=9" in proc.stderr
  assert proc.stderr.count("\n") == 1


def test_help():
  proc = prep("--help")
  assert proc.returncode == 0 and proc.stdout.startswith("usage: python -m data_prep.cremad")
  for flag in ("--frames_stored", "--frames_per_sample", "--val_fraction", "--split_dir"):
    assert flag in proc.stdout
