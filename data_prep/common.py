"""What every preparation shares: flags, input checks, idempotency, the report, audio maths.

A preparation is idempotent: its manifest records the checksum of its inputs and options, and
a second run with the same ones ends at once. Splits are written atomically and the manifest
last (``inforeg_jax.data.records``), so an interrupted run leaves no complete-looking output.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from typing import Iterable

import numpy as np
from tqdm import tqdm

from inforeg_jax.data import records


class PrepError(SystemExit):
  """One clear line for the user, exit status 2."""

  def __init__(self, message: str):
    print(f"error: {message}", file=sys.stderr)
    super().__init__(2)


def require_dir(path: str, flag: str, what: str) -> str:
  if not path or not os.path.isdir(path):
    raise PrepError(f"{flag}={path or '(missing)'} is not a directory; it should hold {what}")
  return path


def fingerprint(files: Iterable[str], options: dict) -> str:
  """Checksum of the inputs (names, sizes, mtimes) and the options."""
  h = hashlib.sha256(json.dumps(options, sort_keys=True).encode())
  for f in sorted(files):
    st = os.stat(f)
    h.update(f"{os.path.basename(f)}:{st.st_size}:{int(st.st_mtime)}".encode())
  return h.hexdigest()[:16]


def already_done(out_dir: str, source_fingerprint: str) -> bool:
  manifest = records.read_manifest(out_dir)
  if manifest and manifest.get("source_fingerprint") == source_fingerprint:
    print(f"{out_dir} is already prepared from these inputs (manifest.json): nothing to do")
    return True
  return False


def process_clips(items, process, cache_dir: str, desc: str, skipped: dict):
  """Runs ``process(clip) -> dict of arrays`` over ``items`` [(clip, label)], caching each
  clip's result under ``cache_dir`` (an interrupted run resumes from it). A clip whose
  ``process`` raises is recorded in ``skipped`` with the reason, never fatal.
  Returns the stacked arrays plus ``label``, or None when no clip was usable."""
  os.makedirs(cache_dir, exist_ok=True)
  out, labels = {}, []
  for clip, label in tqdm(items, desc=desc, unit="clip"):
    cached = os.path.join(cache_dir, f"{clip}.npz")
    try:
      if os.path.exists(cached):
        with np.load(cached) as z:
          arrays = {k: z[k] for k in z.files}
      else:
        arrays = process(clip)
        np.savez(cached + ".tmp.npz", **arrays)
        os.replace(cached + ".tmp.npz", cached)
    except Exception as e:  # corrupt or missing input: reported in the manifest and printed
      skipped[clip] = f"{type(e).__name__}: {e}"
      continue
    for k, v in arrays.items():
      out.setdefault(k, []).append(v)
    labels.append(label)
  if not labels:
    return None
  return {**{k: np.stack(v) for k, v in out.items()}, "label": np.asarray(labels, np.int32)}


def md5(path: str) -> str:
  h = hashlib.md5()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def split_counts(labels: np.ndarray, num_classes: int) -> dict:
  return {"total": int(len(labels)),
          "per_class": np.bincount(labels, minlength=num_classes).astype(int).tolist()}


def finish(out_dir: str, manifest: dict, skipped: dict[str, str]) -> None:
  """Writes the manifest last and prints the report (skipped inputs named, never silent)."""
  manifest["skipped"] = skipped
  records.write_manifest(out_dir, manifest)
  counts = {s: manifest["counts"][s]["total"] for s in manifest["counts"]}
  print(f"prepared {manifest['name']} in {out_dir}: {counts}; skipped {len(skipped)}")
  for path, why in sorted(skipped.items()):
    print(f"  skipped {path}: {why}")


def flags(description: str, *names: str, **defaults) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=description)
  for n in names:
    p.add_argument(f"--{n}", default=defaults.get(n), required=n not in defaults)
  return p.parse_args()


def log_spectrogram(wave: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
  """log(|STFT| + 1e-7), Hann window, centred (reflect pad): [n_fft//2 + 1, frames]."""
  pad = n_fft // 2
  x = np.pad(wave.astype(np.float32), pad, mode="reflect")
  frames = 1 + (len(x) - n_fft) // hop
  idx = np.arange(n_fft)[None, :] + hop * np.arange(frames)[:, None]
  window = np.hanning(n_fft + 1)[:-1].astype(np.float32)  # periodic Hann, as torch/librosa
  spec = np.abs(np.fft.rfft(x[idx] * window, axis=1)).T
  return np.log(spec + 1e-7).astype(np.float32)


def tile_to(wave: np.ndarray, length: int) -> np.ndarray:
  """Repeat the clip until it is ``length`` samples long, then cut (released code)."""
  reps = int(np.ceil(length / max(len(wave), 1)))
  return np.tile(wave, reps)[:length]
