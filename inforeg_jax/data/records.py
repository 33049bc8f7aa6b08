"""Prepared records: the format ``data_prep`` writes and the runner reads back memory-mapped.

A prepared dataset is a folder that changes as one unit::

    manifest.json               written last, atomically (os.replace): name, num_classes,
                                kinds {modality: spectrogram|frames|sequence}, frame_crop,
                                counts per split and class, shapes, options, the prep command,
                                ``version`` (the folder below), ``splits`` {split: {dir,
                                rows}} and ``files``: per file its bytes, shape, dtype, sha256
    v-<id>/train/<array>.npy    one array per modality plus ``label``, first axis = example
    v-<id>/val/<array>.npy      (optional) the validation split
    v-<id>/test/<array>.npy
    .verified.json              which files were checked at load (size, mtime_ns, sha256)

A preparation writes every array into a new ``v-<id>`` folder, then swaps the manifest, then
removes the older versions: a kill at any point leaves either the old complete dataset or the
new complete one, never a mix. ``load_prepared`` checks the dataset once (checksums, row
counts, label range, finite inputs) and remembers the files that passed by their size and
mtime, so that a 4 GB dataset is hashed once, not on every run; every problem it finds is a
`DataError` naming the file and the command that re-prepares it.

Plain ``.npy`` files read with ``mmap_mode='r'``: a batch is one fancy index per array (see
``pipeline``), no per-example decoding, no extra dependency.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import time
from typing import Iterable, Mapping

import numpy as np

from inforeg_jax import datasets
from inforeg_jax.data.dataset import Dataset

FORMAT = 2
MANIFEST = "manifest.json"
STAMP = ".verified.json"
SPLITS = ("train", "val", "test")
_CHUNK_BYTES = 64 << 20


class MissingDataError(RuntimeError):
  """The prepared dataset is not where the config says."""


class DataError(MissingDataError):
  """The prepared dataset is there but damaged, truncated or inconsistent (one line: the file
  and the command that prepares it again)."""


def prep_command(name: str, data_dir: str, manifest: Mapping | None = None) -> str:
  """The command that (re)prepares ``data_dir``: the manifest's own when it recorded one."""
  if manifest and manifest.get("command"):
    return str(manifest["command"])
  return datasets.prep_command(name, data_dir)


# ----------------------------------------------------------------------------------------------
# Writing


def _fsync_dir(path: str) -> None:
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def sha256_file(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


class Preparation:
  """Writes one version of a prepared dataset; `commit` swaps it in as one unit.

  ::

      with Preparation(out_dir) as prep:     # an exception removes the new version
        prep.write_split("train", {"audio": a, "visual": v, "label": y})
        prep.write_rows("test", n, rows)      # streamed, for splits larger than memory
        prep.commit(manifest)                 # manifest.json last, then old versions removed
  """

  def __init__(self, out_dir: str):
    os.makedirs(out_dir, exist_ok=True)
    self.out_dir = out_dir
    self.version = f"v-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    self.path = os.path.join(out_dir, self.version)
    os.makedirs(self.path)
    self.files: dict[str, dict] = {}
    self.committed = False

  def __enter__(self) -> "Preparation":
    return self

  def __exit__(self, kind, value, tb) -> None:
    if kind is not None and not self.committed:  # a failed preparation leaves nothing behind
      live = read_manifest(self.out_dir, strict=False) or {}
      if live.get("version") != self.version:  # not swapped in just before an interrupt
        shutil.rmtree(self.path, ignore_errors=True)

  def _finish_file(self, rel: str) -> None:
    path = os.path.join(self.path, rel)
    with open(path, "rb+") as f:
      os.fsync(f.fileno())
    arr = np.load(path, mmap_mode="r")
    self.files[rel] = {"bytes": os.path.getsize(path), "shape": list(arr.shape),
                       "dtype": arr.dtype.str, "sha256": sha256_file(path)}
    del arr

  def write_split(self, split: str, arrays: Mapping[str, np.ndarray]) -> None:
    """Writes the in-memory ``arrays`` of ``split``."""
    folder = os.path.join(self.path, split)
    os.makedirs(folder, exist_ok=True)
    for key, value in arrays.items():
      np.save(os.path.join(folder, f"{key}.npy"), np.ascontiguousarray(value))
      self._finish_file(f"{split}/{key}.npy")
    _fsync_dir(folder)

  def write_rows(self, split: str, n: int, rows: Iterable[Mapping[str, np.ndarray]]) -> None:
    """Writes ``split`` from ``n`` rows (dicts of per-example arrays, all of one shape and
    dtype per key) without holding the split in memory."""
    folder = os.path.join(self.path, split)
    os.makedirs(folder, exist_ok=True)
    out: dict[str, np.ndarray] = {}
    count = 0
    for i, row in enumerate(rows):
      if i >= n:
        raise ValueError(f"write_rows({split!r}): more than the {n} rows announced")
      for key, value in row.items():
        value = np.asarray(value)
        if key not in out:
          out[key] = np.lib.format.open_memmap(os.path.join(folder, f"{key}.npy"), mode="w+",
                                               dtype=value.dtype, shape=(n, *value.shape))
        out[key][i] = value
      count = i + 1
    if count != n:
      raise ValueError(f"write_rows({split!r}): {count} rows, {n} announced")
    for key, arr in out.items():
      arr.flush()
      del arr
      self._finish_file(f"{split}/{key}.npy")
    out.clear()
    _fsync_dir(folder)

  def commit(self, manifest: dict) -> dict:
    """Writes ``manifest.json`` (with the version and the files) atomically, then removes every
    older version. Returns the manifest written."""
    _fsync_dir(self.path)
    rows = {rel.split("/")[0]: entry["shape"][0] for rel, entry in self.files.items()
            if rel.endswith("/label.npy")}
    manifest = {**manifest, "format": FORMAT, "version": self.version, "files": self.files,
                "splits": {s: {"dir": f"{self.version}/{s}", "rows": n} for s, n in rows.items()}}
    manifest["manifest_sha256"] = manifest_digest(manifest)
    old = read_manifest(self.out_dir, strict=False)
    tmp = os.path.join(self.out_dir, f"{MANIFEST}.{os.getpid()}.partial")
    with open(tmp, "w") as f:
      json.dump(manifest, f, indent=2, sort_keys=True)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, os.path.join(self.out_dir, MANIFEST))  # the swap
    self.committed = True
    _fsync_dir(self.out_dir)
    remove_old_versions(self.out_dir, keep=self.version, old_manifest=old)
    return manifest


def write_dataset(out_dir: str, splits: Mapping[str, Mapping[str, np.ndarray]],
                  manifest: dict) -> dict:
  """Writes in-memory ``splits`` {split: {array: values}} as one new version of ``out_dir``
  (``counts`` filled in from the labels when absent); returns the manifest written."""
  with Preparation(out_dir) as prep:
    for split, arrays in splits.items():
      prep.write_split(split, arrays)
    counts = manifest.get("counts") or {
        s: {"total": int(len(a["label"])), "per_class": np.bincount(
            np.asarray(a["label"]), minlength=int(manifest["num_classes"])).tolist()}
        for s, a in splits.items()}
    return prep.commit({**manifest, "counts": counts})


def remove_stale_versions(out_dir: str) -> None:
  """Removes the ``v-*`` folders the manifest does not name (left by a killed preparation).
  Only for a caller that holds the folder's lock (``data_prep.common.claim_out_dir``); with a
  manifest that cannot be read, nothing is removed."""
  if os.path.exists(os.path.join(out_dir, MANIFEST)):
    manifest = read_manifest(out_dir, strict=False)
    if manifest is None:
      return
    keep = str(manifest.get("version", ""))
  else:
    keep = ""
  for name in os.listdir(out_dir):
    path = os.path.join(out_dir, name)
    if name.startswith("v-") and name != keep and os.path.isdir(path):
      shutil.rmtree(path, ignore_errors=True)


def remove_old_versions(out_dir: str, keep: str, old_manifest: Mapping | None = None) -> None:
  """Removes every ``v-*`` folder but ``keep``, and the split folders of a format-1 dataset."""
  for name in os.listdir(out_dir):
    path = os.path.join(out_dir, name)
    if name.startswith("v-") and name != keep and os.path.isdir(path):
      shutil.rmtree(path, ignore_errors=True)
  if old_manifest and "version" not in old_manifest:  # format 1: splits at the top level
    for split in list(old_manifest.get("counts", {})) + ["train", "test"]:
      for name in (split, f"{split}.partial"):
        path = os.path.join(out_dir, name)
        if os.path.isdir(path) and all(f.endswith(".npy") for f in os.listdir(path)):
          shutil.rmtree(path, ignore_errors=True)
  stamp = os.path.join(out_dir, STAMP)
  if os.path.exists(stamp):
    try:
      os.remove(stamp)
    except OSError:
      pass


# ----------------------------------------------------------------------------------------------
# Reading


def read_manifest(out_dir: str, strict: bool = True, name: str = "") -> dict | None:
  """The manifest, or None when there is none. A manifest that cannot be read is a
  `DataError` (``strict``) or None."""
  path = os.path.join(out_dir, MANIFEST)
  if not os.path.exists(path):
    return None
  try:
    with open(path, "rb") as f:
      manifest = json.loads(f.read().decode("utf-8"))
    if not isinstance(manifest, dict):
      raise ValueError("not a JSON object")
  except (ValueError, UnicodeDecodeError, OSError) as e:
    if not strict:
      return None
    raise DataError(f"{path} is damaged ({type(e).__name__}: {e}); prepare the data again: "
                    f"{prep_command(name or 'dataset', out_dir)}") from None
  if manifest.get("manifest_sha256") not in (None, manifest_digest(manifest)):
    if not strict:
      return None
    raise DataError(f"{path}: its fields (classes, shapes, splits, ...) do not match its "
                    "checksum (edited or damaged); prepare the data again: "
                    f"{prep_command(name or 'dataset', out_dir)}")
  return manifest


def manifest_digest(manifest: Mapping) -> str:
  """sha256 of a manifest's own fields (all but this checksum), so that a field edited by
  hand (the classes, a shape, a split's rows) is caught at load, as the files are by theirs."""
  fields = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
  return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def read_split(folder: str) -> dict[str, np.ndarray]:
  """The ``.npy`` arrays of one split folder, memory-mapped (no checks: see `load_prepared`)."""
  return {name[:-4]: np.load(os.path.join(folder, name), mmap_mode="r")
          for name in sorted(os.listdir(folder)) if name.endswith(".npy")}


def intact(out_dir: str, manifest: Mapping) -> bool:
  """Whether every file the manifest lists is there with its recorded size (cheap)."""
  if manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
    return False
  base = os.path.join(out_dir, str(manifest.get("version", "")))
  try:
    return all(os.path.getsize(os.path.join(base, rel)) == entry["bytes"]
               for rel, entry in manifest["files"].items())
  except (OSError, KeyError, TypeError):
    return False


def _stamp_paths(data_dir: str) -> list[str]:
  cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  key = hashlib.sha1(os.path.abspath(data_dir).encode()).hexdigest()[:16]
  return [os.path.join(data_dir, STAMP), os.path.join(cache, "inforeg_jax", "verified",
                                                      f"{key}.json")]


def _read_stamp(data_dir: str) -> dict:
  for path in _stamp_paths(data_dir):
    try:
      with open(path) as f:
        stamp = json.load(f)
      if isinstance(stamp, dict) and stamp.get("data_dir") == os.path.abspath(data_dir):
        return stamp.get("files", {})
    except (OSError, ValueError):
      continue
  return {}


def _write_stamp(data_dir: str, files: dict) -> None:
  """Remembers the verified files; in the data folder, else in the user's cache, else not."""
  body = json.dumps({"data_dir": os.path.abspath(data_dir), "files": files}, sort_keys=True)
  for path in _stamp_paths(data_dir):
    tmp = f"{path}.{os.getpid()}.partial"
    try:
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with open(tmp, "w") as f:
        f.write(body)
      os.replace(tmp, path)
      return
    except OSError:
      try:
        os.remove(tmp)
      except OSError:
        pass


def _check_values(path: str, rel: str, arr: np.ndarray, num_classes: int, fail) -> None:
  """Labels integer in [0, num_classes); float inputs finite; chunked over the memmap."""
  is_label = os.path.basename(rel) == "label.npy"
  if is_label and (arr.dtype.kind not in "iu" or arr.ndim != 1):
    fail(f"{path} holds labels of {arr.dtype}{list(arr.shape)}, not one integer per example")
  if not is_label and arr.dtype.kind not in "fc":
    return
  rows = max(1, _CHUNK_BYTES // max(1, arr[:1].nbytes))
  for lo in range(0, len(arr), rows):
    chunk = np.asarray(arr[lo:lo + rows])
    if is_label:
      bad = np.flatnonzero((chunk < 0) | (chunk >= num_classes))
      if len(bad):
        fail(f"{path} holds label {int(chunk[bad[0]])} (row {lo + int(bad[0])}), outside "
             f"[0, {num_classes})")
    else:
      bad = np.flatnonzero(~np.isfinite(chunk.reshape(len(chunk), -1)).all(1))
      if len(bad):
        fail(f"{path} holds non-finite values (row {lo + int(bad[0])})")


def verify(data_dir: str, manifest: Mapping, name: str) -> dict[str, dict[str, np.ndarray]]:
  """Checks the prepared dataset against its manifest and returns its splits memory-mapped.
  Raises a `DataError` naming the file and the fix on the first problem."""
  command = prep_command(name, data_dir, manifest)

  def fail(what: str):
    raise DataError(f"{what}; prepare the data again: {command}")

  mpath = os.path.join(data_dir, MANIFEST)
  if manifest.get("format") != FORMAT or "version" not in manifest:
    fail(f"{mpath} is from an older data_prep (format {manifest.get('format', 1)}, without "
         f"checksums; this version reads format {FORMAT})")
  try:
    files, num_classes = dict(manifest["files"]), int(manifest["num_classes"])
    kinds = dict(manifest["kinds"])
    base = os.path.join(data_dir, str(manifest["version"]))
    entries = {rel: (int(e["bytes"]), tuple(e["shape"]), np.dtype(e["dtype"]), str(e["sha256"]))
               for rel, e in files.items()}
  except (KeyError, TypeError, ValueError) as e:
    fail(f"{mpath} is damaged (missing or malformed {e})")
  stamp = _read_stamp(data_dir)
  verified, splits = {}, {}
  for rel, (size, shape, dtype, digest) in sorted(entries.items()):
    path = os.path.join(base, rel)
    try:
      st = os.stat(path)
    except OSError:
      fail(f"{path} is missing")
    if st.st_size != size:
      fail(f"{path} has {st.st_size} bytes, the manifest says {size} (truncated or replaced)")
    try:
      arr = np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as e:
      fail(f"{path} is not a readable .npy file ({e})")
    if tuple(arr.shape) != shape or arr.dtype != dtype:
      fail(f"{path} holds {arr.dtype}{list(arr.shape)}, the manifest says {dtype}{list(shape)}")
    key = f"{manifest['version']}/{rel}"
    seen = stamp.get(key)
    if seen != [st.st_size, st.st_mtime_ns, digest]:
      if sha256_file(path) != digest:
        fail(f"{path} is damaged: its sha256 differs from the manifest's")
      _check_values(path, rel, arr, num_classes, fail)
    verified[key] = [st.st_size, st.st_mtime_ns, digest]
    split, _, array = rel.partition("/")
    splits.setdefault(split, {})[array[:-4]] = arr
  for split in ("train", "test"):
    if split not in splits:
      fail(f"{mpath} lists no {split} split")
  counts = manifest.get("counts", {})
  for split, arrays in splits.items():
    for needed in list(kinds) + ["label"]:
      if needed not in arrays:
        fail(f"{os.path.join(base, split, needed + '.npy')} is missing (modality {needed!r} of "
             "the manifest)")
    n = len(arrays["label"])
    for key, arr in arrays.items():
      if len(arr) != n:
        fail(f"{os.path.join(base, split, key + '.npy')} has {len(arr)} rows, "
             f"{split}/label.npy has {n}")
    expected = counts.get(split, {}).get("total", n) if isinstance(counts, dict) else n
    if expected != n:
      fail(f"{os.path.join(base, split, 'label.npy')} has {n} rows, the manifest counts "
           f"{expected}")
  if any(stamp.get(k) != v for k, v in verified.items()):
    _write_stamp(data_dir, verified)
  return splits


def load_prepared(name: str, data_dir: str):
  """The prepared dataset in ``data_dir`` as a `Dataset`, checked against its manifest; a
  MissingDataError naming the ``data_prep`` command to run, or a `DataError` naming the file."""
  from inforeg_jax.data.augment import frames_preprocess

  manifest = read_manifest(data_dir, name=name) if data_dir and os.path.isdir(data_dir) else None
  if manifest is None:
    raise MissingDataError(
        f"no prepared {name} data in {data_dir or '(no --data_dir given)'}: run "
        + datasets.prep_command(name, data_dir)
        + " first, then pass --data_dir")
  if manifest.get("name") != name:
    raise MissingDataError(f"{data_dir} holds prepared {manifest.get('name')}, not {name}")
  splits = verify(data_dir, manifest, name)
  kinds = manifest["kinds"]
  frames = [m for m, k in kinds.items() if k == "frames"]
  preprocess = None
  if frames and manifest.get("frame_crop"):
    preprocess = frames_preprocess(frames[0], manifest["frame_crop"],
                                   frames_per_sample=manifest.get("frames_per_sample"))
  return Dataset(name, splits["train"], splits["test"], manifest["num_classes"], kinds,
                 preprocess, val=splits.get("val"), identity=identity(manifest))


def identity(manifest: Mapping) -> dict:
  """What a prepared dataset is, in two fields a checkpoint can record: the manifest's
  version folder and one sha256 over its files' checksums (and the options they were made
  with), so that data re-prepared in place with other options is told apart."""
  files = manifest.get("files", {})
  digest = hashlib.sha256(json.dumps(
      {"files": {k: v.get("sha256") for k, v in sorted(files.items())},
       "options": manifest.get("options")}, sort_keys=True, default=str).encode()).hexdigest()
  return {"version": manifest.get("version"), "sha256": digest,
          **{k: manifest[k] for k in ("name", "variant", "fold") if manifest.get(k) is not None}}
