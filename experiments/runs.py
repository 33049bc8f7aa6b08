"""A run's folder read back, the one way every side command reads runs.

`read` gives a `Run`: its summary.json and metrics.jsonl, checked (a damaged, truncated or
non-JSON file is one ``error:`` line naming it and what to do), and its status:

- ``finished``: a summary of the run as its files hold it;
- ``stopped``: the summary says the run stopped (a non-finite loss, ...; a member of a
  population stops alone), or its final accuracy is not a finite number;
- ``unfinished``: no summary.json yet (a run training, killed, or a single run that stopped:
  it writes no summary), or a summary older than its metrics.jsonl: a later session
  (``--resume``) rewrote the metrics and has not written its own summary. "Older" is read
  from the contents, never from the files' times (a copy resets those): the summary is
  current when metrics.jsonl's last epoch is its last (``epochs`` - 1), or when there is no
  metrics.jsonl.

`find` gives every run under some folders, `rows` a run's epochs, `group` the finished runs
by `Run.setting` (the whole config less what does not change a number, plus the data's
identity), refusing two runs of one seed in one setting and saying which runs were left out
and why. A run's files are found where its summary is, never through the summary's
``workdir`` (a moved folder still reads); `Run.name` gives its folder relative to a root, for
what is shown or stored. Imports numpy and the JAX-free config only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from typing import Iterable, NamedTuple

import numpy as np

from inforeg_jax.config import flatten
from inforeg_jax.reporting import summary_digest

SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
PREDICTIONS = "test_predictions.npy"
# A run's own subfolders: never searched for runs.
OWN_FOLDERS = frozenset({"checkpoints", "tensorboard", ".replaced"})
# Config fields that do not change what is trained: runs that differ only in these pool.
NOT_TRAINED = ("seed", "workdir", "resume", "overwrite", "eval_batch_size", "skip_nonfinite",
               "data_dir", "checkpoint_every", "plots")
# What a summary written before a field existed means by its absence.
OLDER_DEFAULTS = {"modalities": "all", "fusion": "concat", "window": "prime",
                  "inforeg.variant": "paper"}
UNRECORDED = "not recorded"  # the data of a summary older than its "data" field
FIX = "rerun it with --resume, or remove the folder"


@dataclasses.dataclass(frozen=True)
class Run:
  """One run's folder read back (`read`). ``path``: the folder as found; ``why``: why it is
  not finished (None when it is); ``history``: metrics.jsonl's rows (None: no such file)."""

  path: str
  status: str  # "finished", "stopped" or "unfinished"
  summary: dict | None = dataclasses.field(default=None, compare=False, repr=False)
  history: tuple | None = dataclasses.field(default=None, compare=False, repr=False)
  why: str | None = None

  @property
  def config(self) -> dict:
    """The summary's config (nested: a method's options under its group); {} without one."""
    return (self.summary or {}).get("config", {})

  @property
  def data(self) -> dict | None:
    """The prepared data's identity (version, sha256, name, variant, fold); None for the
    built-in data, a summary without one, or no summary."""
    return (self.summary or {}).get("data")

  @property
  def seed(self) -> int | None:
    s = self.summary or {}
    return s.get("seed", self.config.get("seed"))

  @property
  def final(self) -> dict:
    """The final epoch's accuracies (fractions): acc, acc_<modality>, ..."""
    return (self.summary or {}).get("final") or {}

  @property
  def sessions(self) -> list[dict]:
    """One dict per training session (population, execution, devices, code, wall clock)."""
    return (self.summary or {}).get("sessions") or []

  def name(self, relative_to: str | None = None) -> str:
    """The folder, relative to ``relative_to`` when given (what a report stores)."""
    return os.path.relpath(self.path, relative_to) if relative_to is not None else self.path

  def setting(self) -> dict:
    """Everything that changes a number: the flat config (``agm.alpha`` for option groups)
    less `NOT_TRAINED`, the resolved window, the execution its sessions ran (``sequential``,
    ``vectorised``, or both joined by ``+``), and the data's identity under ``data`` (None:
    the built-in data; `UNRECORDED`: a summary from before it was recorded)."""
    s = self.summary or {}
    flat = {k: v for k, v in flatten(self.config).items() if k not in NOT_TRAINED}
    for k in ("dataset", "method", "window"):  # window resolved: auto -> prime / whole
      if s.get(k) is not None:
        flat[k] = s[k]
    for k, default in OLDER_DEFAULTS.items():
      if flat.get(k) in (None, ""):
        flat[k] = default
    ran = sorted({x["execution"] for x in self.sessions if isinstance(x, dict)
                  and x.get("execution")})
    if ran:  # execution resolved: auto is sequential on a CPU, vectorised elsewhere
      flat["execution"] = "+".join(ran)
    flat["data"] = s["data"] if "data" in s else UNRECORDED
    return flat

  @property
  def key(self) -> str:
    """The setting as canonical JSON: hashable, the same across processes and versions."""
    return json.dumps(self.setting(), sort_keys=True)

  def predictions(self) -> np.ndarray:
    """The final epoch's test predictions, checked against the summary's checksum of their
    values (a summary without one, from an older version: loaded unchecked)."""
    path = os.path.join(self.path, PREDICTIONS)
    if self.summary is None or self.status == "unfinished":
      raise SystemExit(f"error: {path}: the run in {self.path} is not finished ({self.why}); "
                       f"{FIX}")
    try:
      values = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
      raise SystemExit(f"error: cannot read {path} ({type(e).__name__}: "
                       f"{str(e).splitlines()[0] if str(e) else e!r}); {FIX}") from None
    expected = self.summary.get("predictions_sha256")
    if expected is not None:
      got = hashlib.sha256(np.ascontiguousarray(values, np.int16).tobytes()).hexdigest()
      if got != expected:
        raise SystemExit(f"error: {path} does not match its summary's predictions_sha256 "
                         f"(damaged, or written by another session): {FIX}")
    return values


def is_run(path: str) -> bool:
  """Whether a folder holds a run (its summary.json or metrics.jsonl)."""
  return any(os.path.isfile(os.path.join(path, f)) for f in (SUMMARY, METRICS))


def _real(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _read_summary(path: str) -> dict | None:
  try:
    with open(path, "rb") as f:
      s = json.loads(f.read().decode("utf-8"))
  except FileNotFoundError:
    return None
  except OSError as e:
    raise SystemExit(f"error: cannot read {path}: {e.strerror}") from None
  except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
    raise SystemExit(f"error: {path} is not valid JSON (truncated or damaged: {e}); "
                     f"{FIX}") from None
  stopped_early = isinstance(s, dict) and s.get("stopped") and "final" not in s
  if not isinstance(s, dict) or not isinstance(s.get("config"), dict) or not (stopped_early or (
      all(isinstance(s.get(k), dict) and "acc" in s[k] for k in ("final", "best"))
      and all(v is None or _real(v) for v in [*s["final"].values(), s["best"]["acc"]])
      and isinstance(s.get("seed", s["config"].get("seed")), int))):
    raise SystemExit(f"error: {path} is not a run's summary (config, seed, final or best "
                     f"missing or malformed); {FIX}")
  if "summary_sha256" in s and s["summary_sha256"] != summary_digest(s):  # (older: none)
    raise SystemExit(f"error: {path} does not match its summary_sha256 (edited or damaged); "
                     f"{FIX}")
  return s


def _read_metrics(path: str) -> tuple | None:
  try:
    with open(path, "rb") as f:
      lines = f.read().decode("utf-8", errors="replace").splitlines()
  except FileNotFoundError:
    return None
  except OSError as e:
    raise SystemExit(f"error: cannot read {path}: {e.strerror}") from None
  rows = []
  for i, line in enumerate(lines, 1):
    try:
      row = json.loads(line)
    except ValueError:
      row = None
    if not isinstance(row, dict) or not isinstance(row.get("epoch"), int):
      raise SystemExit(f"error: {path}: line {i} is not an epoch's JSON (truncated or "
                       f"damaged); {FIX}")
    rows.append(row)
  return tuple(rows)


def _status(summary: dict | None, history: tuple | None) -> tuple[str, str | None]:
  if summary is None:
    return "unfinished", f"no {SUMMARY} yet (training, killed, or stopped: see its log.txt)"
  if summary.get("stopped"):
    return "stopped", f"stopped: {summary['stopped']}"
  acc = summary["final"]["acc"]
  if not _real(acc) or not math.isfinite(acc):
    return "stopped", f"its final accuracy is {acc} (diverged)"
  last = summary.get("epochs", summary["config"].get("epochs"))
  if history is not None and _real(last) and (not history or history[-1]["epoch"] != last - 1):
    done = history[-1]["epoch"] + 1 if history else 0
    return "unfinished", (f"its {SUMMARY} is of {last} epochs, its {METRICS} of {done}: a "
                          "later session has not finished")
  return "finished", None


def read(path: str) -> Run:
  """The run in folder ``path``; one ``error:`` line when it holds none or a file of it is
  damaged."""
  path = os.path.normpath(path)
  if not os.path.isdir(path):
    raise SystemExit(f"error: {path}: no such run folder")
  summary = _read_summary(os.path.join(path, SUMMARY))
  history = _read_metrics(os.path.join(path, METRICS))
  if summary is None and history is None:
    raise SystemExit(f"error: {path} holds no run (no {SUMMARY} or {METRICS}): give a run's "
                     "folder")
  status, why = _status(summary, history)
  return Run(path, status, summary, history, why)


def rows(run: Run | str) -> list[dict]:
  """A run's metrics.jsonl, a dict per epoch; one ``error:`` line when there is none."""
  run = read(run) if isinstance(run, str) else run
  path = os.path.join(run.path, METRICS)
  if run.history is None:
    raise SystemExit(f"error: cannot read {path}: no such file (is {run.path} a run folder?)")
  if not run.history:
    raise SystemExit(f"error: {path} holds no epoch yet")
  return list(run.history)


def find(paths: Iterable[str]) -> list[Run]:
  """Every run under ``paths`` (folders searched recursively, symbolic links to folders
  followed, or a run's summary.json or metrics.jsonl), read, each once (a run reached twice,
  through a link, is one run), sorted by folder; a run's own subfolders (checkpoints/,
  .replaced/, ...) are not searched."""
  folders, searched = {}, set()
  for top in paths:
    if os.path.isfile(top) and os.path.basename(top) in (SUMMARY, METRICS):
      found = [os.path.dirname(top) or "."]
    elif os.path.isdir(top):
      found = []
      for folder, subfolders, _ in os.walk(top, followlinks=True):
        real = os.path.realpath(folder)
        if real in searched:  # reached again through a link (a loop, or a second path)
          subfolders[:] = []
          continue
        searched.add(real)
        subfolders.sort()
        if is_run(folder):
          found.append(folder)
          subfolders[:] = [d for d in subfolders if d not in OWN_FOLDERS]
    else:
      what = "not a folder" if os.path.exists(top) else "no such folder"
      raise SystemExit(f"error: {top}: {what} (give run folders, the folders that hold them, "
                       f"or a run's {SUMMARY})")
    for folder in found:
      folders.setdefault(os.path.realpath(folder), os.path.normpath(folder))
  return [read(f) for f in sorted(folders.values())]


class Grouping(NamedTuple):
  """The finished runs by setting (`Run.key`: [runs], sorted by folder), and the runs left
  out with why (stopped, unfinished)."""

  groups: dict[str, list[Run]]
  left_out: list[tuple[Run, str]]


def group(runs: Iterable[Run]) -> Grouping:
  """Finished runs by setting; stopped and unfinished ones never pool with them (`Grouping`).
  Two runs of one seed in one setting are refused, naming both folders."""
  groups: dict[str, list[Run]] = {}
  left_out = []
  for run in runs:
    if run.status != "finished":
      left_out.append((run, run.why or run.status))
      continue
    same = groups.setdefault(run.key, [])
    for other in same:
      if other.seed == run.seed:
        raise SystemExit(f"error: {other.path} and {run.path} are both seed {run.seed} of one "
                         "setting: keep one of them (or pass only one of the folders)")
    same.append(run)
  return Grouping(groups, left_out)


def data_label(data) -> str:
  """The data's identity in a few words: ``name variant fold k version``."""
  if data is None:
    return "built in"
  if not isinstance(data, dict):
    return str(data)
  parts = [str(data[k]) for k in ("name", "variant") if data.get(k) is not None]
  if data.get("fold") is not None:
    parts.append(f"fold {data['fold']}")
  parts.append(str(data.get("version")))
  return " ".join(parts)
