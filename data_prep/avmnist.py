"""AV-MNIST from the Free Spoken Digit Dataset and MNIST, every image used.

AV-MNIST-style pairs (Vielzeuf et al. 2018; MultiBench): a spoken digit from FSDD and a
handwritten digit of the same class from MNIST, degraded so that neither modality is trivial.
Every image is paired with a clip of its digit from its split's clips, the clips cycled evenly
(a seeded order), so a split holds one pair per image; each pair's audio gets its own white
noise at --audio_snr_db. Two constructions (--variant):

easy (the default; ours)
  images  lose the leading PCA components (fit on the training images only) that hold
          --image_energy_removed of their variance (0.75); the residual is kept.
  clips   FSDD's official split by recording index, every speaker in every split: indices
          0-4 test, 5-9 validation, 10-49 train.
  splits  with only MNIST's test set (t10k-*, 10,000 images): a seeded per-digit split
          80/10/10 (8,000 / 1,000 / 1,000); with MNIST's training set (train-* idx files, or
          TFDS): its 60,000 give train and validation (a seeded per-digit sixth, 10,000), the
          10,000 test images test.
  noise   -6 dB: the audio alone reaches about 0.75, the images alone about 0.9.
hard (closer to the published construction, _MFAS's avmnist_gen.py behind MultiBench's file)
  images  reconstructed from the top PCA components whose cumulative explained variance stays
          within --image_energy_kept (%(hard_kept)s, calibrated: 4 components on MNIST's test
          images; the published recipe's 0.25 keeps 3; at least one component), fit on the
          training images only; the other components are dropped and the mean is not added
          back.
  clips   speakers held out: 4 FSDD speakers train, 1 validates, 1 tests, all 50 recordings
          of each; --fold rotates them:
            fold  test      validation  train
            0     george    jackson     lucas nicolas theo yweweler
            1     jackson   lucas       george nicolas theo yweweler
            2     lucas     nicolas     george jackson theo yweweler
            3     nicolas   theo        george jackson lucas yweweler
            4     theo      yweweler    george jackson lucas nicolas
            5     yweweler  george      jackson lucas nicolas theo
          Recordings of other speakers are skipped (and listed).
  splits  with only MNIST's test set: a seeded per-digit split 60/10/30 (6,000 / 1,000 /
          3,000); with MNIST's training set: 55,000 train and 5,000 validation from it
          (MultiBench's sizes, per digit, seeded), the 10,000 test images test.
  noise   %(hard_snr)s dB. Both defaults calibrated on fold 0's validation split so that the
          audio alone scores near MultiBench's 0.42 and the images alone near its 0.65
          (about %(hard_image)s here; docs/DATA.md).

Sources (--source):
  files   --fsdd_dir (the recordings) and --mnist_dir (MNIST's idx files) or --tfds_data_dir
          (a TFDS data dir with `mnist` prepared in the array_record format).
  tfds    one command on a machine with network, no TensorFlow: TFDS's download manager
          fetches FSDD's archive from the address TFDS's `spoken_digit` uses and, unless
          --tfds_data_dir already holds a prepared `mnist` (read with tfds.data_source),
          MNIST's four idx files from TFDS's `mnist` addresses, into
          <tfds_data_dir>/downloads (checked against TFDS's registered checksums; files put in
          downloads/manual/ by hand are used instead). TFDS's own `spoken_digit` and `mnist`
          builders need TensorFlow to prepare, so the files are read here.

The prepared data does not keep which recording each pair's audio came from; for a
recording-level bootstrap, `recordings_of_test_pairs` replays the preparation from the same
files (certified by the stored test audio, bit for bit).

Audio: 8 kHz, tiled to 1 s, log |STFT| (n_fft 256, hop 128, Hann, centred): 129 x 63, area-
averaged to --audio_bins x --audio_frames (magnitudes averaged, then the log).
Visual: [1, 28, 28, 1] float32 (one frame, one channel), scaled to unit standard deviation
over the training images.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import hashlib
import os
import re
import zlib

import numpy as np

from data_prep import common
from inforeg_jax.data import records

NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)\.wav$")
RATE, SECONDS, N_FFT, HOP = 8000, 1.0, 256, 128
BINS, FRAMES = N_FFT // 2 + 1, 1 + int(RATE * SECONDS) // HOP  # 129 x 63
CLIP_SPLIT = ((0, 5, "test"), (5, 10, "val"), (10, 10**9, "train"))  # FSDD recording index
SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")  # FSDD's six, sorted
# Shares of the image pool per variant: (with MNIST's training set, with its test set only).
IMAGE_SPLIT = {"easy": ({"val": 1 / 6}, {"val": 0.1, "test": 0.1}),
               "hard": ({"val": 1 / 12}, {"val": 0.1, "test": 0.3})}
EASY_SNR_DB = -6.0
HARD_SNR_DB = -5.0  # calibrated: docs/results/avmnist_hard_calibration.json
HARD_IMAGE_ACC = "0.65"  # fold 0's validation accuracy of the images alone (the docstring's)
# HARD_ENERGY_KEPT: calibrated (the same file); the published recipe's is 0.25
EASY_ENERGY_REMOVED, HARD_ENERGY_KEPT = 0.75, 0.3
__doc__ = __doc__ % {"hard_snr": f"{HARD_SNR_DB:g}", "hard_image": HARD_IMAGE_ACC,
                     "hard_kept": f"{HARD_ENERGY_KEPT:g}"}


def fold_speakers(fold: int) -> dict[str, list[str]]:
  """{'train', 'val', 'test'}: the FSDD speakers of ``--variant=hard --fold=fold``."""
  test, val = SPEAKERS[fold], SPEAKERS[(fold + 1) % len(SPEAKERS)]
  return {"train": [s for s in SPEAKERS if s not in (test, val)], "val": [val], "test": [test]}


def fold_number(text: str) -> int:
  value = common.nonnegative_int(text)
  if value >= len(SPEAKERS):
    raise argparse.ArgumentTypeError(f"{value} is not a fold in 0..{len(SPEAKERS) - 1}")
  return value


FLAGS = {
    "variant": dict(default="easy", choices=["easy", "hard"],
                    help="easy: ours; hard: closer to the published construction (speakers "
                    "held out, images kept to their top PCA components; see above)"),
    "fold": dict(default=None, type=fold_number, metavar="K",
                 help="--variant=hard: which speakers are held out for test and validation, "
                 "0-5 (the table above; default 0)"),
    "source": dict(default="files", choices=["files", "tfds"],
                   help="files: --fsdd_dir and --mnist_dir/--tfds_data_dir; tfds: fetch both "
                   "with TFDS's download manager into --tfds_data_dir (see above)"),
    "fsdd_dir": dict(default="", help="--source=files (required there): a folder of FSDD's "
                     "{digit}_{speaker}_{index}.wav recordings (or the repository, with "
                     "recordings/ inside)"),
    "mnist_dir": dict(default="", help="MNIST idx files as published: t10k-images-idx3-ubyte"
                      "[.gz] and t10k-labels-idx1-ubyte[.gz]; with train-images/train-labels "
                      "there too, MNIST's training set feeds train and validation"),
    "tfds_data_dir": dict(default="", help="--source=files: instead of --mnist_dir, a TFDS data "
                          "dir holding `mnist` prepared in the array_record format (read with "
                          "tfds.data_source, no TensorFlow: 60,000 training + 10,000 test "
                          "images). --source=tfds: where TFDS keeps its data and downloads "
                          "(default there: $TFDS_DATA_DIR, else ~/tensorflow_datasets)"),
    "out_dir": dict(default="data/avmnist", help="where the prepared dataset goes "
                    "(data/avmnist is where experiments.run looks by default)"),
    "seed": dict(default=0, type=common.nonnegative_int,
                 help="seeds the image split, the pairing and the audio noise"),
    "image_energy_removed": dict(default=None, type=common.fraction, metavar="FRACTION",
                                 help="--variant=easy: fraction of the image variance whose "
                                 "leading PCA components are removed (default "
                                 f"{EASY_ENERGY_REMOVED})"),
    "image_energy_kept": dict(default=None, type=common.fraction, metavar="FRACTION",
                              help="--variant=hard: the images keep the top PCA components "
                              "whose cumulative explained variance is at most this (default "
                              f"{HARD_ENERGY_KEPT:g}, calibrated; the published recipe's: 0.25)"),
    "audio_snr_db": dict(default=None, type=common.finite_float, metavar="DB",
                         help="signal-to-noise ratio of the white noise added to each pair's "
                         f"audio (default {EASY_SNR_DB:g} for easy, {HARD_SNR_DB:g} for hard; "
                         "docs/DATA.md)"),
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


def idx_files(mnist_dir: str) -> dict[str, tuple[str, str]]:
  """{'test': (images, labels)[, 'train': ...]} idx paths in ``mnist_dir``."""
  files = {"test": (find_idx(mnist_dir, "t10k-images-idx3-ubyte"),
                    find_idx(mnist_dir, "t10k-labels-idx1-ubyte"))}
  train = (find_idx(mnist_dir, "train-images-idx3-ubyte", False),
           find_idx(mnist_dir, "train-labels-idx1-ubyte", False))
  if all(train):
    files["train"] = train
  elif any(train):
    raise common.PrepError(f"--mnist_dir={mnist_dir} has only one of train-images-idx3-ubyte "
                           "and train-labels-idx1-ubyte: add the other or remove it")
  return files


def mnist_from_files(files: dict[str, tuple[str, str]]) -> tuple[dict, dict]:
  """{'test': (images, labels)[, 'train': ...]} of idx files, and source facts."""
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
  return sets, facts


def mnist_from_idx(mnist_dir: str) -> tuple[dict, list[str], dict]:
  """{'test': (images, labels), ['train': ...]}, the files read, source facts."""
  files = idx_files(mnist_dir)
  sets, facts = mnist_from_files(files)
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
    for lo in common.progress(range(0, n, 5000), desc=f"TFDS mnist {split}", unit="5k"):
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


def split_images(sets: dict, rng, variant: str = "easy"
                 ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Disjoint train/val/test (images, labels): per digit, seeded (see the module doc)."""
  if "train" in sets:
    pool, fractions = sets["train"], IMAGE_SPLIT[variant][0]
    out = {"test": sets["test"]}
  else:
    pool, fractions = sets["test"], IMAGE_SPLIT[variant][1]
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


def published_components(energy: np.ndarray, kept: float) -> int:
  """How many leading components _MFAS's avmnist_gen.py keeps: those whose cumulative
  explained variance ``energy`` stays within ``kept``
  (``((np.cumsum(ratio) > kept) != 0).argmax()``), at least one."""
  return max(1, int(np.argmax(energy > kept)) if (energy > kept).any() else len(energy))


def fit_keep(fit_on: np.ndarray, kept: float):
  """A function images -> float32 images reconstructed from the leading principal components
  of ``fit_on`` (the training images, pixels / 255) that hold at most ``kept`` of their
  variance, the mean not added back (the published recipe), scaled by the training
  reconstructions' standard deviation (``degrade.scale``)."""
  fit = fit_on.reshape(len(fit_on), -1).astype(np.float64) / 255.0
  mean = fit.mean(0)
  _, s, vt = np.linalg.svd(fit - mean, full_matrices=False)
  energy = np.cumsum(s**2) / np.sum(s**2)
  lead = vt[:published_components(energy, kept)]
  project = lambda x: ((x - mean) @ lead.T) @ lead
  scale = float(project(fit).std()) + 1e-8

  def degrade(images: np.ndarray) -> np.ndarray:
    x = images.reshape(len(images), -1).astype(np.float64) / 255.0
    return (project(x) / scale).reshape(images.shape).astype(np.float32)

  degrade.components_kept = len(lead)
  degrade.energy_kept = float(energy[len(lead) - 1])
  degrade.scale = scale
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


def check_flags(args) -> None:
  """Variant-specific flags, resolved in place; one ``error:`` line for a misplaced one."""
  if args.audio_bins > BINS or args.audio_frames > FRAMES:
    raise common.PrepError(f"--audio_bins={args.audio_bins} --audio_frames={args.audio_frames}:"
                           f" at most {BINS} x {FRAMES} (the STFT's own size)")
  hard_only, easy_only = ("fold", "image_energy_kept"), ("image_energy_removed",)
  other = "easy" if args.variant == "hard" else "hard"
  for flag in easy_only if args.variant == "hard" else hard_only:
    if getattr(args, flag) is not None:
      raise common.PrepError(f"--{flag} applies to --variant={other} only, not "
                             f"--variant={args.variant}")
  if args.variant == "hard":
    args.fold = 0 if args.fold is None else args.fold
    args.image_energy_kept = (HARD_ENERGY_KEPT if args.image_energy_kept is None
                              else args.image_energy_kept)
  else:
    args.image_energy_removed = (EASY_ENERGY_REMOVED if args.image_energy_removed is None
                                 else args.image_energy_removed)
  if args.audio_snr_db is None:
    args.audio_snr_db = HARD_SNR_DB if args.variant == "hard" else EASY_SNR_DB
  if args.source == "tfds":
    for flag in ("fsdd_dir", "mnist_dir"):
      if getattr(args, flag):
        raise common.PrepError(f"--{flag} is for --source=files; --source=tfds fetches the data "
                               "into --tfds_data_dir")
  else:
    if not args.fsdd_dir:
      raise common.PrepError("--fsdd_dir is required with --source=files (or fetch FSDD with "
                             "--source=tfds)")
    if bool(args.mnist_dir) == bool(args.tfds_data_dir):
      raise common.PrepError("pass one MNIST source: --mnist_dir (idx files) or --tfds_data_dir "
                             "(TFDS's mnist)")


def find_wavs(fsdd: str, flag_text: str) -> list[str]:
  if os.path.isdir(os.path.join(fsdd, "recordings")):
    fsdd = os.path.join(fsdd, "recordings")
  wavs = sorted(glob.glob(os.path.join(fsdd, "*.wav")))
  if not wavs:
    raise common.PrepError(f"{flag_text} holds no .wav files "
                           "(expected FSDD's {digit}_{speaker}_{index}.wav)")
  return wavs


def clip_splitter(args):
  """(name match -> split or None, the reason a clip is left out, the split's clips in words)."""
  if args.variant == "easy":
    span = {s: f"FSDD recording indices {lo}-{min(hi, 50) - 1}" for lo, hi, s in CLIP_SPLIT}
    return (lambda m: clip_split(int(m.group(3)))), "", span
  by_speaker = {spk: s for s, spks in fold_speakers(args.fold).items() for spk in spks}
  span = {s: f"FSDD speaker(s) {', '.join(spks)}" for s, spks in
          fold_speakers(args.fold).items()}
  return (lambda m: by_speaker.get(m.group(2))), (
      f"speaker is not one of FSDD's six ({', '.join(SPEAKERS)}), the hard variant's folds"), span


def read_sources(args, claim: bool):
  """(wavs, FSDD in words, MNIST's idx paths or None, the TFDS data dir, MNIST's files): the
  inputs, found (and with --source=tfds fetched); ``claim``: the output folder claimed first."""
  if args.source == "files":
    fsdd = common.require_dir(args.fsdd_dir, "--fsdd_dir", "FSDD's recordings/*.wav")
    wavs, fsdd_text = find_wavs(fsdd, f"--fsdd_dir={args.fsdd_dir}"), args.fsdd_dir
    if args.mnist_dir:
      common.require_dir(args.mnist_dir, "--mnist_dir", "the MNIST idx files")
      mnist_paths = idx_files(args.mnist_dir)
    else:
      common.require_dir(args.tfds_data_dir, "--tfds_data_dir", "TFDS's mnist/ (array_record)")
      mnist_paths = None
    tfds_dir = args.tfds_data_dir
    if claim:
      common.claim_out_dir(args.out_dir)
  else:
    from data_prep import tfds_fetch

    tfds_dir = args.tfds_data_dir or tfds_fetch.default_data_dir()
    if claim:
      common.claim_out_dir(args.out_dir)
    fsdd_text = tfds_fetch.fetch_fsdd(tfds_dir)
    wavs = find_wavs(fsdd_text, fsdd_text)
    prepared = glob.glob(os.path.join(tfds_dir, "mnist", "*", "dataset_info.json"))
    mnist_paths = None if prepared else tfds_fetch.fetch_mnist(tfds_dir)
  if mnist_paths is None:
    mnist_files = tfds_files(tfds_dir)
  else:
    mnist_files = [p for split in ("test", "train") if split in mnist_paths
                   for p in mnist_paths[split]]
  return wavs, fsdd_text, mnist_paths, tfds_dir, mnist_files


def options_of(args, mnist_paths) -> dict:
  """What the prepared data is made with (the manifest's ``options``)."""
  if args.variant == "hard":
    options = {"variant": "hard", "fold": args.fold, "speakers": fold_speakers(args.fold),
               **{k: getattr(args, k) for k in ("seed", "image_energy_kept", "audio_snr_db",
                                                "audio_bins", "audio_frames")}}
  else:
    options = {k: getattr(args, k) for k in ("seed", "image_energy_removed", "audio_snr_db",
                                             "audio_bins", "audio_frames")}
  options.update(mnist_source="idx" if mnist_paths is not None else "tfds", rate=RATE,
                 seconds=SECONDS, n_fft=N_FFT, hop=HOP, stft_pad_mode="constant",
                 clip_split=("FSDD speakers: " + "; ".join(
                     f"{s} {', '.join(v)}" for s, v in fold_speakers(args.fold).items())
                             if args.variant == "hard" else
                             "FSDD index 0-4 test, 5-9 val, 10-49 train"))
  if args.source == "tfds":
    options["source"] = "tfds"
  return options


class Pairing:
  """Every split's images and the FSDD clip each is paired with, from the seeded generator
  ``rng`` (which then draws the audio noise, split by split: `paired_audio`)."""

  def __init__(self, args, wavs, fsdd_text, mnist_paths, tfds_dir):
    hard = args.variant == "hard"
    if mnist_paths is not None:
      sets, facts = mnist_from_files(mnist_paths)
    else:
      sets, facts = mnist_from_tfds(tfds_dir), {"mnist_tfds_data_dir": tfds_dir}
    self.rng = rng = np.random.default_rng(args.seed)
    self.images = split_images(sets, rng, args.variant)
    shares = IMAGE_SPLIT[args.variant]
    if "train" in sets:
      val = shares[0]["val"]
      facts["image_split"] = (
          "MNIST train: per-digit 5/6 train, 1/6 val; MNIST test: test" if not hard else
          f"MNIST train: per-digit {1 - val:.0%} train, {val:.0%} val; MNIST test: test")
    else:
      facts["image_split"] = "MNIST test set: per-digit " + "/".join(
          f"{round(100 * f)}" for f in (1 - sum(shares[1].values()), *shares[1].values()))
    if hard:
      self.degrade = fit_keep(self.images["train"][0], args.image_energy_kept)
      facts.update(pca_components_kept=self.degrade.components_kept,
                   pca_energy_kept=round(self.degrade.energy_kept, 6),
                   visual_scale=self.degrade.scale)
    else:
      self.degrade = fit_degrade(self.images["train"][0], args.image_energy_removed)
      facts["pca_components_removed"] = self.degrade.components_removed
    self.facts = facts

    split_of, outside, span = clip_splitter(args)
    self.skipped = skipped = {}
    clips = {s: {d: [] for d in range(10)} for _, _, s in CLIP_SPLIT}  # (recording, wave)
    for path in common.progress(wavs, desc="FSDD", unit="clip"):
      m = NAME.match(os.path.basename(path))
      if not m:
        skipped[path] = "name is not {digit}_{speaker}_{index}.wav"
        continue
      split = split_of(m)
      if split is None:
        skipped[path] = outside
        continue
      try:
        wave, _ = common.read_audio(path, RATE)
      except Exception as e:  # unreadable, truncated, non-finite, another rate: counted skip
        skipped[path] = f"{type(e).__name__}: {e}"
        continue
      clips[split][int(m.group(1))].append((m.group(0)[:-4], common.tile_to(wave,
                                                                            int(RATE * SECONDS))))

    # banks[split]: its clips' waves; recordings[split]: their names; assign[split][i]: the
    # bank index of image i's clip
    self.banks, self.recordings, self.assign = {}, {}, {}
    for split in ("train", "val", "test"):
      labels = self.images[split][1]
      bank = [(d, name, w) for d in range(10) for name, w in clips[split][d]]
      self.banks[split] = (np.stack([w for _, _, w in bank]) if bank
                           else np.zeros((0, int(RATE * SECONDS))))
      self.recordings[split] = [name for _, name, _ in bank]
      digit = np.array([d for d, _, _ in bank], np.int64)
      self.assign[split] = np.empty(len(labels), np.int64)
      for d in range(10):
        want = np.flatnonzero(labels == d)
        have = np.flatnonzero(digit == d)
        if len(want) and not len(have):
          raise common.PrepError(f"no usable {split} clips of digit {d} in {fsdd_text} "
                                 f"({span[split]}; see the skipped files above)"
                                 if skipped else f"no {split} clips of digit {d} in "
                                 f"{fsdd_text} ({span[split]})")
        self.assign[split][want] = rng.permutation(have)[np.arange(len(want))
                                                         % max(len(have), 1)]

  def paired_audio(self, split: str, args, spectrogram: bool = True) -> np.ndarray | None:
    """The split's audio [N, bins, frames]: each pair's clip plus its own white noise at
    --audio_snr_db, drawn from ``rng`` 2,000 pairs at a time (the splits in the order train,
    val, test; a replay draws the noise without the spectrograms: None)."""
    snr = 10 ** (args.audio_snr_db / 10)
    assign = self.assign[split]
    audio = (np.empty((len(assign), args.audio_bins, args.audio_frames), np.float32)
             if spectrogram else None)
    for lo in range(0, len(assign), 2000):
      waves = self.banks[split][assign[lo:lo + 2000]].astype(np.float32)
      noise = self.rng.standard_normal(waves.shape, dtype=np.float32)
      if spectrogram:
        waves += noise * np.sqrt(np.mean(waves**2, axis=1, keepdims=True) / snr)
        audio[lo:lo + 2000] = spectrograms(waves, args.audio_bins, args.audio_frames)
    return audio


def main(argv=None) -> None:
  args = common.flags("avmnist", __doc__, FLAGS, argv)
  check_flags(args)
  wavs, fsdd_text, mnist_paths, tfds_dir, mnist_files = read_sources(args, claim=True)
  options = options_of(args, mnist_paths)
  fp = common.fingerprint(wavs + mnist_files, options)
  if common.already_done(args.out_dir, fp):
    return

  pairing = Pairing(args, wavs, fsdd_text, mnist_paths, tfds_dir)
  counts, clip_counts, uses = {}, {}, {}
  with records.Preparation(args.out_dir) as prep:
    for split in ("train", "val", "test"):
      imgs, labels = pairing.images[split]
      prep.write_split(split, {
          "audio": pairing.paired_audio(split, args),
          "visual": pairing.degrade(imgs)[:, None, :, :, None],
          "label": labels.astype(np.int32)})
      counts[split] = common.split_counts(labels, 10)
      clip_counts[split] = len(pairing.banks[split])
      used = np.bincount(pairing.assign[split], minlength=len(pairing.banks[split]))
      uses[split] = [int(used.min()), int(used.max())] if used.size else [0, 0]
    sources = {**pairing.facts, "fsdd_clips": len(wavs), "clips_per_split": clip_counts,
               "pairs_per_clip_min_max": uses}
    if args.source == "tfds":
      sources["fsdd_recordings"] = fsdd_text
    manifest = {
        "name": "avmnist", "num_classes": 10,
        "kinds": {"audio": "spectrogram", "visual": "frames"}, "frame_crop": None,
        "counts": counts, "shapes": {"audio": [args.audio_bins, args.audio_frames],
                                     "visual": [1, 28, 28, 1]},
        "source_fingerprint": fp, "options": options, "command": args.command,
        "sources": sources, "variant": args.variant}
    if args.variant == "hard":
      manifest.update(fold=args.fold, speakers=options["speakers"])
    common.finish(prep, manifest, pairing.skipped)


def recordings_of_test_pairs(data_dir: str, fsdd_dir: str, mnist_dir: str) -> list[str]:
  """The FSDD recording ("{digit}_{speaker}_{index}") of each test pair of the AV-MNIST
  prepared in ``data_dir`` (the prepared data does not keep them): its preparation replayed
  from FSDD and MNIST with the manifest's options, certified only when the replay gives the
  stored test audio bit for bit (`common.PrepError` otherwise)."""
  manifest = records.read_manifest(data_dir)
  options = (manifest or {}).get("options") or {}
  if manifest is None or manifest.get("name") != "avmnist" or "seed" not in options:
    raise common.PrepError(f"{data_dir} holds no AV-MNIST prepared by data_prep.avmnist")
  if options.get("source") == "tfds" or options.get("mnist_source") != "idx":
    raise common.PrepError(f"{data_dir} was prepared from TFDS: its test recordings are "
                           "replayed from FSDD's files and MNIST's idx files only")
  hard = manifest.get("variant") == "hard"
  argv = [f"--variant={manifest.get('variant', 'easy')}", f"--fsdd_dir={fsdd_dir}",
          f"--mnist_dir={mnist_dir}", f"--out_dir={data_dir}",
          *(f"--{k}={options[k]}" for k in ("seed", "audio_snr_db", "audio_bins",
                                            "audio_frames",
                                            "fold" if hard else "image_energy_removed",
                                            *(["image_energy_kept"] if hard else [])))]
  args = common.flags("avmnist", __doc__, FLAGS, argv)
  check_flags(args)
  wavs, fsdd_text, mnist_paths, tfds_dir, _ = read_sources(args, claim=False)
  if options_of(args, mnist_paths) != options:
    raise common.PrepError(f"{data_dir} was prepared with options this code does not make "
                           "(another version of data_prep.avmnist): prepare it again")
  pairing = Pairing(args, wavs, fsdd_text, mnist_paths, tfds_dir)
  for split in ("train", "val"):
    pairing.paired_audio(split, args, spectrogram=False)  # their noise, drawn before the test's
  stored = records.load_prepared("avmnist", data_dir).test["audio"]
  if not np.array_equal(np.asarray(stored), pairing.paired_audio("test", args)):
    raise common.PrepError(f"{data_dir}'s test audio is not what --fsdd_dir={fsdd_dir} and "
                           f"--mnist_dir={mnist_dir} make with its options (other files?): "
                           "its test recordings are unknown")
  names = pairing.recordings["test"]
  return [names[i] for i in pairing.assign["test"]]


if __name__ == "__main__":
  common.cli(main)
