"""python -m data_prep.avmnist --fsdd_dir=D --mnist_dir=M --out_dir=O

AV-MNIST-style pairs (Vielzeuf et al. 2018; MultiBench): a spoken digit from the Free Spoken
Digit Dataset and a handwritten digit of the same class from MNIST, degraded so that neither
modality is trivial: the images lose the leading PCA components that hold
``--image_energy_removed`` of their variance (AV-MNIST removes 75%), the audio gets white noise
at ``--audio_snr_db``. Audio: 8 kHz, tiled to 1 s, STFT 256/128 -> log magnitude 129 x 63.
Split: FSDD's official one (recording indices 0-4 are test); test pairs draw their images
from the last 2,000 MNIST images, training pairs from the others.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import os
import re

import numpy as np
import soundfile
from tqdm import tqdm

from data_prep import common
from inforeg_jax.data import records

NAME = re.compile(r"^(\d)_([a-z]+)_(\d+)\.wav$")
RATE, SECONDS, N_FFT, HOP = 8000, 1.0, 256, 128


def read_idx(path: str, header: int) -> tuple[np.ndarray, str]:
  """The idx file's payload and the md5 of its uncompressed bytes."""
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    raw = f.read()
  magic = int.from_bytes(raw[:4], "big")
  if magic not in (2049, 2051):
    raise common.PrepError(f"{path} is not an MNIST idx file (magic {magic}); pass the "
                           "t10k-images/labels idx files as published")
  return np.frombuffer(raw, np.uint8, offset=header), hashlib.md5(raw).hexdigest()


def find(mnist_dir: str, stem: str) -> str:
  for name in (stem, stem + ".gz"):
    if os.path.exists(os.path.join(mnist_dir, name)):
      return os.path.join(mnist_dir, name)
  raise common.PrepError(f"--mnist_dir={mnist_dir} has no {stem}[.gz]: download the MNIST "
                         "test set (t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte) into it")


def degrade_images(images: np.ndarray, removed: float, fit_on: np.ndarray) -> np.ndarray:
  """Removes the leading principal components holding ``removed`` of the variance."""
  x = images.reshape(len(images), -1).astype(np.float32) / 255.0
  mean = fit_on.reshape(len(fit_on), -1).astype(np.float32).mean(0) / 255.0
  _, s, vt = np.linalg.svd(fit_on.reshape(len(fit_on), -1) / 255.0 - mean, full_matrices=False)
  energy = np.cumsum(s**2) / np.sum(s**2)
  k = int(np.searchsorted(energy, removed) + 1)
  lead = vt[:k]
  x = x - mean
  x = x - (x @ lead.T) @ lead
  return (x / (x.std() + 1e-8)).reshape(images.shape).astype(np.float32)


def load_clip(path: str, rng) -> np.ndarray:
  wave, rate = soundfile.read(path, dtype="float32")
  if rate != RATE:
    raise ValueError(f"sample rate {rate}, expected {RATE}")
  if wave.ndim != 1 or len(wave) == 0:
    raise ValueError("not a mono clip with samples")
  return wave


def main() -> None:
  args = common.flags(__doc__.split("\n")[0], "fsdd_dir", "mnist_dir", "out_dir", "seed",
                      "image_energy_removed", "audio_snr_db", seed="0",
                      image_energy_removed="0.75", audio_snr_db="10")
  fsdd = common.require_dir(args.fsdd_dir, "--fsdd_dir", "FSDD's recordings/*.wav")
  if os.path.isdir(os.path.join(fsdd, "recordings")):
    fsdd = os.path.join(fsdd, "recordings")
  common.require_dir(args.mnist_dir, "--mnist_dir", "the MNIST idx files")
  wavs = sorted(glob.glob(os.path.join(fsdd, "*.wav")))
  if not wavs:
    raise common.PrepError(f"--fsdd_dir={args.fsdd_dir} holds no .wav files "
                           "(expected FSDD's {digit}_{speaker}_{index}.wav)")
  img_path, lab_path = find(args.mnist_dir, "t10k-images-idx3-ubyte"), find(
      args.mnist_dir, "t10k-labels-idx1-ubyte")
  options = {k: getattr(args, k) for k in ("seed", "image_energy_removed", "audio_snr_db")}
  fp = common.fingerprint(wavs + [img_path, lab_path], options)
  os.makedirs(args.out_dir, exist_ok=True)
  if common.already_done(args.out_dir, fp):
    return

  images, images_md5 = read_idx(img_path, 16)
  images = images.reshape(-1, 28, 28)
  digits = read_idx(lab_path, 8)[0].astype(np.int32)
  if len(images) != len(digits):
    raise common.PrepError(f"{img_path} and {lab_path} disagree on the number of images")
  rng = np.random.default_rng(int(args.seed))
  pool = {"train": np.arange(len(images) - 2000), "test": np.arange(len(images) - 2000, len(images))}
  degraded = degrade_images(images, float(args.image_energy_removed), images[pool["train"]])

  clips = {"train": [], "test": []}
  skipped = {}
  snr = 10 ** (float(args.audio_snr_db) / 10)
  for path in tqdm(wavs, desc="FSDD", unit="clip"):
    m = NAME.match(os.path.basename(path))
    if not m:
      skipped[path] = "name is not {digit}_{speaker}_{index}.wav"
      continue
    try:
      wave = common.tile_to(load_clip(path, rng), int(RATE * SECONDS))
    except Exception as e:  # a corrupt or unreadable wav is reported, never fatal
      skipped[path] = f"unreadable wav ({e})"
      continue
    noise = rng.normal(size=wave.shape).astype(np.float32)
    wave = wave + noise * np.sqrt(np.mean(wave**2) / snr)
    split = "test" if int(m.group(3)) < 5 else "train"
    clips[split].append((int(m.group(1)), common.log_spectrogram(wave, N_FFT, HOP)))

  counts = {}
  for split, items in clips.items():
    if not items:
      raise common.PrepError(f"no usable {split} clips in {args.fsdd_dir}")
    labels = np.array([d for d, _ in items], np.int32)
    # each clip gets an image of its own digit, drawn without replacement from the split's pool
    chosen = np.empty(len(labels), np.int64)
    for d in range(10):
      want = np.flatnonzero(labels == d)
      cand = pool[split][digits[pool[split]] == d]
      chosen[want] = rng.choice(cand, size=len(want), replace=len(want) > len(cand))
    arrays = {"audio": np.stack([s for _, s in items]),
              "visual": degraded[chosen][:, None, :, :, None],  # one frame, one channel
              "label": labels}
    records.write_split(args.out_dir, split, arrays)
    counts[split] = common.split_counts(labels, 10)
  common.finish(args.out_dir, {
      "name": "avmnist", "num_classes": 10,
      "kinds": {"audio": "spectrogram", "visual": "frames"}, "frame_crop": None,
      "counts": counts, "shapes": {"audio": [129, 63], "visual": [1, 28, 28, 1]},
      "source_fingerprint": fp, "options": options,
      "sources": {"mnist_images_md5": images_md5, "fsdd_clips": len(wavs)},
  }, skipped)


if __name__ == "__main__":
  main()
