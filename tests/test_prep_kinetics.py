"""data_prep.kinetics_sounds on a fixture tree of short mp4 videos with an audio track."""

import json
import os
import subprocess
import sys

import av
import numpy as np

from experiments import run
from inforeg_jax.data import records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_mp4(path, seconds, shade, tone):
  with av.open(str(path), "w") as c:
    v = c.add_stream("mpeg4", rate=25)
    v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
    a = c.add_stream("aac", rate=22050)
    a.layout = "mono"
    for i in range(int(25 * seconds)):
      img = np.full((48, 64, 3), (shade + 4 * i) % 255, np.uint8)
      for p in v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
        c.mux(p)
    t = np.arange(int(22050 * seconds)) / 22050
    wave = (0.3 * np.sin(2 * np.pi * tone * t)).astype(np.float32)
    for k in range(0, len(wave), 1024):
      frame = av.AudioFrame.from_ndarray(wave[None, k:k + 1024], format="fltp", layout="mono")
      frame.sample_rate = 22050
      for p in a.encode(frame):
        c.mux(p)
    for stream in (v, a):
      for p in stream.encode():
        c.mux(p)


def make_fixture(root):
  videos = root / "videos" / "class_x"
  videos.mkdir(parents=True)
  train, test = [], []
  for i in range(12):
    label = i % 3
    clip = f"clip{i:02d}_000010_000020"
    write_mp4(videos / f"{clip}.mp4", 3.2, 60 * label, 300 + 200 * label)
    (test if i >= 9 else train).append(f"{clip},10,{label}\n")
  (videos / "broken_000001_000011.mp4").write_bytes(b"\x00\x00\x00 not a video")
  train.append("broken_000001_000011,10,2\n")
  train.append("absent_000001_000011,10,1\n")
  (root / "train.txt").write_text("".join(train))
  (root / "test.txt").write_text("".join(test))
  return root / "videos"


def split_arrays(out, split):
  m = json.loads((out / "manifest.json").read_text())
  return records.read_split(str(out / m["version"] / split))


def prep(root, out, train="train.txt"):
  return subprocess.run([sys.executable, "-m", "data_prep.kinetics_sounds",
                         f"--raw_dir={root / 'videos'}", f"--out_dir={out}",
                         f"--train_list={root / train}", f"--test_list={root / 'test.txt'}",
                         "--frame_size=40", "--frame_crop=32"],
                        cwd=ROOT, capture_output=True, text=True)


def test_kinetics_sounds_prep_end_to_end(tmp_path):
  make_fixture(tmp_path)
  out = tmp_path / "out"
  proc = prep(tmp_path, out)
  assert proc.returncode == 0, proc.stderr
  m = json.loads((out / "manifest.json").read_text())
  assert m["counts"]["train"]["total"] == 9 and m["counts"]["test"]["total"] == 3
  assert set(m["skipped"]) == {"broken_000001_000011", "absent_000001_000011"}
  audio = np.asarray(split_arrays(out, "train")["audio"])
  assert audio.shape[1:] == (1024, 128) and np.isfinite(audio).all()
  # ~3.2 s at 10 ms: ~320 frames, then zeros normalised as the release does
  np.testing.assert_allclose(audio[:, 400:], 4.503877 / (2 * 5.141276), atol=1e-6)
  # the 300/500/700 Hz tones land in different mel bins
  peaks = [int(np.argmax(audio[i, :100].mean(0))) for i in range(3)]
  assert peaks[0] < peaks[1] < peaks[2]
  assert split_arrays(out, "test")["visual"].shape[1:] == (3, 40, 40, 3)
  assert m["command"].startswith("python -m data_prep.kinetics_sounds")
  assert "nothing to do" in prep(tmp_path, out).stdout
  assert run.main(["--dataset=kinetics_sounds", f"--data_dir={out}", "--tiny", "--epochs=1",
                   "--batch_size=4", f"--workdir={tmp_path / 'run'}"]) == 0


def test_bad_list_line(tmp_path):
  make_fixture(tmp_path)
  (tmp_path / "bad.txt").write_text("clip00_000010_000020,10,77\n")
  proc = prep(tmp_path, tmp_path / "out", train="bad.txt")
  assert proc.returncode == 2 and "label in 0..30" in proc.stderr
  assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


def test_help():
  proc = subprocess.run([sys.executable, "-m", "data_prep.kinetics_sounds", "--help"], cwd=ROOT,
                        capture_output=True, text=True)
  assert proc.returncode == 0
  assert proc.stdout.startswith("usage: python -m data_prep.kinetics_sounds")
  assert "--frame_crop PIXELS" in proc.stdout and "(required)" in proc.stdout
