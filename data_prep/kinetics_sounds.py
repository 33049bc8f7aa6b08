"""python -m data_prep.kinetics_sounds --raw_dir=D --out_dir=O --train_list=F --test_list=F

D holds the Kinetics-Sounds video files, ``<clip>.<mp4|mkv|webm|avi|flv>`` anywhere below it;
the list files are the OGM-GE ones (``clip,10,label`` lines, labels 0-30; copies in
../shared/data/kinetics_sounds_splits). From each video: the audio track resampled to
16 kHz mono -> log mel filterbank, 128 bins, 25 ms windows every 10 ms, padded or cut to
1,024 frames (Kaldi-style fbank as the OGM-GE/AST preprocessing; not bit-exact); frames
decoded at 1 fps, of which 3 are stored (the middles of the clip's thirds, train and test
alike) as uint8 at ``--frame_size`` squared, cropped on the device to 224. Clips are cached
one by one (an interrupted run resumes); unreadable or missing ones are skipped and listed.
"""

from __future__ import annotations

import os

import av
import numpy as np

from data_prep import common
from inforeg_jax.data import records

NUM_CLASSES = 31
RATE, WIN, HOP, N_FFT, MELS, FRAMES = 16000, 400, 160, 512, 128, 1024
VIDEO_EXT = (".mp4", ".mkv", ".webm", ".avi", ".flv", ".mov")


def mel_filterbank(n_mels: int, n_fft: int, rate: int) -> np.ndarray:
  """HTK-mel triangular filters [n_fft//2+1, n_mels], 20 Hz to Nyquist (Kaldi's defaults)."""
  mel = lambda f: 1127.0 * np.log1p(f / 700.0)
  edges = np.linspace(mel(20.0), mel(rate / 2), n_mels + 2)
  bins = mel(np.linspace(0, rate / 2, n_fft // 2 + 1))[:, None]
  lo, mid, hi = edges[:-2], edges[1:-1], edges[2:]
  return np.maximum(0, np.minimum((bins - lo) / (mid - lo), (hi - bins) / (hi - mid))).astype(np.float32)


FILTERS = mel_filterbank(MELS, N_FFT, RATE)


def log_fbank(wave: np.ndarray) -> np.ndarray:
  """[FRAMES, MELS] log mel energies of a 16 kHz clip (pre-emphasis 0.97, Povey-like Hann)."""
  x = wave.astype(np.float32)
  if len(x) < WIN:
    x = np.pad(x, (0, WIN - len(x)))
  n = 1 + (len(x) - WIN) // HOP
  frames = x[np.arange(WIN)[None, :] + HOP * np.arange(n)[:, None]]
  frames = frames - frames.mean(axis=1, keepdims=True)
  frames = np.concatenate([frames[:, :1], frames[:, 1:] - 0.97 * frames[:, :-1]], axis=1)
  frames = frames * np.hanning(WIN).astype(np.float32) ** 0.85
  power = np.abs(np.fft.rfft(frames, N_FFT, axis=1)) ** 2
  fbank = np.log(np.maximum(power @ FILTERS, np.finfo(np.float32).eps))
  out = np.zeros((FRAMES, MELS), np.float32)
  out[:min(n, FRAMES)] = fbank[:FRAMES]
  return out


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


def main() -> None:
  args = common.flags(__doc__.split("\n")[0], "raw_dir", "out_dir", "train_list", "test_list",
                      "frame_size", "frame_crop", frame_size="224", frame_crop="224")
  raw = common.require_dir(args.raw_dir, "--raw_dir", "the Kinetics-Sounds video files")
  splits = {"train": read_list(args.train_list), "test": read_list(args.test_list)}
  videos = {}
  for root, _, files in os.walk(raw):
    for name in files:
      stem, ext = os.path.splitext(name)
      if ext.lower() in VIDEO_EXT:
        videos[stem] = os.path.join(root, name)
  if not videos:
    raise common.PrepError(f"--raw_dir={raw} holds no video files ({', '.join(VIDEO_EXT)})")
  size = int(args.frame_size)
  options = {"frame_size": size, "frame_crop": args.frame_crop}
  fp = common.fingerprint(list(videos.values()) + [args.train_list, args.test_list], options)
  os.makedirs(args.out_dir, exist_ok=True)
  if common.already_done(args.out_dir, fp):
    return

  def process(clip: str) -> dict:
    if clip not in videos:
      raise FileNotFoundError(f"no video file named {clip}.* under {raw}")
    wave, frames = decode(videos[clip], size)
    return {"audio": log_fbank(wave), "visual": frames}

  skipped, counts = {}, {}
  for split, items in splits.items():
    arrays = common.process_clips(items, process, os.path.join(args.out_dir, ".cache"),
                                  f"Kinetics-Sounds {split}", skipped)
    if arrays is None:
      raise common.PrepError(f"no usable {split} clips: none of {args.train_list if split == 'train' else args.test_list}'s clips were found under {raw}")
    records.write_split(args.out_dir, split, arrays)
    counts[split] = common.split_counts(arrays["label"], NUM_CLASSES)
  common.finish(args.out_dir, {
      "name": "kinetics_sounds", "num_classes": NUM_CLASSES,
      "kinds": {"audio": "spectrogram", "visual": "frames"}, "frame_crop": int(args.frame_crop),
      "counts": counts, "shapes": {"audio": [FRAMES, MELS], "visual": [3, size, size, 3]},
      "source_fingerprint": fp, "options": options, "sources": {"videos": len(videos)},
  }, skipped)


if __name__ == "__main__":
  main()
