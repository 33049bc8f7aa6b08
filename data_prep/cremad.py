"""CREMA-D as the InfoReg / OGM-GE release trains on it.

--raw_dir is the CREMA-D repository as published: AudioWAV/*.wav and VideoFlash/*.flv.
  audio   as the released CramedDataset.py: 22,050 Hz, tiled to 3 s, clipped to [-1, 1],
          log(|STFT| + 1e-7) with n_fft 512, hop 353, Hann, centred (librosa.stft's
          defaults, computed with scipy's ShortTimeFFT) -> 257 x 188 float32.
  visual  decoded with PyAV, keeping frames 0, 10 and 20 of every 30 fps second, as the
          release's video_preprocessing.py extracts them (3 a second, 9 for a 3 s clip);
          --frames_stored of them are stored per clip (a clip with fewer has its frames
          repeated evenly, one with more is subsampled evenly) as uint8 at --frame_size
          squared. The manifest's frames_per_sample (--frames_per_sample, 3 as the release)
          makes training draw that many of them at random for every example, anew each epoch,
          and evaluation take evenly spaced ones, then RandomResizedCrop to --frame_crop /
          the evaluation resize, all on the device.
--split_dir reads train.csv/test.csv in the OGM-GE format (``clip,LABEL`` lines); without it,
a seeded split of the same sizes (6,698 / 744 of 7,442). --val_fraction (0.1) moves a seeded
per-class share of the training clips into a validation split (the release has none), the
same for every method.
Clips are cached one by one under <out_dir>/.cache, so an interrupted run resumes; clips that
cannot be read are skipped and listed in the report.
"""

from __future__ import annotations

import csv
import glob
import os

import av
import numpy as np
from scipy.signal import resample_poly

from data_prep import common
from inforeg_jax.data import records

CLASSES = {"NEU": 0, "HAP": 1, "SAD": 2, "FEA": 3, "DIS": 4, "ANG": 5}
RATE, SECONDS, N_FFT, HOP = 22050, 3, 512, 353
TEST_FRACTION = 744 / 7442


def audio_features(path: str) -> np.ndarray:
  wave, rate = common.read_audio(path)
  if rate != RATE:
    g = np.gcd(int(rate), RATE)
    wave = resample_poly(wave, RATE // g, int(rate) // g).astype(np.float32)
  wave = np.clip(common.tile_to(wave, RATE * SECONDS), -1.0, 1.0)
  return common.log_spectrogram(wave, N_FFT, HOP)  # 257 x 188


def stretch(n: int, count: int) -> np.ndarray:
  """``count`` indices into ``n`` items, evenly spread: each item repeated evenly when
  ``n < count``, an even subsample when ``n > count``."""
  return np.minimum(((np.arange(count) + 0.5) * n / count).astype(int), n - 1)


def video_frames(path: str, count: int, size: int) -> np.ndarray:
  """``count`` frames from those at 0, 10 and 20 of each 30 fps second (see `stretch`)."""
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
  return np.stack([kept[i] for i in stretch(len(kept), count)]).astype(np.uint8)


def read_split_csv(path: str) -> dict[str, int]:
  out = {}
  with open(path, encoding="utf-8-sig", newline="") as f:
    for row in csv.reader(f):
      if not row:
        continue
      if len(row) < 2 or row[1].strip() not in CLASSES:
        raise common.PrepError(f"{path}: line {row!r} is not 'clip,LABEL' with LABEL in "
                               f"{sorted(CLASSES)}")
      out[row[0].strip()] = CLASSES[row[1].strip()]
  return out


FLAGS = {
    "raw_dir": dict(help="CREMA-D as published: AudioWAV/*.wav and VideoFlash/*.flv"),
    "out_dir": dict(default="data/cremad",
                    help="where the prepared dataset goes (experiments.run reads "
                    "data/cremad by default)"),
    "split_dir": dict(default="", help="a folder with OGM-GE's train.csv and test.csv "
                      "(copies in ../shared/data/cremad_splits); default: a seeded split of "
                      "the same sizes"),
    "val_fraction": common.VAL_FRACTION_FLAG,
    "frames_stored": dict(default=9, type=common.positive_int, metavar="N",
                          help="extracted frames (3 a second) stored per clip, repeated or "
                          "subsampled evenly to this count (9 = 3 s)"),
    "frames_per_sample": dict(default=3, type=common.positive_int, metavar="N",
                              help="frames each example uses, drawn from the stored ones on the"
                              " device: at random in training, evenly spaced in evaluation"),
    "frame_size": dict(default=224, type=common.positive_int, metavar="PIXELS",
                       help="stored frames are resized to this many pixels squared"),
    "frame_crop": dict(default=224, type=common.positive_int, metavar="PIXELS",
                       help="the on-device RandomResizedCrop / evaluation resize output size"),
    "seed": dict(default=0, type=common.nonnegative_int,
                 help="seeds the default split and the validation split"),
}


def main(argv=None) -> None:
  args = common.flags("cremad", __doc__, FLAGS, argv)
  if args.frames_per_sample > args.frames_stored:
    raise common.PrepError(f"--frames_per_sample={args.frames_per_sample} is more than "
                           f"--frames_stored={args.frames_stored}")
  raw = common.require_dir(args.raw_dir, "--raw_dir", "CREMA-D's AudioWAV/ and VideoFlash/")
  for sub in ("AudioWAV", "VideoFlash"):
    common.require_dir(os.path.join(raw, sub), "--raw_dir",
                       f"a {sub}/ folder (CREMA-D as published)")
  wavs = {os.path.basename(p)[:-4]: p for p in glob.glob(os.path.join(raw, "AudioWAV", "*.wav"))}
  if not wavs:
    raise common.PrepError(f"{raw}/AudioWAV holds no .wav files")
  frames, size = args.frames_stored, args.frame_size
  clip_options = {"frames_stored": frames, "frame_size": size, "rate": RATE,
                  "seconds": SECONDS, "n_fft": N_FFT, "hop": HOP, "stft_pad_mode": "constant"}
  options = {**clip_options, "frames_per_sample": args.frames_per_sample,
             "frame_crop": args.frame_crop, "seed": args.seed, "val_fraction": args.val_fraction}

  skipped: dict[str, str] = {}
  if args.split_dir:
    common.require_dir(args.split_dir, "--split_dir", "train.csv and test.csv (OGM-GE format)")
    splits = {s: read_split_csv(os.path.join(args.split_dir, f"{s}.csv"))
              for s in ("train", "test")}
    split_files = [os.path.join(args.split_dir, f"{s}.csv") for s in ("train", "test")]
  else:
    labelled = {}
    for clip in sorted(wavs):
      parts = clip.split("_")
      if len(parts) < 3 or parts[2] not in CLASSES:
        skipped[clip] = f"unknown label in the name (expected one of {sorted(CLASSES)})"
      else:
        labelled[clip] = CLASSES[parts[2]]
    order = np.random.default_rng(args.seed).permutation(sorted(labelled))
    n_test = int(round(len(order) * TEST_FRACTION))
    splits = {"test": {c: labelled[c] for c in order[:n_test]},
              "train": {c: labelled[c] for c in order[n_test:]}}
    split_files = []
  if args.val_fraction:
    train, val = common.carve_validation(list(splits["train"].items()), args.val_fraction,
                                         args.seed, len(CLASSES))
    if val:  # (a few clips a class round to none)
      splits = {"train": dict(train), "val": dict(val), "test": splits["test"]}
  fp = common.fingerprint(list(wavs.values()) + split_files, options)
  common.claim_out_dir(args.out_dir)
  if common.already_done(args.out_dir, fp):
    return

  def process(clip: str) -> dict:
    wav, flv = wavs.get(clip), os.path.join(raw, "VideoFlash", f"{clip}.flv")
    if wav is None or not os.path.exists(flv):
      raise FileNotFoundError(f"no {'AudioWAV' if wav is None else 'VideoFlash'} file")
    return {"audio": audio_features(wav), "visual": video_frames(flv, frames, size)}

  cache = common.cache_dir(args.out_dir, clip_options)
  usable, counts = {}, {}
  for split, clips in splits.items():
    usable[split] = common.cached_clips(sorted(clips.items()), process, cache,
                                        f"CREMA-D {split}", skipped)
    if not usable[split]:
      raise common.PrepError(f"no usable {split} clips under {raw}")
  with records.Preparation(args.out_dir) as prep:
    for split in splits:
      counts[split] = common.split_counts(common.write_cached(prep, split, usable[split]),
                                          len(CLASSES))
    common.finish(prep, {
        "name": "cremad", "num_classes": len(CLASSES), "classes": CLASSES,
        "kinds": {"audio": "spectrogram", "visual": "frames"}, "frame_crop": args.frame_crop,
        "frames_stored": frames, "frames_per_sample": args.frames_per_sample,
        "counts": counts, "shapes": {"audio": [N_FFT // 2 + 1, 1 + RATE * SECONDS // HOP],
                                     "visual": [frames, size, size, 3]},
        "source_fingerprint": fp, "options": options, "command": args.command,
        "sources": {"clips": len(wavs), "split_dir": args.split_dir or None, "cache": cache},
    }, skipped)


if __name__ == "__main__":
  common.cli(main)
