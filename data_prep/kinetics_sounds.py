"""Kinetics-Sounds as the OGM-GE release prepares it.

--raw_dir holds the Kinetics-Sounds video files, ``<clip>.<mp4|mkv|webm|avi|flv|mov>``
anywhere below it; the list files are the OGM-GE ones (``clip,10,label`` lines, labels 0-30;
copies in ../shared/data/kinetics_sounds_splits). From each video:
  audio   resampled to 16 kHz mono, minus its mean -> Kaldi log mel filterbank as the
          release's process_audio.py calls torchaudio.compliance.kaldi.fbank (128 bins,
          25 ms Hann windows every 10 ms, dither 0) -> zero-padded or cut to 1,024 frames ->
          normalised (x + 4.503877) / (2 x 5.141276), the AST statistics the release uses.
  visual  decoded at 1 fps; 3 frames stored, the middles of the clip's thirds (train and test
          alike: the release's AVDataset also reads 3 fixed frames, one per third, and draws
          none at random), uint8 at --frame_size squared, cropped on the device to
          --frame_crop.
Clips are cached one by one (an interrupted run resumes); unreadable or missing ones are
skipped and listed.
"""

from __future__ import annotations

import os

import av
import numpy as np

from data_prep import common
from inforeg_jax.data import records

NUM_CLASSES = 31
RATE, WIN, HOP, N_FFT, MELS, FRAMES = 16000, 400, 160, 512, 128, 1024
NORM_MEAN, NORM_STD = -4.503877, 5.141276  # the release's (AST's) normalisation
VIDEO_EXT = (".mp4", ".mkv", ".webm", ".avi", ".flv", ".mov")


def mel_filterbank(n_mels: int, n_fft: int, rate: int) -> np.ndarray:
  """Kaldi's mel triangles [n_fft//2+1, n_mels]: HTK mel (1127 ln(1 + f/700)), 20 Hz to
  Nyquist, triangular in the mel domain, no normalisation, the Nyquist bin 0 (as
  torchaudio.compliance.kaldi.get_mel_banks). Some of the 128 low triangles hold no FFT bin
  at 16 kHz / 512 points: their energy is 0 and their log the floor, as in torchaudio (Kaldi
  itself, and kaldi-native-fbank, refuse these settings)."""
  mel = lambda f: 1127.0 * np.log1p(f / 700.0)
  edges = np.linspace(mel(20.0), mel(rate / 2), n_mels + 2)
  bins = mel(np.arange(n_fft // 2) * rate / n_fft)[:, None]
  lo, mid, hi = edges[:-2], edges[1:-1], edges[2:]
  banks = np.maximum(0, np.minimum((bins - lo) / (mid - lo), (hi - bins) / (hi - mid)))
  return np.concatenate([banks, np.zeros((1, n_mels))]).astype(np.float32)


FILTERS = mel_filterbank(MELS, N_FFT, RATE)


def kaldi_fbank(wave: np.ndarray) -> np.ndarray:
  """[frames, MELS] log mel energies of a 16 kHz clip, as ``torchaudio.compliance.kaldi.fbank(
  wave, htk_compat=True, sample_frequency=16000, use_energy=False, window_type='hanning',
  num_mel_bins=128, dither=0.0, frame_shift=10)``: 25 ms frames every 10 ms (snip edges),
  DC removed per frame, pre-emphasis 0.97, symmetric Hann window, 512-point power spectrum,
  log floored at float32 eps (checked against torchaudio in tests/golden/stft.json)."""
  x = np.asarray(wave, np.float32)
  n = 1 + (len(x) - WIN) // HOP if len(x) >= WIN else 0
  frames = x[np.arange(WIN)[None, :] + HOP * np.arange(n)[:, None]].astype(np.float64)
  frames -= frames.mean(axis=1, keepdims=True)
  frames[:, 1:] -= 0.97 * frames[:, :-1].copy()
  frames[:, 0] *= 1 - 0.97
  frames *= np.hanning(WIN)
  power = np.abs(np.fft.rfft(frames, N_FFT, axis=1)) ** 2
  return np.log(np.maximum(power @ FILTERS, np.finfo(np.float32).eps)).astype(np.float32)


def log_fbank(wave: np.ndarray) -> np.ndarray:
  """The released Kinetics-Sounds audio input [FRAMES, MELS]: the clip minus its mean ->
  `kaldi_fbank` -> zero-padded or cut to 1,024 frames -> (x - NORM_MEAN) / (2 NORM_STD)."""
  fbank = kaldi_fbank(wave - np.mean(wave))
  out = np.zeros((FRAMES, MELS), np.float32)
  out[:min(len(fbank), FRAMES)] = fbank[:FRAMES]
  return (out - NORM_MEAN) / (2 * NORM_STD)


def decode(path: str, size: int) -> tuple[np.ndarray, np.ndarray]:
  """(16 kHz mono audio, 3 uint8 frames) of one video."""
  with av.open(path) as container:
    if not container.streams.audio:
      raise ValueError("no audio stream")
    resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE)
    chunks = []
    for frame in container.decode(audio=0):
      chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
  with av.open(path) as container:
    stream = container.streams.video[0]
    fps = float(stream.average_rate or 25)
    per_second = [f.reformat(width=size, height=size, format="rgb24").to_ndarray()
                  for i, f in enumerate(container.decode(stream)) if i % max(round(fps), 1) == 0]
  if not chunks or not per_second:
    raise ValueError("no decodable audio or video")
  n = len(per_second)
  middles = [min(int((2 * k + 1) * n / 6), n - 1) for k in range(3)]  # middles of the thirds
  return np.concatenate(chunks), np.stack([per_second[i] for i in middles]).astype(np.uint8)


def read_list(path: str) -> list[tuple[str, int]]:
  if not os.path.isfile(path):
    raise common.PrepError(f"list file {path} does not exist (OGM-GE my_train.txt / my_test.txt)")
  items = []
  with open(path) as f:
    for n, line in enumerate(f, 1):
      parts = line.strip().split(",")
      if not line.strip():
        continue
      if len(parts) != 3 or not parts[2].isdigit() or int(parts[2]) >= NUM_CLASSES:
        raise common.PrepError(f"{path}:{n}: {line.strip()!r} is not 'clip,frames,label' with "
                               f"label in 0..{NUM_CLASSES - 1}")
      items.append((parts[0], int(parts[2])))
  return items


FLAGS = {
    "raw_dir": dict(help="the Kinetics-Sounds video files (any folder layout below it)"),
    "out_dir": dict(default="data/kinetics_sounds",
                    help="where the prepared dataset goes (experiments.run reads "
                    "data/kinetics_sounds by default)"),
    "train_list": dict(metavar="FILE", help="OGM-GE's my_train.txt (clip,frames,label lines)"),
    "test_list": dict(metavar="FILE", help="OGM-GE's my_test.txt"),
    "frame_size": dict(default=224, type=common.positive_int, metavar="PIXELS",
                       help="stored frames are resized to this many pixels squared"),
    "frame_crop": dict(default=224, type=common.positive_int, metavar="PIXELS",
                       help="the on-device RandomResizedCrop / evaluation resize output size"),
    "val_fraction": common.VAL_FRACTION_FLAG,
    "seed": dict(default=0, type=common.nonnegative_int, help="seeds the validation split"),
}


def main(argv=None) -> None:
  args = common.flags("kinetics_sounds", __doc__, FLAGS, argv)
  raw = common.require_dir(args.raw_dir, "--raw_dir", "the Kinetics-Sounds video files")
  splits = {"train": read_list(args.train_list), "test": read_list(args.test_list)}
  if args.val_fraction:
    train, val = common.carve_validation(splits["train"], args.val_fraction, args.seed,
                                         NUM_CLASSES)
    if val:  # (a few clips a class round to none)
      splits = {"train": train, "val": val, "test": splits["test"]}
  videos = {}
  for root, _, files in os.walk(raw):
    for name in files:
      stem, ext = os.path.splitext(name)
      if ext.lower() in VIDEO_EXT:
        videos[stem] = os.path.join(root, name)
  if not videos:
    raise common.PrepError(f"--raw_dir={raw} holds no video files ({', '.join(VIDEO_EXT)})")
  size = args.frame_size
  clip_options = {"frame_size": size, "rate": RATE, "win": WIN, "hop": HOP, "n_fft": N_FFT,
                  "mels": MELS, "frames": FRAMES, "norm": [NORM_MEAN, NORM_STD],
                  "window": "hanning", "frames_stored": 3}
  options = {**clip_options, "frame_crop": args.frame_crop, "val_fraction": args.val_fraction,
             "seed": args.seed}
  fp = common.fingerprint(list(videos.values()) + [args.train_list, args.test_list], options)
  common.claim_out_dir(args.out_dir)
  if common.already_done(args.out_dir, fp):
    return

  def process(clip: str) -> dict:
    if clip not in videos:
      raise FileNotFoundError(f"no video file named {clip}.* under {raw}")
    wave, frames = decode(videos[clip], size)
    return {"audio": log_fbank(common.check_wave(wave)), "visual": frames}

  cache = common.cache_dir(args.out_dir, clip_options)
  skipped, counts, usable = {}, {}, {}
  for split, items in splits.items():
    usable[split] = common.cached_clips(items, process, cache, f"Kinetics-Sounds {split}", skipped)
    if not usable[split]:
      listed = args.test_list if split == "test" else args.train_list
      raise common.PrepError(f"no usable {split} clips: none of {listed}'s clips were found "
                             f"under {raw}")
  with records.Preparation(args.out_dir) as prep:
    for split in splits:
      counts[split] = common.split_counts(common.write_cached(prep, split, usable[split]),
                                          NUM_CLASSES)
    common.finish(prep, {
        "name": "kinetics_sounds", "num_classes": NUM_CLASSES,
        "kinds": {"audio": "spectrogram", "visual": "frames"}, "frame_crop": args.frame_crop,
        "counts": counts, "shapes": {"audio": [FRAMES, MELS], "visual": [3, size, size, 3]},
        "source_fingerprint": fp, "options": options, "command": args.command,
        "sources": {"videos": len(videos), "cache": cache},
    }, skipped)


if __name__ == "__main__":
  common.cli(main)
