"""What every preparation shares: flags, input checks, idempotency, the report, audio maths.

A preparation is idempotent: its manifest records the checksum of its inputs and options, and
a second run with the same ones ends at once. Every array is written into a new version
folder and the manifest last (``inforeg_jax.data.records.Preparation``), so an interrupted run
leaves the previous dataset complete and untouched. A preparation holds ``<out_dir>/.prep.lock``
(``fcntl.flock``) while it runs, so a second one into the same folder is refused; Ctrl-C is
one line and exit status 130 (`cli`); off a terminal, progress is a plain line per 10%.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shlex
import signal
import struct
import sys
import time
from typing import Callable, Iterable, Iterator

import numpy as np
from tqdm import tqdm

from inforeg_jax.data import records


class PrepError(SystemExit):
  """One clear line for the user, exit status 2."""

  def __init__(self, message: str):
    print(f"error: {message}", file=sys.stderr)
    super().__init__(2)


# ----------------------------------------------------------------------------------------------
# Flags


class _Parser(argparse.ArgumentParser):
  def error(self, message):  # one line, no usage block
    raise PrepError(f"{message} (see {self.prog} --help)")


class _Formatter(argparse.RawDescriptionHelpFormatter):
  def _get_help_string(self, action):  # the default, where there is one worth showing
    text = action.help or ""
    if action.default not in (None, "", argparse.SUPPRESS) and not action.required:
      text += f" (default: {action.default})"
    elif action.required and action.option_strings != ["-h", "--help"]:
      text += " (required)"
    return text


def _number(text: str, kind, what: str):
  try:
    return kind(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None


def positive_int(text: str) -> int:
  value = _number(text, int, "an integer")
  if value < 1:
    raise argparse.ArgumentTypeError(f"{value} is not positive")
  return value


def nonnegative_int(text: str) -> int:
  value = _number(text, int, "an integer")
  if value < 0:
    raise argparse.ArgumentTypeError(f"{value} is negative")
  return value


def fraction(text: str) -> float:
  value = _number(text, float, "a number")
  if not 0.0 <= value < 1.0:
    raise argparse.ArgumentTypeError(f"{value} is not in [0, 1)")
  return value


def finite_float(text: str) -> float:
  value = _number(text, float, "a number")
  if not np.isfinite(value):
    raise argparse.ArgumentTypeError(f"{value} is not finite")
  return value


def flags(name: str, doc: str, spec: dict[str, dict], argv=None) -> argparse.Namespace:
  """Parses ``python -m data_prep.<name>``'s flags. ``spec`` maps a flag to its
  ``add_argument`` keywords (help, type, choices, default); a flag without a default is
  required. No abbreviations; a bad flag is one ``error:`` line. ``args.command`` is the
  command line as given (recorded in the manifest)."""
  p = _Parser(prog=f"python -m data_prep.{name}", description=doc, formatter_class=_Formatter,
              allow_abbrev=False)
  for flag, kw in spec.items():
    kw = dict(kw)
    if "choices" not in kw:
      kw.setdefault("metavar", flag.upper().split("_")[-1])
    p.add_argument(f"--{flag}", required="default" not in kw, **kw)
  argv = list(sys.argv[1:] if argv is None else argv)
  args = p.parse_args(argv)
  args.command = " ".join([f"python -m data_prep.{name}"] + [shlex.quote(a) for a in argv])
  return args


def require_dir(path: str, flag: str, what: str) -> str:
  if not path or not os.path.isdir(path):
    raise PrepError(f"{flag}={path or '(missing)'} is not a directory; it should hold {what}")
  return path


# ----------------------------------------------------------------------------------------------
# The output folder, its lock, interruption, progress

LOCK = ".prep.lock"
_state = {"out_dir": None, "committed": False, "locks": {}}  # locks: {real path: fd}


def claim_out_dir(out_dir: str, flag: str = "--out_dir") -> None:
  """Makes ``out_dir`` and holds its lock (``<out_dir>/.prep.lock``, ``fcntl.flock``) until the
  process ends. One ``error:`` line when it is a file, cannot be made or written, or another
  preparation holds it (naming that one's pid). Under the lock, version folders left by a
  killed preparation are removed."""
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise PrepError(f"{flag}={out_dir} is a file, not a folder; choose another {flag}")
  try:
    os.makedirs(out_dir, exist_ok=True)
  except OSError as e:
    raise PrepError(f"{flag}={out_dir} cannot be created ({e.strerror or e}); choose another "
                    f"{flag}") from None
  path = os.path.join(out_dir, LOCK)
  _state["out_dir"], _state["committed"] = out_dir, False
  if os.path.realpath(path) in _state["locks"]:  # this process holds it already (in-process use)
    return
  try:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    raise PrepError(f"{flag}={out_dir} is not writable ({e.strerror or e}); choose another "
                    f"{flag} or fix its permissions") from None
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
    os.close(fd)
    raise PrepError(f"{flag}={out_dir} is being prepared by another data_prep (pid {holder}); "
                    f"wait for it to end or choose another {flag}") from None
  os.ftruncate(fd, 0)
  os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
  _state["locks"][os.path.realpath(path)] = fd
  records.remove_stale_versions(out_dir)


def _raise_interrupt(signum, frame):
  raise KeyboardInterrupt(signal.Signals(signum).name)


def cli(main: Callable[[], None]) -> None:
  """Runs a preparation's ``main`` as a command: Ctrl-C (or SIGTERM) is one ``error:`` line
  saying what the output folder holds now, and exit status 130 (143)."""
  signal.signal(signal.SIGTERM, _raise_interrupt)
  try:
    main()
  except KeyboardInterrupt as e:
    name = str(e) if str(e) in ("SIGINT", "SIGTERM") else "SIGINT"
    what, out_dir = ("Ctrl-C" if name == "SIGINT" else name), _state["out_dir"]
    if out_dir is None:
      line = f"interrupted ({what}) before anything was written"
    elif _state["committed"]:
      line = f"interrupted ({what}) after the new dataset in {out_dir} was complete"
    else:
      held = ("keeps its previous dataset" if records.read_manifest(out_dir, strict=False)
              else "holds no prepared dataset")
      line = (f"interrupted ({what}): {out_dir} {held}, nothing partial left behind; run the "
              "command again to prepare it")
    print(f"error: {line}", file=sys.stderr)
    sys.exit(143 if name == "SIGTERM" else 130)


def progress(items: Iterable, desc: str, unit: str = "it", total: int | None = None,
             stream=None) -> Iterator:
  """``tqdm`` on a terminal; elsewhere (a log file) a plain line at every 10%, as tqdm's
  carriage returns make a log unreadable."""
  stream = stream or sys.stderr
  if stream.isatty():
    yield from tqdm(items, desc=desc, unit=unit, total=total, file=stream)
    return
  total = len(items) if total is None else total
  start, mark = time.monotonic(), 10
  for done, item in enumerate(items, 1):
    yield item
    percent = done * 100 // max(total, 1)
    if percent >= mark:
      mark = percent // 10 * 10 + 10
      print(f"{desc}: {percent // 10 * 10}% ({done}/{total} {unit}, "
            f"{time.monotonic() - start:.0f} s)", file=stream, flush=True)


# ----------------------------------------------------------------------------------------------
# Idempotency, caches, the report


def fingerprint(files: Iterable[str], options: dict) -> str:
  """Checksum of the inputs (names, sizes, mtimes), the options and the records format."""
  h = hashlib.sha256(json.dumps({"format": records.FORMAT, **options}, sort_keys=True).encode())
  for f in sorted(files):
    st = os.stat(f)
    h.update(f"{os.path.basename(f)}:{st.st_size}:{int(st.st_mtime)}".encode())
  return h.hexdigest()[:16]


def already_done(out_dir: str, source_fingerprint: str) -> bool:
  """True (and says so) when ``out_dir`` holds a complete dataset from these inputs/options."""
  manifest = records.read_manifest(out_dir, strict=False)
  if (manifest and manifest.get("source_fingerprint") == source_fingerprint
      and records.intact(out_dir, manifest)):
    print(f"{out_dir} is already prepared from these inputs (manifest.json): nothing to do")
    return True
  return False


def cache_dir(out_dir: str, options: dict) -> str:
  """The per-clip cache for these processing options (another --frame_size, say, gets its own)."""
  key = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:12]
  return os.path.join(out_dir, ".cache", key)


def cached_clips(items, process, cache_dir: str, desc: str, skipped: dict) -> list:
  """Runs ``process(clip) -> dict of arrays`` over ``items`` [(clip, label)], caching each
  clip's result under ``cache_dir`` (an interrupted run resumes from it). A clip whose
  ``process`` raises is recorded in ``skipped`` with the reason, never fatal. Returns the
  usable [(cache file, label)]."""
  os.makedirs(cache_dir, exist_ok=True)
  usable = []
  for clip, label in progress(items, desc=desc, unit="clip"):
    cached = os.path.join(cache_dir, f"{clip}.npz")
    try:
      if os.path.exists(cached):
        try:
          with np.load(cached) as z:
            _ = z.files  # a damaged cache entry is recomputed
        except Exception:
          os.remove(cached)
      if not os.path.exists(cached):
        arrays = process(clip)
        np.savez(cached + ".tmp.npz", **arrays)
        os.replace(cached + ".tmp.npz", cached)
    except Exception as e:  # corrupt or missing input: reported in the manifest and printed
      skipped[clip] = f"{type(e).__name__}: {e}"
      continue
    usable.append((cached, label))
  return usable


def write_cached(prep: records.Preparation, split: str, usable: list) -> np.ndarray:
  """Writes the cached clips of ``split`` (see `cached_clips`) without holding them in
  memory; returns the labels."""
  labels = np.asarray([label for _, label in usable], np.int32)

  def rows():
    for (path, label) in usable:
      with np.load(path) as z:
        yield {**{k: z[k] for k in z.files}, "label": np.int32(label)}

  prep.write_rows(split, len(usable), rows())
  return labels


def md5(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.file_digest(f, "md5").hexdigest()


def split_counts(labels: np.ndarray, num_classes: int) -> dict:
  return {"total": int(len(labels)),
          "per_class": np.bincount(labels, minlength=num_classes).astype(int).tolist()}


def finish(prep: records.Preparation, manifest: dict, skipped: dict[str, str]) -> None:
  """Swaps the new version in (manifest last) and prints the report (skipped inputs named,
  never silent)."""
  manifest["skipped"] = skipped
  manifest = prep.commit(manifest)
  _state["committed"] = True
  counts = {s: manifest["counts"][s]["total"] for s in manifest["counts"]}
  print(f"prepared {manifest['name']} in {prep.out_dir}: {counts}; skipped {len(skipped)}")
  for path, why in sorted(skipped.items()):
    print(f"  skipped {path}: {why}")


# ----------------------------------------------------------------------------------------------
# Audio


def wav_data_shortfall(path: str) -> tuple[int, int] | None:
  """(bytes the RIFF header promises, bytes the file holds) when a .wav is truncated, else
  None. libsndfile reads a truncated file silently, as if it were shorter."""
  with open(path, "rb") as f:
    head = f.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
      return None
    size = os.fstat(f.fileno()).st_size
    while True:
      chunk = f.read(8)
      if len(chunk) < 8:
        return None
      cid, length = chunk[:4], struct.unpack("<I", chunk[4:])[0]
      if cid == b"data":
        held = size - f.tell()
        return (length, held) if held < length else None
      f.seek(length + (length & 1), os.SEEK_CUR)


def read_audio(path: str, rate: int | None = None) -> tuple[np.ndarray, int]:
  """Mono float32 samples and their rate; raises ValueError (a counted skip) for a truncated
  wav, no samples, non-finite samples or, with ``rate``, another sample rate."""
  import soundfile

  short = wav_data_shortfall(path) if path.lower().endswith(".wav") else None
  if short:
    raise ValueError(f"truncated wav: the header promises {short[0]} bytes of samples, the "
                     f"file holds {short[1]}")
  wave, got = soundfile.read(path, dtype="float32", always_2d=True)
  wave = wave.mean(axis=1)
  if rate is not None and got != rate:
    raise ValueError(f"sample rate {got}, expected {rate}")
  check_wave(wave)
  return wave, got


def check_wave(wave: np.ndarray) -> np.ndarray:
  """Raises ValueError for no samples or non-finite samples."""
  if wave.size == 0:
    raise ValueError("no samples")
  bad = int(np.size(wave) - np.count_nonzero(np.isfinite(wave)))
  if bad:
    raise ValueError(f"{bad} non-finite samples (NaN or inf)")
  return wave


def log_spectrogram(wave: np.ndarray, n_fft: int, hop: int, pad_mode: str = "constant",
                    magnitude: bool = False) -> np.ndarray:
  """log(|STFT| + 1e-7) with a periodic Hann window, centred: [n_fft//2 + 1, 1 + len//hop],
  as ``librosa.stft(wave, n_fft=n_fft, hop_length=hop, center=True, pad_mode=pad_mode)``
  (librosa >= 0.10 pads with zeros, ``constant``; older releases ``reflect``). Computed with
  ``scipy.signal.ShortTimeFFT``; ``wave`` may carry leading batch axes. ``magnitude``
  returns |STFT| instead of its log."""
  from scipy.signal import ShortTimeFFT, get_window

  x = np.asarray(wave, np.float32)
  n = 1 + x.shape[-1] // hop
  stft = ShortTimeFFT(get_window("hann", n_fft, fftbins=True), hop=hop, fs=1.0, mfft=n_fft)
  if pad_mode == "constant":  # ShortTimeFFT's windows are centred on the samples, zero outside
    spec = stft.stft(x, p0=0, p1=n)
  else:
    pad = [(0, 0)] * (x.ndim - 1) + [(n_fft // 2, n_fft // 2)]
    spec = stft.stft(np.pad(x, pad, mode=pad_mode), p0=0, p1=n, k_offset=n_fft // 2)
  spec = np.abs(spec)
  return (spec if magnitude else np.log(spec + 1e-7)).astype(np.float32)


def area_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] weights that average each of ``n_out`` equal spans of ``n_in`` cells
  (area resampling; the identity when the sizes agree)."""
  edges = np.linspace(0.0, n_in, n_out + 1)
  lo, hi = edges[:-1, None], edges[1:, None]
  cells = np.arange(n_in)[None, :]
  overlap = np.clip(np.minimum(hi, cells + 1) - np.maximum(lo, cells), 0.0, None)
  return (overlap / overlap.sum(axis=1, keepdims=True)).astype(np.float32)


def tile_to(wave: np.ndarray, length: int) -> np.ndarray:
  """Repeat the clip until it is ``length`` samples long, then cut (released code)."""
  reps = int(np.ceil(length / max(len(wave), 1)))
  return np.tile(wave, reps)[:length]


VAL_FRACTION_FLAG = dict(default=0.1, type=fraction, metavar="FRACTION",
                         help="share of each class's training clips moved to a validation "
                         "split, the same for every method: model selection, and the "
                         "held-out set G-Blending reads (0: none, as the releases)")


def carve_validation(train: list[tuple[str, int]], fraction: float, seed: int,
                     num_classes: int) -> tuple[list, list]:
  """(train, val): a seeded per-class ``fraction`` of the (clip, label) training items moved
  into a validation split."""
  rng = np.random.default_rng([seed, 1])
  val = set()
  for label in range(num_classes):
    clips = sorted(c for c, l in train if l == label)
    val.update(rng.permutation(clips)[:int(round(fraction * len(clips)))].tolist())
  return [it for it in train if it[0] not in val], [it for it in train if it[0] in val]
