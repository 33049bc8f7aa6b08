"""python -m data_prep.cremad --raw_dir=D --out_dir=O [--split_dir=S]

D is the CREMA-D repository as published: AudioWAV/*.wav and VideoFlash/*.flv.
Audio as the released code: 22,050 Hz, tiled to 3 s, clipped to [-1, 1], STFT 512/353 (Hann,
centred), log(|S| + 1e-7) -> 257 x 188 float32. Video decoded with PyAV, keeping frames 0, 10
and 20 of every 30 fps second (the OGM-GE extraction); of those, ``--frames`` evenly spaced
ones are stored as uint8 at ``--frame_size`` squared, so that RandomResizedCrop to
``--frame_crop`` (224) and the deterministic evaluation resize run on the device. ``--split_dir`` reads train.csv/test.csv in
the OGM-GE format (``clip,LABEL`` lines); without it, a seeded split of the same sizes
(6,698 / 744 of 7,442). Clips are cached one by one under ``<out_dir>/.cache``, so an
interrupted run resumes; clips that cannot be read are skipped and listed in the report.
"""

from __future__ import annotations

import csv
import glob
import os

import av
import numpy as np
import soundfile
from scipy.signal import resample_poly

from data_prep import common
from inforeg_jax.data import records

CLASSES = {"NEU": 0, "HAP": 1, "SAD": 2, "FEA": 3, "DIS": 4, "ANG": 5}
RATE, SECONDS, N_FFT, HOP = 22050, 3, 512, 353
TEST_FRACTION = 744 / 7442


def audio_features(path: str) -> np.ndarray:
  wave, rate = soundfile.read(path, dtype="float32", always_2d=True)
  wave = wave.mean(axis=1)
  if len(wave) == 0:
    raise ValueError("no samples")
  if rate != RATE:
    g = np.gcd(int(rate), RATE)
    wave = resample_poly(wave, RATE // g, int(rate) // g).astype(np.float32)
  wave = np.clip(common.tile_to(wave, RATE * SECONDS), -1.0, 1.0)
  return common.log_spectrogram(wave, N_FFT, HOP)  # 257 x 188


def video_frames(path: str, count: int, size: int) -> np.ndarray:
  """``count`` evenly spaced frames among those at 0, 10, 20 of each 30 fps second."""
  kept = []
  with av.open(path) as container:
    stream = container.streams.video[0]
    fps = float(stream.average_rate or 30)
    step = max(int(round(fps / 3)), 1)
    for i, frame in enumerate(container.decode(stream)):
      if i % step == 0:
        kept.append(frame.reformat(width=size, height=size, format="rgb24").to_ndarray())
  if not kept:
    raise ValueError("no decodable video frames")
  idx = np.linspace(0, len(kept) - 1, count).round().astype(int)
  return np.stack([kept[i] for i in idx]).astype(np.uint8)


def read_split_csv(path: str) -> dict[str, int]:
  out = {}
  with open(path) as f:
    for row in csv.reader(f):
      if not row:
        continue
      if len(row) < 2 or row[1].strip() not in CLASSES:
        raise common.PrepError(f"{path}: line {row!r} is not 'clip,LABEL' with LABEL in "
                               f"{sorted(CLASSES)}")
      out[row[0].strip()] = CLASSES[row[1].strip()]
  return out


def main() -> None:
  args = common.flags(__doc__.split("\n")[0], "raw_dir", "out_dir", "split_dir", "frames",
                      "frame_size", "frame_crop", "seed", split_dir="", frames="3",
                      frame_size="224", frame_crop="224", seed="0")
  raw = common.require_dir(args.raw_dir, "--raw_dir", "CREMA-D's AudioWAV/ and VideoFlash/")
  for sub in ("AudioWAV", "VideoFlash"):
    common.require_dir(os.path.join(raw, sub), "--raw_dir", f"a {sub}/ folder (CREMA-D as published)")
  wavs = {os.path.basename(p)[:-4]: p for p in glob.glob(os.path.join(raw, "AudioWAV", "*.wav"))}
  if not wavs:
    raise common.PrepError(f"{raw}/AudioWAV holds no .wav files")
  frames, size = int(args.frames), int(args.frame_size)
  options = {"frames": frames, "frame_size": size, "frame_crop": args.frame_crop,
             "seed": args.seed}

  skipped: dict[str, str] = {}
  if args.split_dir:
    common.require_dir(args.split_dir, "--split_dir", "train.csv and test.csv (OGM-GE format)")
    splits = {s: read_split_csv(os.path.join(args.split_dir, f"{s}.csv")) for s in ("train", "test")}
    split_files = [os.path.join(args.split_dir, f"{s}.csv") for s in ("train", "test")]
  else:
    labelled = {}
    for clip in sorted(wavs):
      parts = clip.split("_")
      if len(parts) < 3 or parts[2] not in CLASSES:
        skipped[clip] = f"unknown label in the name (expected one of {sorted(CLASSES)})"
      else:
        labelled[clip] = CLASSES[parts[2]]
    order = np.random.default_rng(int(args.seed)).permutation(sorted(labelled))
    n_test = int(round(len(order) * TEST_FRACTION))
    splits = {"test": {c: labelled[c] for c in order[:n_test]},
              "train": {c: labelled[c] for c in order[n_test:]}}
    split_files = []
  fp = common.fingerprint(list(wavs.values()) + split_files, options)
  os.makedirs(args.out_dir, exist_ok=True)
  if common.already_done(args.out_dir, fp):
    return

  def process(clip: str) -> dict:
    wav, flv = wavs.get(clip), os.path.join(raw, "VideoFlash", f"{clip}.flv")
    if wav is None or not os.path.exists(flv):
      raise FileNotFoundError(f"no {'AudioWAV' if wav is None else 'VideoFlash'} file")
    return {"audio": audio_features(wav), "visual": video_frames(flv, frames, size)}

  counts, shapes = {}, {}
  for split, clips in splits.items():
    arrays = common.process_clips(sorted(clips.items()), process,
                                  os.path.join(args.out_dir, ".cache"), f"CREMA-D {split}",
                                  skipped)
    if arrays is None:
      raise common.PrepError(f"no usable {split} clips under {raw}")
    records.write_split(args.out_dir, split, arrays)
    counts[split] = common.split_counts(arrays["label"], len(CLASSES))
    shapes = {k: list(v.shape[1:]) for k, v in arrays.items() if k != "label"}
  common.finish(args.out_dir, {
      "name": "cremad", "num_classes": len(CLASSES), "classes": CLASSES,
      "kinds": {"audio": "spectrogram", "visual": "frames"}, "frame_crop": int(args.frame_crop),
      "counts": counts, "shapes": shapes, "source_fingerprint": fp, "options": options,
      "sources": {"clips": len(wavs), "split_dir": args.split_dir or None},
  }, skipped)


if __name__ == "__main__":
  main()
