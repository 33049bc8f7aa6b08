"""data_prep.cremad on a fixture tree laid out like CREMA-D (16 kHz wavs, FLV videos)."""

import json
import os
import subprocess
import sys

import av
import numpy as np
import soundfile

from experiments import run

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
  # bad inputs: a corrupt video, an unknown label, a wav without its video
  soundfile.write(audio / "1009_IEO_ANG_XX.wav", np.zeros(8000, np.float32), 16000)
  (video / "1009_IEO_ANG_XX.flv").write_bytes(b"FLV garbage")
  soundfile.write(audio / "1009_IEO_XYZ_XX.wav", np.zeros(8000, np.float32), 16000)
  soundfile.write(audio / "1010_IEO_SAD_XX.wav", np.zeros(8000, np.float32), 16000)
  return clips


def prep(*flags):
  return subprocess.run([sys.executable, "-m", "data_prep.cremad", *flags], cwd=ROOT,
                        capture_output=True, text=True)


def test_cremad_prep_end_to_end(tmp_path):
  raw, out = tmp_path / "CREMA-D", tmp_path / "out"
  make_fixture(raw)
  flags = [f"--raw_dir={raw}", f"--out_dir={out}", "--frame_size=40", "--frame_crop=32"]
  proc = prep(*flags)
  assert proc.returncode == 0, proc.stderr
  m = json.loads((out / "manifest.json").read_text())
  assert m["counts"]["train"]["total"] + m["counts"]["test"]["total"] == 24
  assert len(m["skipped"]) == 3, m["skipped"]  # corrupt video, unknown label, missing video
  audio = np.load(out / "train" / "audio.npy")
  visual = np.load(out / "train" / "visual.npy")
  assert audio.shape[1:] == (257, 188) and audio.dtype == np.float32
  assert visual.shape[1:] == (3, 40, 40, 3) and visual.dtype == np.uint8
  assert "nothing to do" in prep(*flags).stdout  # idempotent
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
  (out / "manifest.json").unlink()
  first = np.load(out / "test" / "audio.npy")
  assert prep(*flags).returncode == 0
  np.testing.assert_array_equal(np.load(out / "test" / "audio.npy"), first)


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
