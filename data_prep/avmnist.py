"""AV-MNIST from the Free Spoken Digit Dataset and MNIST, every image used.

AV-MNIST-style pairs (Vielzeuf et al. 2018; MultiBench): a spoken digit from FSDD and a
handwritten digit of the same class from MNIST, degraded so that neither modality is trivial:
the images lose the leading PCA components (fit on the training images only) that hold
--image_energy_removed of their variance (AV-MNIST removes 75%); each pair's audio gets its
own white noise at --audio_snr_db.

Splits, disjoint in clips and in images:
  clips   FSDD's official split: recording indices 0-4 test, 5-9 validation, 10-49 train.
  images  --mnist_dir with only MNIST's test set (t10k-*, 10,000 images): a seeded per-digit
          split 80/10/10 (8,000 / 1,000 / 1,000). With MNIST's training set too (train-*
          idx files in --mnist_dir, or --tfds_data_dir): its 60,000 images give train and
          validation (a seeded per-digit sixth, 10,000, for validation), the test set test.
Every image is paired with a clip of its digit from the same split, the clips cycled evenly
(a seeded order), so a split holds one pair per image.

Audio: 8 kHz, tiled to 1 s, log |STFT| (n_fft 256, hop 128, Hann, centred): 129 x 63, area-
averaged to --audio_bins x --audio_frames (magnitudes averaged, then the log).
Visual: [1, 28, 28, 1] float32 (one frame, one channel).
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import os
import re
import zlib

import numpy as np
from tqdm import tqdm

from data_prep import common
from inforeg_jax.data import records

NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)\.wav$")
RATE, SECONDS, N_FFT, HOP = 8000, 1.0, 256, 128
BINS, FRAMES = N_FFT // 2 + 1, 1 + int(RATE * SECONDS) // HOP  # 129 x 63
CLIP_SPLIT = ((0, 5, "test"), (5, 10, "val"), (10, 10**9, "train"))  # FSDD recording index
FLAGS = {
    "fsdd_dir": dict(help="FSDD: a folder of {digit}_{speaker}_{index}.wav recordings (or "
                     "the repository, with recordings/ inside)"),
    "mnist_dir": dict(default="", help="MNIST idx files as published: t10k-images-idx3-ubyte"
                      "[.gz] and t10k-labels-idx1-ubyte[.gz]; with train-images/train-labels "
                      "there too, MNIST's training set feeds train and validation"),
    "tfds_data_dir": dict(default="", help="instead of --mnist_dir: a TFDS data_dir holding "
                          "`mnist` prepared in the array_record format (read with "
                          "tfds.data_source, no TensorFlow): 60,000 training + 10,000 test "
                          "images. The audio still comes from --fsdd_dir: TFDS's "
                          "`spoken_digit` cannot be read without TensorFlow"),
    "out_dir": dict(default="data/avmnist", help="where the prepared dataset goes (data/avmnist is where "
                    "experiments.run looks by default)"),
    "seed": dict(default=0, type=common.nonnegative_int,
                 help="seeds the image split, the pairing and the audio noise"),
    "image_energy_removed": dict(default=0.75, type=common.fraction, metavar="FRACTION",
                                 help="fraction of the image variance whose leading PCA "
                                 "components are removed"),
    "audio_snr_db": dict(default=-6.0, type=common.finite_float, metavar="DB",
                         help="signal-to-noise ratio of the white noise added to each pair's "
                         "audio (-6: the audio alone reaches about 0.75, the images alone "
                         "about 0.9, so that fusion is off the ceiling; docs/RESULTS.md)"),
    "audio_bins": dict(default=32, type=common.positive_int, metavar="F",
                       help=f"frequency rows of the spectrogram, 1..{BINS} (the {BINS} STFT "
                       "bins area-averaged; 32 keeps a run near a minute on 2 cores)"),
    "audio_frames": dict(default=32, type=common.positive_int, metavar="T",
                         help=f"time columns of the spectrogram, 1..{FRAMES} (the {FRAMES} "
                         "STFT frames area-averaged)"),
}


# ----------------------------------------------------------------------------------------------
# MNIST


def read_idx(path: str, kind: str) -> tuple[np.ndarray, str]:
  """The images [N, 28, 28] or labels [N] of an idx file and the md5 of its uncompressed
  bytes; a truncated or damaged file is one `error:` line naming it."""
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      raw = f.read()
  except (EOFError, OSError, zlib.error) as e:
    raise common.PrepError(f"{path} is truncated or damaged ({type(e).__name__}: {e}); "
                           "download it again") from None
  magic, ndim = (2051, 3) if kind == "images" else (2049, 1)
  header = 4 + 4 * ndim
  got = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
  if got != magic:
    raise common.PrepError(f"{path} is not an MNIST {kind} idx file (magic {got}, expected "
                           f"{magic}); pass the idx files as published")
  dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
  if len(raw) != header + int(np.prod(dims)) or (kind == "images" and dims[1:] != [28, 28]):
    raise common.PrepError(f"{path} is damaged: its header announces {kind} of shape {dims} "
                           f"({header + int(np.prod(dims))} bytes), the file holds {len(raw)} "
                           "bytes; download it again")
  data = np.frombuffer(raw, np.uint8, offset=header).reshape(dims)
  if kind == "labels" and data.max(initial=0) > 9:
    raise common.PrepError(f"{path} is damaged: it holds label {int(data.max())}, not a digit")
  return data, hashlib.md5(raw).hexdigest()


def find_idx(mnist_dir: str, stem: str, required: bool = True) -> str | None:
  for name in (stem, stem + ".gz"):
    if os.path.exists(os.path.join(mnist_dir, name)):
      return os.path.join(mnist_dir, name)
  if not required:
    return None
  raise common.PrepError(f"--mnist_dir={mnist_dir} has no {stem}[.gz]: download the MNIST "
                         "test set (t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte) into it")


def mnist_from_idx(mnist_dir: str) -> tuple[dict, list[str], dict]:
  """{'test': (images, labels), ['train': ...]}, the files read, source facts."""
  files = {"test": (find_idx(mnist_dir, "t10k-images-idx3-ubyte"),
                    find_idx(mnist_dir, "t10k-labels-idx1-ubyte"))}
  train = (find_idx(mnist_dir, "train-images-idx3-ubyte", False),
           find_idx(mnist_dir, "train-labels-idx1-ubyte", False))
  if all(train):
    files["train"] = train
  elif any(train):
    raise common.PrepError(f"--mnist_dir={mnist_dir} has only one of train-images-idx3-ubyte "
                           "and train-labels-idx1-ubyte: add the other or remove it")
  sets, facts = {}, {}
  for split, (img_path, lab_path) in files.items():
    images, images_md5 = read_idx(img_path, "images")
    labels = read_idx(lab_path, "labels")[0]
    if len(images) != len(labels):
      raise common.PrepError(f"{img_path} ({len(images)} images) and {lab_path} "
                             f"({len(labels)} labels) disagree")
    sets[split] = (images, labels.astype(np.int32))
    facts[f"mnist_{split}_images_md5"] = images_md5
  if "train" not in sets:
    facts["mnist_images_md5"] = facts["mnist_test_images_md5"]
  return sets, [p for pair in files.values() for p in pair], facts


def tfds_files(data_dir: str) -> list[str]:
  return sorted(p for p in glob.glob(os.path.join(data_dir, "mnist", "**", "*"), recursive=True)
                if os.path.isfile(p))


def mnist_from_tfds(data_dir: str) -> dict:
  """{'train', 'test'}: (images, labels) of TFDS's ``mnist`` via ``tfds.data_source``."""
  try:
    import tensorflow_datasets as tfds  # only on this path: the prep extra
  except ImportError as e:
    raise common.PrepError(f"--tfds_data_dir needs tensorflow_datasets ({e}): pip install "
                           "'inforeg-jax[prep]'") from None
  from absl import logging as absl_logging  # tfds logs its warnings through absl

  absl_logging.set_verbosity(absl_logging.ERROR)
  if not glob.glob(os.path.join(data_dir, "mnist", "*", "dataset_info.json")):
    raise common.PrepError(f"--tfds_data_dir={data_dir} holds no prepared `mnist` (no "
                           "mnist/<version>/dataset_info.json); prepare TFDS's mnist there in "
                           "the array_record format")
  sets = {}
  for split in ("train", "test"):
    try:
      source = tfds.data_source("mnist", split=split, data_dir=data_dir, download=False)
      n = len(source)
    except Exception as e:  # not prepared, another file format, another version, ...
      why = (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0]
      raise common.PrepError(
          f"--tfds_data_dir={data_dir} holds no readable `mnist` {split} split in the "
          f"array_record format ({why}); prepare it with tfds (file_format='array_record')"
      ) from None
    images = np.empty((n, 28, 28), np.uint8)
    labels = np.empty(n, np.int32)
    for lo in tqdm(range(0, n, 5000), desc=f"TFDS mnist {split}", unit="5k"):
      for i, ex in enumerate(source.__getitems__(list(range(lo, min(lo + 5000, n))))):
        images[lo + i] = np.asarray(ex["image"]).reshape(28, 28)
        labels[lo + i] = int(ex["label"])
    sets[split] = (images, labels)
  return sets


def quotas(counts: np.ndarray, total: int) -> np.ndarray:
  """Integers proportional to ``counts`` summing to ``total`` (largest remainders)."""
  raw = counts * total / max(counts.sum(), 1)
  out = np.floor(raw).astype(int)
  out[np.argsort(-(raw - out), kind="stable")[:total - out.sum()]] += 1
  return out


def split_images(sets: dict, rng) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Disjoint train/val/test (images, labels): per digit, seeded (see the module doc)."""
  if "train" in sets:
    pool, fractions = sets["train"], {"val": 1 / 6}
    out = {"test": sets["test"]}
  else:
    pool, fractions = sets["test"], {"val": 0.1, "test": 0.1}
    out = {}
  images, labels = pool
  counts = np.bincount(labels, minlength=10)
  take = {s: quotas(counts, int(round(f * len(labels)))) for s, f in fractions.items()}
  chosen = {s: [] for s in ("train", *fractions)}
  for d in range(10):
    idx = rng.permutation(np.flatnonzero(labels == d))
    lo = 0
    for s in fractions:
      chosen[s].append(idx[lo:lo + take[s][d]])
      lo += take[s][d]
    chosen["train"].append(idx[lo:])
  for s, parts in chosen.items():
    idx = np.sort(np.concatenate(parts))
    out[s] = (images[idx], labels[idx])
  return out


def fit_degrade(fit_on: np.ndarray, removed: float):
  """A function images -> float32 images without the leading principal components (of
  ``fit_on``, the training images) that hold ``removed`` of the variance, scaled by the
  training residuals' standard deviation."""
  fit = fit_on.reshape(len(fit_on), -1).astype(np.float32) / 255.0
  mean = fit.mean(0)
  _, s, vt = np.linalg.svd(fit - mean, full_matrices=False)
  energy = np.cumsum(s**2) / np.sum(s**2)
  lead = vt[:int(np.searchsorted(energy, removed) + 1)] if removed > 0 else vt[:0]
  project = lambda x: (x - mean) - ((x - mean) @ lead.T) @ lead
  scale = project(fit).std() + 1e-8

  def degrade(images: np.ndarray) -> np.ndarray:
    x = images.reshape(len(images), -1).astype(np.float32) / 255.0
    return (project(x) / scale).reshape(images.shape).astype(np.float32)

  degrade.components_removed = len(lead)
  return degrade


# ----------------------------------------------------------------------------------------------
# Audio


def clip_split(index: int) -> str:
  return next(s for lo, hi, s in CLIP_SPLIT if lo <= index < hi)


def spectrograms(waves: np.ndarray, bins: int, frames: int) -> np.ndarray:
  """[N, samples] -> [N, bins, frames] log magnitude, area-averaged from 129 x 63."""
  rf, rt = common.area_matrix(BINS, bins), common.area_matrix(FRAMES, frames)
  out = np.empty((len(waves), bins, frames), np.float32)
  for lo in range(0, len(waves), 1000):
    mag = common.log_spectrogram(waves[lo:lo + 1000], N_FFT, HOP, magnitude=True)
    out[lo:lo + 1000] = np.log(rf @ mag @ rt.T + 1e-7)
  return out


def main(argv=None) -> None:
  args = common.flags("avmnist", __doc__, FLAGS, argv)
  if args.audio_bins > BINS or args.audio_frames > FRAMES:
    raise common.PrepError(f"--audio_bins={args.audio_bins} --audio_frames={args.audio_frames}:"
                           f" at most {BINS} x {FRAMES} (the STFT's own size)")
  if bool(args.mnist_dir) == bool(args.tfds_data_dir):
    raise common.PrepError("pass one MNIST source: --mnist_dir (idx files) or --tfds_data_dir "
                           "(TFDS's mnist)")
  fsdd = common.require_dir(args.fsdd_dir, "--fsdd_dir", "FSDD's recordings/*.wav")
  if os.path.isdir(os.path.join(fsdd, "recordings")):
    fsdd = os.path.join(fsdd, "recordings")
  wavs = sorted(glob.glob(os.path.join(fsdd, "*.wav")))
  if not wavs:
    raise common.PrepError(f"--fsdd_dir={args.fsdd_dir} holds no .wav files "
                           "(expected FSDD's {digit}_{speaker}_{index}.wav)")
  if args.mnist_dir:
    common.require_dir(args.mnist_dir, "--mnist_dir", "the MNIST idx files")
    mnist_files = [p for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
                                  "train-images-idx3-ubyte", "train-labels-idx1-ubyte")
                   for p in [find_idx(args.mnist_dir, stem, stem.startswith("t10k"))] if p]
  else:
    common.require_dir(args.tfds_data_dir, "--tfds_data_dir", "TFDS's mnist/ (array_record)")
    mnist_files = tfds_files(args.tfds_data_dir)
  options = {k: getattr(args, k) for k in ("seed", "image_energy_removed", "audio_snr_db",
                                           "audio_bins", "audio_frames")}
  options.update(mnist_source="tfds" if args.tfds_data_dir else "idx", rate=RATE,
                 seconds=SECONDS, n_fft=N_FFT, hop=HOP, stft_pad_mode="constant",
                 clip_split="FSDD index 0-4 test, 5-9 val, 10-49 train")
  fp = common.fingerprint(wavs + mnist_files, options)
  os.makedirs(args.out_dir, exist_ok=True)
  if common.already_done(args.out_dir, fp):
    return

  if args.mnist_dir:
    sets, _, facts = mnist_from_idx(args.mnist_dir)
  else:
    sets, facts = mnist_from_tfds(args.tfds_data_dir), {"mnist_tfds_data_dir": args.tfds_data_dir}
  rng = np.random.default_rng(args.seed)
  images = split_images(sets, rng)
  facts["image_split"] = ("MNIST train: per-digit 5/6 train, 1/6 val; MNIST test: test"
                          if "train" in sets else "MNIST test set: per-digit 80/10/10")
  degrade = fit_degrade(images["train"][0], args.image_energy_removed)
  facts["pca_components_removed"] = degrade.components_removed

  skipped: dict[str, str] = {}
  clips: dict[str, dict[int, list[np.ndarray]]] = {s: {d: [] for d in range(10)}
                                                   for _, _, s in CLIP_SPLIT}
  for path in tqdm(wavs, desc="FSDD", unit="clip"):
    m = NAME.match(os.path.basename(path))
    if not m:
      skipped[path] = "name is not {digit}_{speaker}_{index}.wav"
      continue
    try:
      wave, _ = common.read_audio(path, RATE)
    except Exception as e:  # unreadable, truncated, non-finite, another rate: counted skip
      skipped[path] = f"{type(e).__name__}: {e}"
      continue
    clips[clip_split(int(m.group(3)))][int(m.group(1))].append(
        common.tile_to(wave, int(RATE * SECONDS)))

  banks, assign = {}, {}
  for split in ("train", "val", "test"):
    labels = images[split][1]
    bank = [(d, w) for d in range(10) for w in clips[split][d]]
    banks[split] = np.stack([w for _, w in bank]) if bank else np.zeros((0, int(RATE * SECONDS)))
    digit = np.array([d for d, _ in bank], np.int64)
    assign[split] = np.empty(len(labels), np.int64)
    for d in range(10):
      want = np.flatnonzero(labels == d)
      have = np.flatnonzero(digit == d)
      if len(want) and not len(have):
        span = next(f"{lo}-{min(hi, 50) - 1}" for lo, hi, s in CLIP_SPLIT if s == split)
        raise common.PrepError(f"no usable {split} clips of digit {d} in {args.fsdd_dir} "
                               f"(FSDD recording indices {span}; see the skipped files above)"
                               if skipped else f"no {split} clips of digit {d} in "
                               f"{args.fsdd_dir} (FSDD recording indices {span})")
      assign[split][want] = rng.permutation(have)[np.arange(len(want)) % max(len(have), 1)]

  snr = 10 ** (args.audio_snr_db / 10)
  counts, clip_counts, uses = {}, {}, {}
  with records.Preparation(args.out_dir) as prep:
    for split in ("train", "val", "test"):
      imgs, labels = images[split]
      audio = np.empty((len(labels), args.audio_bins, args.audio_frames), np.float32)
      for lo in range(0, len(labels), 2000):
        waves = banks[split][assign[split][lo:lo + 2000]].astype(np.float32)
        noise = rng.standard_normal(waves.shape, dtype=np.float32)
        waves += noise * np.sqrt(np.mean(waves**2, axis=1, keepdims=True) / snr)
        audio[lo:lo + 2000] = spectrograms(waves, args.audio_bins, args.audio_frames)
      prep.write_split(split, {
          "audio": audio,
          "visual": degrade(imgs)[:, None, :, :, None],
          "label": labels.astype(np.int32)})
      counts[split] = common.split_counts(labels, 10)
      clip_counts[split] = len(banks[split])
      used = np.bincount(assign[split], minlength=len(banks[split]))
      uses[split] = [int(used.min()), int(used.max())] if used.size else [0, 0]
    common.finish(prep, {
        "name": "avmnist", "num_classes": 10,
        "kinds": {"audio": "spectrogram", "visual": "frames"}, "frame_crop": None,
        "counts": counts, "shapes": {"audio": [args.audio_bins, args.audio_frames],
                                     "visual": [1, 28, 28, 1]},
        "source_fingerprint": fp, "options": options, "command": args.command,
        "sources": {**facts, "fsdd_clips": len(wavs), "clips_per_split": clip_counts,
                    "pairs_per_clip_min_max": uses},
    }, skipped)


if __name__ == "__main__":
  main()
