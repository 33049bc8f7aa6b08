"""python -m experiments.results [--tables=tuned] [--datasets=avmnist_hard] [--jobs=2]

The study, from its specs (`experiments.study`): plan -> run -> report.

- **Plan**: per dataset and fold (each fold its own prepared folder, prepared here when
  missing and --fsdd_dir/--mnist_dir are given), the runs the tables need: first each tuned
  row's search (`study.Search`: a hill climb on its ladders over the tuning seeds, on the
  fold's validation split), then every row on the reported seeds. A run already recorded is
  never run again.
- **Run**: the runs needed, grouped into populations (`experiments.populations`: members one
  after another, each bit for bit the single run its record's command names), ``--jobs`` at
  a time; rounds until every search has chosen and every row is recorded. Each finished run
  leaves a small record (its summary's numbers, its session, its test predictions, the command
  that reruns it) in ``--docs/<dataset>/records/``: committed as the study goes, so a rerun on
  another machine (where ``--out`` is not kept) continues from them.
- **Report**: ``--docs/<dataset>.json`` and ``--docs/<dataset>_<table>.md``: every row's
  per-(fold, seed) runs with their commands, accuracies over folds and seeds, each family's
  comparisons (`experiments.claims`: the paired difference's t-interval over the folds, raw
  and Holm-corrected, the verdict from the corrected one; with the test pairs' recordings,
  replayed from --fsdd_dir/--mnist_dir once and kept in ``--docs/<dataset>/recordings/``, a
  descriptive recording-level bootstrap of each difference), the descriptive pairs, and each
  tuned row's search on every fold (every setting tried with its validation accuracy, the
  choice, whether it is interior).

``--report-only`` runs nothing and refuses (one line) when a row lacks runs, so a table is
never replaced by a smaller one. ``--out`` is this command's own: one invocation at a time
(a lock); Ctrl-C or SIGTERM stop every worker at its next step (exit 130/143).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import functools
import hashlib
import importlib
import io
import json
import math
import os
import platform
import subprocess
import sys
import time

import numpy as np

from experiments import claims, cli, populations, runs, study
from experiments.populations import SINGLE_THREAD, Unit
from inforeg_jax.workdir import Lock, RunError, check_writable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What the study sets itself, per dataset, fold, seed and run (--run_flags may not).
ENGINE_FLAGS = ("dataset", "data_dir", "seed", "seeds", "workdir", "resume", "overwrite",
                "config", "flagfile")
WEIGHTS = {"gblending": 4.0}  # a run's cost in runs (its trials: ~3 runs' worth of epochs)


# ---------------------------------------------------------------- folds and their data


@dataclasses.dataclass(frozen=True)
class Fold:
  study: str  # --datasets name (an `inforeg_jax.datasets` study entry)
  dataset: str  # --dataset
  fold: int | None  # None: the dataset has no folds
  data_dir: str | None  # None: built in
  prep: str | None  # the command that prepares it (FSDD, MNIST: the raw data)
  extra: tuple[str, ...] = ()  # --run_flags: added to every run (a smoke test's own records)
  tuner: Fold | None = None  # the fold whose validation split tunes this one (None: itself)
  recordings: str | None = None  # `StudyData.recordings`: each test pair's recording

  @property
  def tuning(self) -> Fold:
    return self.tuner or self

  @property
  def label(self) -> str:
    return "" if self.fold is None else f"fold{self.fold}"

  def flags(self) -> list[str]:
    return [f"--dataset={self.dataset}"] + ([f"--data_dir={self.data_dir}"]
                                             if self.data_dir else []) + list(self.extra)


def folds_of(name: str, data_root: str, only: list[int] | None) -> list[Fold]:
  from inforeg_jax import datasets
  dataset, entry = datasets.study()[name]
  if only is not None and (entry.folder is None or entry.folds == 1):
    raise SystemExit(f"error: --folds: {name} has no folds (leave --folds out for it)")
  if entry.folder is None:
    return [Fold(name, dataset, None, None, None)]
  if entry.folds == 1:
    return [Fold(name, dataset, None, os.path.join(data_root, entry.folder), entry.prep,
                 recordings=entry.recordings)]
  every = [Fold(name, dataset, k, os.path.join(data_root, f"{entry.folder}_fold{k}"),
                entry.prep.replace("FOLD", str(k)), recordings=entry.recordings)
           for k in range(entry.folds)]
  tuned_on = entry.tuned_on or range(entry.folds)
  every = [dataclasses.replace(f, tuner=None if tuned_on[k] == k else every[tuned_on[k]])
           for k, f in enumerate(every)]
  return [f for f in every if only is None or f.fold in only]


def check_data(folds: list[Fold], fsdd: str, mnist: str) -> None:
  """Every fold's prepared data (and its tuning fold's) present, or prepared now, or one line
  saying what to run."""
  for f in dict.fromkeys([g for fold in folds for g in (fold, fold.tuning)]):
    if f.data_dir is None or os.path.exists(os.path.join(f.data_dir, "manifest.json")):
      continue
    cmd = f.prep.replace("DIR", f.data_dir)
    if not (fsdd and mnist):
      raise SystemExit(f"error: no prepared {f.study} {f.label} in {f.data_dir}: run {cmd} "
                       "(FSDD and MNIST: docs/DATA.md), or pass --fsdd_dir and --mnist_dir to "
                       "prepare it here")
    cmd = cmd.replace("FSDD", fsdd).replace("MNIST", mnist)
    print(f"preparing {f.study} {f.label}: {cmd}", flush=True)
    if subprocess.run([sys.executable, *cmd.split()[1:]], cwd=ROOT).returncode != 0:
      raise SystemExit(f"error: preparing {f.study} {f.label} failed: {cmd}")


def data_identity(fold: Fold) -> dict | None:
  """The prepared data's identity (None: built in)."""
  if fold.data_dir is None:
    return None
  from inforeg_jax.data import records
  return records.identity(records.read_manifest(fold.data_dir))


def test_labels(fold: Fold) -> np.ndarray:
  from inforeg_jax.data import load_dataset
  return np.asarray(load_dataset(fold.dataset, fold.data_dir or "").test["label"])


def recordings_of_test(fold: Fold, folder: str, fsdd: str, mnist: str) -> np.ndarray | None:
  """Each test pair's recording, int [N] (the unit the recording-level bootstrap resamples):
  from ``<folder>/<fold>.json`` (committed beside the records) when it was made from the fold's
  data here, else replayed from FSDD and MNIST (`StudyData.recordings`) and written there.
  None where the dataset has none, its data is not here, or FSDD and MNIST are not given (or
  do not replay the data: a note says so)."""
  if fold.recordings is None or fold.data_dir is None or not os.path.isdir(fold.data_dir):
    return None
  sha = data_identity(fold)["sha256"]
  path = os.path.join(folder, f"{fold.label or 'all'}.json")
  try:
    with open(path, "rb") as f:
      doc = json.loads(f.read())
    if doc["data_sha256"] == sha:
      return np.asarray(doc["index"], np.int64)
  except FileNotFoundError:
    pass
  except (OSError, ValueError, KeyError, TypeError) as e:  # remade below when it can be
    print(f"note: {path} is not a list of recordings ({type(e).__name__}); remaking it",
          file=sys.stderr)
  if not (fsdd and mnist):
    return None
  module, function = fold.recordings.split(":")
  said = io.StringIO()  # data_prep's progress and its one error line
  try:
    with contextlib.redirect_stderr(said):
      names = getattr(importlib.import_module(module), function)(fold.data_dir, fsdd, mnist)
  except SystemExit:
    why = [line for line in said.getvalue().splitlines() if line.startswith("error: ")]
    print(f"note: no recording-level bootstrap for {fold.study} {fold.label}: "
          f"{why[-1][7:] if why else 'its recordings could not be replayed'}", file=sys.stderr)
    return None
  recordings, index = np.unique(np.asarray(names), return_inverse=True)
  os.makedirs(folder, exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump({"data_sha256": sha, "prep_command": fold.prep, "recordings": recordings.tolist(),
               "index": index.tolist()}, f)
  os.replace(path + ".tmp", path)
  return index.astype(np.int64)


# ---------------------------------------------------------------- runs and their records


def resolve(flags, fold: Fold) -> list[str]:
  """A row's flags for a fold's dataset (EPOCHS2: twice the epochs its run would train
  otherwise: the dataset preset's, or --run_flags')."""
  from inforeg_jax.flags import parse_flags
  epochs2 = None
  if "EPOCHS2" in flags:  # twice what the run would train (the preset's, or --run_flags')
    epochs2 = (f"--epochs="
               f"{2 * parse_flags(fold.flags() + [f for f in flags if f != 'EPOCHS2'])[0].epochs}")
  return fold.flags() + [epochs2 if f == "EPOCHS2" else f for f in flags]


def setting_key(flags) -> str:
  """What changes a number, whatever the flags' spelling: the run's config less the seed and
  what does not change what is trained (`runs.NOT_TRAINED`), as canonical JSON."""
  return _setting_key(tuple(flags))


@functools.lru_cache(maxsize=None)
def _setting_key(flags: tuple[str, ...]) -> str:
  from inforeg_jax.config import flatten
  from inforeg_jax.flags import parse_flags
  cfg = parse_flags(list(flags))[0]
  flat = {k: v for k, v in flatten(cfg.to_dict()).items() if k not in runs.NOT_TRAINED}
  flat["window"], flat["threshold"] = cfg.resolved_window, cfg.resolved_threshold
  return json.dumps(flat, sort_keys=True, default=str)


def command(flags: list[str], seed: int) -> str:
  """The command that reruns one run (DIR: its fold's prepared data, as ``prep_command``)."""
  shown = ["--data_dir=DIR" if f.startswith("--data_dir=") else f for f in flags]
  return " ".join([f"XLA_FLAGS='{SINGLE_THREAD}'", "python -m experiments.run", *shown,
                   f"--seed={seed}"])


class Records:
  """The study's per-run records, one JSON line a run in ``<folder>/<fold>.jsonl``: the
  report's only source. A damaged line, or two records of one run that disagree, is one
  error line naming the file."""

  def __init__(self, folder: str):
    self.folder, self.by_key = folder, {}
    data = {}  # fold: (the sha256 of its records' data, the file of the first)
    if os.path.exists(folder) and not os.path.isdir(folder):
      raise SystemExit(f"error: {folder} is not a folder (the study's records go there): move "
                       "it aside, or give another --docs")
    if not os.path.isdir(folder):
      return
    for name in sorted(os.listdir(folder)):
      if not name.endswith(".jsonl"):
        continue
      path = os.path.join(folder, name)
      with open(path, "rb") as f:
        lines = f.read().splitlines()
      for i, line in enumerate(lines, 1):
        try:
          r = json.loads(line)  # bytes: not UTF-8 is a ValueError too
          key = (r["fold"], r["key"], r["seed"])
          check_record(r)
        except (ValueError, KeyError, TypeError):
          raise SystemExit(f"error: {path}: line {i} is not a run's record (damaged or "
                           "truncated): remove that line and run the command again to rerun "
                           "its run") from None
        sha = (r.get("data") or {}).get("sha256") if isinstance(r.get("data"), dict) else None
        first = data.setdefault(r["fold"], (sha, path))
        if first[0] != sha:  # checked even where the fold's data is not here (report only)
          raise SystemExit(f"error: {path}: line {i} is a run on other data of fold "
                           f"{r['fold']} ({str(sha)[:12]}) than {first[1]}'s "
                           f"({str(first[0])[:12]}): one fold's runs never pool two datasets; "
                           "move the records of the other data aside")
        old = self.by_key.get(key)
        if old is not None and old.get("final") != r.get("final"):
          raise SystemExit(f"error: {path}: two records of one run (fold {r['fold']}, seed "
                           f"{r['seed']}, {r['flags']}) with other numbers: keep one")
        self.by_key[key] = r

  def get(self, fold: Fold, key: str, seed: int) -> dict | None:
    return self.by_key.get((fold.fold, key, seed))

  def add(self, fold: Fold, record: dict) -> None:
    os.makedirs(self.folder, exist_ok=True)
    with open(os.path.join(self.folder, f"{fold.label or 'all'}.jsonl"), "a") as f:
      f.write(json.dumps(record, sort_keys=True) + "\n")
      f.flush()
      os.fsync(f.fileno())
    self.by_key[(fold.fold, record["key"], record["seed"])] = record


def check_record(r) -> None:
  """A record's fields as `record_of` writes them (TypeError when one is missing or of
  another type): what the plan and the report read."""
  real = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
  if not (isinstance(r, dict) and isinstance(r.get("fold"), (int, type(None)))
          and isinstance(r.get("key"), str) and isinstance(r.get("seed"), int)
          and r.get("status") in ("finished", "stopped") and isinstance(r.get("flags"), list)
          and isinstance(r.get("final"), dict) and isinstance(r.get("session"), dict)
          and (r["status"] != "finished" or (real(r["final"].get("acc"))
                                             and math.isfinite(r["final"]["acc"])))):
    raise TypeError("not a record")


def record_of(run: runs.Run, fold: Fold, flags: list[str], key: str, seed: int,
              predictions: bool) -> dict:
  """A finished run's record: its numbers, session, data, command (and test predictions)."""
  s = run.summary
  session = (run.sessions or [{}])[-1]
  record = {"fold": fold.fold, "key": key, "seed": seed, "status": run.status,
            "flags": [f for f in flags if not f.startswith(("--dataset=", "--data_dir="))],
            "command": command(flags, seed), "final": run.final,
            "selected": s.get("selected"), "epochs": s.get("epochs"),
            "train_seconds": s.get("train_seconds"), "data": run.data,
            "session": {k: session.get(k) for k in ("population", "execution", "backend",
                                                    "num_devices", "jax", "xla_flags",
                                                    "commit", "dirty", "wall_s")},
            "resumes": max(len(run.sessions) - 1, 0), "stopped": s.get("stopped")}
  if predictions and run.status == "finished":
    values = run.predictions()
    record["predictions"] = base64.b64encode(values.astype(np.uint8).tobytes()).decode()
    record["predictions_sha256"] = s.get("predictions_sha256")
  return record


# ---------------------------------------------------------------- the plan


@dataclasses.dataclass
class Searched:
  """A search's state on a fold: every point tried (its mean validation accuracy, None while
  runs are missing), the choice once made."""

  tried: dict
  chosen: tuple | None
  needed: list  # points whose runs are missing


def search_state(search: study.Search, fold: Fold, records: Records) -> Searched:
  """Replays the hill climb from the records (`study.Search`)."""
  start = search.start_point()
  wanted = [start] + search.neighbours(start)
  while True:
    scores = {p: mean_val(search, p, fold, records) for p in wanted}
    missing = [p for p, v in scores.items() if v is None]
    if missing:
      return Searched(scores, None, missing)
    best = max(sorted(wanted), key=lambda p: scores[p])  # ties: the lowest rungs
    new = [p for p in search.neighbours(best) if p not in wanted]
    if not new:
      return Searched(scores, best, [])
    wanted += new


def mean_val(search, point, fold: Fold, records: Records) -> float | None:
  flags = resolve(search.flags_of(point), fold)
  key = setting_key(flags)
  got = [records.get(fold, key, s) for s in study.TUNING_SEEDS]
  if any(r is None for r in got):
    return None
  return float(np.mean([r["final"].get("val_acc", float("nan")) for r in got]))


def row_flags(table: study.Table, row: study.Row, fold: Fold, records: Records):
  """A row's run flags on a fold, or None while its search has not chosen."""
  flags = list(row.flags)
  if row.tuned:
    state = search_state(study.SEARCHES[row.tuned], fold.tuning, records)
    if state.chosen is None:
      return None
    flags = list(study.SEARCHES[row.tuned].flags_of(state.chosen)) + flags
  return resolve(flags, fold)


def plan(tables: list[study.Table], folds: list[Fold], records: Records, out: str) -> list:
  """The runs missing now: (unit, fold, flags, key, predictions?) of every search's next
  points and of every row whose setting is known."""
  wanted, seen = [], set()

  def want(fold, flags, seed, reported):
    key = setting_key(flags)
    if records.get(fold, key, seed) is not None or (fold.fold, key, seed) in seen:
      return
    seen.add((fold.fold, key, seed))
    method = next(f[9:] for f in flags if f.startswith("--method="))
    slug = method + "-" + hashlib.sha256(key.encode()).hexdigest()[:10]
    workdir = os.path.join(out, fold.study, fold.label, slug, f"seed{seed}")
    unit = Unit(tuple(flags), seed, workdir, WEIGHTS.get(method, 1.0))
    wanted.append((unit, fold, flags, key, reported))

  for fold in folds:
    for t in tables:
      for name in t.searches():
        search, tuning = study.SEARCHES[name], fold.tuning
        for point in search_state(search, tuning, records).needed:
          for seed in study.TUNING_SEEDS:
            want(tuning, resolve(search.flags_of(point), tuning), seed, False)
      for row in t.rows:
        flags = row_flags(t, row, fold, records)
        if flags is not None:
          for seed in t.seeds:
            want(fold, flags, seed, True)
  return wanted


# ---------------------------------------------------------------- the report


def stats(values) -> dict:
  v = np.asarray(values, float)
  return {"mean": round(float(v.mean()), 4),
          "std": round(float(v.std(ddof=1)), 4) if v.size > 1 else 0.0,
          "fold_means": [round(float(x), 4) for x in np.atleast_2d(v).mean(axis=1)]}


def predictions(record: dict) -> np.ndarray:
  """A reported record's test predictions, one class a test pair."""
  return np.frombuffer(base64.b64decode(record["predictions"]), np.uint8).astype(np.int16)


def checked(record: dict, fold: Fold, labels: dict) -> dict:
  """A reported record, cross-checked: its predictions against their checksum and (when the
  fold's data is here) its accuracy against them; its data against the fold's."""
  where = f"{fold.study} {fold.label} seed {record['seed']} ({' '.join(record['flags'])})"
  if not isinstance(record.get("predictions"), str):
    raise SystemExit(f"error: the record of {where} has no test predictions (damaged): remove "
                     "its line from the records and run the command again")
  values = predictions(record)
  if hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest() != record.get(
      "predictions_sha256"):
    raise SystemExit(f"error: the record of {where} does not match its checksum (damaged): "
                     "remove its line from the records and run the command again")
  if fold.label in labels:
    acc = float(np.mean(values == labels[fold.label]))
    if not abs(acc - record["final"]["acc"]) <= 1e-6:  # (NaN: not equal either)
      raise SystemExit(f"error: the record of {where}: its accuracy {record['final']['acc']} "
                       f"is not its predictions' {acc}: remove its line and run it again")
  return record


def row_report(table, row, folds, records, labels, seeds) -> dict | None:
  """A row's numbers over the folds and seeds, its runs, and its searches; None while runs
  are missing."""
  got = []
  for fold in folds:
    flags = row_flags(table, row, fold, records)
    if flags is None:
      return None
    key = setting_key(flags)
    rs = [records.get(fold, key, s) for s in seeds]
    if any(r is None for r in rs):
      return None
    if any(r["status"] != "finished" for r in rs):
      bad = next(r for r in rs if r["status"] != "finished")
      raise SystemExit(f"error: {fold.study} {fold.label} {row.name} seed {bad['seed']} "
                       f"stopped ({bad.get('stopped')}): a row pools finished runs only")
    got.append([checked(r, fold, labels) for r in rs])
  acc = np.asarray([[r["final"]["acc"] for r in rs] for rs in got])
  out = {"name": row.name, "acc": stats(acc), "_acc": acc}
  if all(f.label in labels for f in folds):  # [F, S, N]: each run right on each test pair
    out["_correct"] = np.stack([[predictions(r) == labels[f.label] for r in rs]
                                for f, rs in zip(folds, got)])
  for m in ("audio", "visual"):
    if all(f"acc_{m}" in r["final"] for rs in got for r in rs):
      values = np.asarray([[r["final"][f"acc_{m}"] for r in rs] for rs in got])
      out[f"acc_{m}"], out[f"_acc_{m}"] = stats(values), values
  out["runs"] = [{"fold": fold.fold, "seed": r["seed"], "acc": r["final"]["acc"],
                  **{k: v for k, v in r["final"].items() if k.startswith("acc_")},
                  "command": r.get("command"), "population": r["session"].get("population"),
                  "threads": r["session"].get("xla_flags"), "commit": r["session"].get("commit"),
                  "dirty": r["session"].get("dirty"), "resumes": r.get("resumes"),
                  "train_seconds": r.get("train_seconds")}
                 for fold, rs in zip(folds, got) for r in rs]
  if row.tuned:
    out["tuning"] = {fold.label or "all": tuning_report(study.SEARCHES[row.tuned], fold.tuning,
                                                        records) for fold in folds}
  return out


def tuning_report(search: study.Search, fold: Fold, records: Records) -> dict:
  state = search_state(search, fold, records)
  tried = [{"setting": " ".join(search.flags_of(p)[len(search.flags):]),
            "val_acc": round(v, 4)} for p, v in sorted(state.tried.items())]
  ends = search.at_ladder_end(state.chosen)
  return {"tuned_on": fold.label or "all", "seeds": list(study.TUNING_SEEDS), "tried": tried,
          "chosen": " ".join(search.flags_of(state.chosen)[len(search.flags):]),
          "interior": not ends, "at_ladder_end": ends}


def read_report(path: str) -> dict:
  """The report file as this command last wrote it ({} when there is none); one line when it
  is damaged (it is remade from the records: moving it aside loses nothing)."""
  if not os.path.exists(path):
    return {}
  try:
    with open(path, "rb") as f:
      doc = json.loads(f.read())
  except OSError as e:
    raise SystemExit(f"error: cannot read {path}: {e.strerror}") from None
  except ValueError as e:
    doc = e
  if not isinstance(doc, dict) or not isinstance(doc.get("tables", {}), dict):
    raise SystemExit(f"error: {path} is not a report of experiments.results (damaged or "
                     "truncated): move it aside and run the command again; its tables are "
                     "remade from the records")
  return doc


def interval(x) -> list[float]:
  return [round(float(v), 4) for v in x]


def top_level(acc: np.ndarray) -> np.ndarray:
  """Accuracies [F, S] as `experiments.claims` takes them, the fold the top level; with one
  fold (a dataset without folds) the seeds are (the split is then fixed: its variance is not
  in the interval)."""
  return acc if acc.shape[0] >= 2 else acc.T


def table_report(table: study.Table, folds, records, labels, clips=None,
                 of_folds: int | None = None) -> dict:
  """A table's rows, each family's claims and the descriptive pairs; with ``clips`` (each
  fold's test pairs' recordings, [F, N]) each difference's recording-level bootstrap too.
  Over fewer folds than the dataset's ``of_folds`` the intervals are shown but no verdict is
  given (the claim rule is over every fold: a fold's seeds would stand in for its speakers)."""
  made, missing = {}, []
  for row in table.rows:
    r = row_report(table, row, folds, records, labels, table.seeds)
    if r is None:
      missing.append(row.name)
    else:
      made[row.name] = r
  if missing:
    return {"missing": missing}

  def by_recording(a: str, b: str) -> dict:
    if clips is None or "_correct" not in made[a] or "_correct" not in made[b]:
      return {}
    boot = claims.clip_bootstrap(made[a]["_correct"], made[b]["_correct"], clips)
    return {"ci95_recordings": interval(boot.ci95)}

  partial = of_folds is not None and len(folds) < of_folds
  for fam in table.families:
    result = claims.claims({n: (top_level(made[n]["_acc"]), top_level(made[fam.reference]["_acc"]))
                            for n in fam.rows})
    for n, c in result.items():
      made[n].setdefault("comparisons", []).append({
          "family": fam.name, "reference": fam.reference, "mean": round(c.mean, 4),
          "ci95_raw": interval(c.ci_raw), "p": round(c.p, 5),
          "p_holm": round(c.p_adjusted, 5), "level_holm": round(c.level, 5),
          "ci_holm": interval(c.ci_corrected), "verdict": c.verdict if not partial
          else f"none ({len(folds)} of {of_folds} folds)",
          **by_recording(n, fam.reference)})
  descriptive = []
  for a, b in table.descriptive:
    d = claims.paired_difference(top_level(made[a]["_acc"]), top_level(made[b]["_acc"]))
    descriptive.append({"row": a, "reference": b, "mean": round(d.mean, 4),
                        "ci95": interval(d.ci95), "p": round(d.p, 5), **by_recording(a, b)})
  return {"title": table.title, "rows": [{k: v for k, v in made[r.name].items()
                                          if not k.startswith("_")} for r in table.rows],
          "descriptive": descriptive}


def markdown(report: dict) -> str:
  rows = report["rows"]
  mods = [m for m in ("audio", "visual") if any(f"acc_{m}" in r for r in rows)]
  head = ["row", "acc"] + [f"acc {m}" for m in mods] + [
      "minus reference: mean [95% raw] [Holm-corrected]", "verdict", "runs"]
  cell = lambda s: f"{s['mean']:.3f} ± {s['std']:.3f}" if s else "-"
  lines = [f"{report['title']}. Accuracies: fractions, mean ± std over folds x seeds; "
           "intervals over the folds' mean paired differences (t, df = folds - 1).", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    comps = r.get("comparisons", [])
    diff = "<br>".join(f"{c['mean']:+.3f} [{c['ci95_raw'][0]:+.3f}, {c['ci95_raw'][1]:+.3f}] "
                       f"[{c['ci_holm'][0]:+.3f}, {c['ci_holm'][1]:+.3f}] vs {c['reference']}"
                       for c in comps) or "-"
    verdict = "<br>".join(c["verdict"] for c in comps) or "-"
    lines.append("| " + " | ".join([r["name"], cell(r["acc"])] + [cell(r.get(f"acc_{m}"))
                                                                    for m in mods]
                                   + [diff, verdict, str(len(r["runs"]))]) + " |")
  if report["descriptive"]:
    lines += ["", "Descriptive (no claim): " + "; ".join(
        f"{d['row']} - {d['reference']}: {d['mean']:+.3f} [{d['ci95'][0]:+.3f}, "
        f"{d['ci95'][1]:+.3f}]" for d in report["descriptive"])]
  boot = [(r["name"], c) for r in rows for c in r.get("comparisons", [])
          if "ci95_recordings" in c] + [(d["row"], d) for d in report["descriptive"]
                                        if "ci95_recordings" in d]
  if boot:
    lines += ["", "Recording-level bootstrap (descriptive, no claim: folds, then seeds and "
              "recordings within each drawn fold, resampled; experiments/claims.py): " + "; ".join(
                  f"{name} - {c['reference']}: [{c['ci95_recordings'][0]:+.3f}, "
                  f"{c['ci95_recordings'][1]:+.3f}]" for name, c in boot)]
  return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the command


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m experiments.results", allow_abbrev=False,
                              description=__doc__.split("\n\n")[1].strip())
  p.add_argument("--tables", default="tuned",
                 help=f"comma-separated, of {', '.join(study.TABLES)}")
  p.add_argument("--datasets", default="avmnist_hard", help="comma-separated study datasets "
                 "(inforeg_jax.datasets: synthetic, avmnist, avmnist_hard)")
  p.add_argument("--folds", default="", help="comma-separated folds (default: every fold)")
  p.add_argument("--jobs", type=int, default=2, help="populations at once (one thread each)")
  p.add_argument("--data_root", default="data", help="where the prepared datasets are")
  p.add_argument("--fsdd_dir", default="", help="prepare a missing AV-MNIST from these, and "
                 "replay its test pairs' recordings (the recording-level bootstrap)")
  p.add_argument("--mnist_dir", default="")
  p.add_argument("--out", default="runs/results", help="the runs' folders (scratch)")
  p.add_argument("--docs", default="docs/results", help="records and tables")
  p.add_argument("--report-only", action="store_true",
                 help="run nothing: tabulate the records (refused while a row lacks runs)")
  p.add_argument("--run_flags", default="",
                 help="flags added to every run, space-separated (e.g. '--epochs=2' for a "
                 "smoke test: its own records)")
  args = p.parse_args(argv)
  from inforeg_jax import datasets
  unknown = [t for t in args.tables.split(",") if t not in study.TABLES]
  if unknown:
    raise SystemExit(f"error: --tables: unknown {unknown}; choose from "
                     f"{', '.join(study.TABLES)}")
  names = args.datasets.split(",")
  bad = [n for n in names if n not in datasets.study()]
  if bad:
    raise SystemExit(f"error: --datasets: unknown {bad}; choose from "
                     f"{', '.join(datasets.study())}")
  if args.jobs < 1:
    raise SystemExit(f"error: --jobs={args.jobs} must be >= 1")
  try:
    only = [int(k) for k in args.folds.split(",")] if args.folds else None
  except ValueError:
    raise SystemExit(f"error: --folds={args.folds!r} is not a list of integers") from None
  tables = [study.TABLES[t] for t in args.tables.split(",")]
  extra = args.run_flags.split()
  by_rows = {f.lstrip("-").split("=")[0] for t in tables for r in t.rows for f in r.flags
             if f != "EPOCHS2"}  # (EPOCHS2: twice the runs' epochs, --run_flags' included)
  for t in tables:
    for s in map(study.SEARCHES.get, t.searches()):
      by_rows |= {f.lstrip("-").split("=")[0] for f in s.flags} | {"learning_rate", s.key or ""}
  for i, flag in enumerate(extra):
    name = flag.lstrip("-").split("=")[0]
    if name in ENGINE_FLAGS:
      raise SystemExit(f"error: --run_flags: {flag}: the study sets --{name} itself (per "
                       "dataset, fold, seed and run); --run_flags adds other run flags")
    if name in by_rows:  # a row's own flag comes later and wins: the rows would mix
      raise SystemExit(f"error: --run_flags: {flag}: the rows or searches of --tables="
                       f"{args.tables} set --{name} themselves; --run_flags adds other run "
                       "flags")
    if any(f.lstrip("-").split("=")[0] == name for f in extra[:i]):
      raise SystemExit(f"error: --run_flags: --{name} is given twice: give it once")
  try:  # the folders this command writes, before anything runs
    for flag, folder in (("--out", args.out), ("--docs", args.docs)):
      check_writable(folder, flag)
    lock = Lock(args.out, "--out", "another experiments.results")
  except RunError as e:
    raise SystemExit(f"error: {e}") from None
  try:
    for name in names:
      folds = folds_of(name, args.data_root, only)
      unknown = sorted(set(only or ()) - {f.fold for f in folds})
      if unknown:  # (never a report over fewer folds than asked for)
        raise SystemExit(f"error: --folds={args.folds}: {name} has no fold "
                         f"{', '.join(map(str, unknown))}")
      folds = [dataclasses.replace(f, extra=tuple(extra)) for f in folds]
      if not args.report_only:
        check_data(folds, args.fsdd_dir, args.mnist_dir)
      run_study(name, folds, tables, extra, args)
  finally:
    lock.release()
  return 0


def run_study(name: str, folds: list[Fold], tables, extra, args) -> None:
  """One dataset's study: its records checked against the data here, the missing runs run
  (plan -> run, round after round), then the report."""
  docs = os.path.join(args.docs, name + ("_" + "_".join(f.lstrip("-").replace("=", "-")
                                                         for f in extra) if extra else ""))
  records = Records(os.path.join(docs, "records"))
  doc = read_report(docs + ".json")
  if not args.report_only:
    try:
      check_writable(records.folder, "--docs")
    except RunError as e:
      raise SystemExit(f"error: {e}") from None
  check_records_data(name, folds, records)
  wall = None if args.report_only else run_missing(name, tables, folds, records, args)
  write_report(name, docs, doc, tables, folds, records, wall, args.fsdd_dir, args.mnist_dir)


def check_records_data(name: str, folds: list[Fold], records: Records) -> None:
  """The records were made on the data here (or none is here: report only)."""
  for fold in dict.fromkeys([g for f in folds for g in (f, f.tuning)]):
    here = data_identity(fold) if fold.data_dir and os.path.isdir(fold.data_dir) else None
    for r in records.by_key.values():
      if r["fold"] == fold.fold and here and r.get("data") and (
          r["data"].get("sha256") != here.get("sha256")):
        raise SystemExit(f"error: {records.folder}: runs of {name} {fold.label} were made on "
                         f"other data ({r['data'].get('sha256', '')[:12]}) than {fold.data_dir} "
                         f"({here.get('sha256', '')[:12]}): prepare it with the recorded "
                         "prep_command, or move the records aside")


def run_missing(name: str, tables, folds: list[Fold], records: Records, args) -> dict | None:
  """Plan -> run until the plan wants nothing (a search's next round needs the last one's
  scores), each finished run recorded as its population ends; the wall it took (None:
  nothing was missing)."""
  t0, total, rounds = time.time(), 0, 0
  while True:
    wanted = plan(tables, folds, records, args.out)
    if not wanted:
      break
    rounds += 1
    total += len(wanted)
    by_unit = {w[0]: w for w in wanted}
    print(f"{name} round {rounds}: {len(wanted)} runs", flush=True)

    def done(members):
      for u in members:
        _, fold, flags, key, reported = by_unit[u]
        run = runs.read(u.workdir)
        if run.status == "unfinished":
          raise SystemExit(f"error: {u.workdir}: the run ended without a summary")
        records.add(fold, record_of(run, fold, flags, key, u.seed, reported))

    try:
      populations.train_units([w[0] for w in wanted], args.jobs,
                              os.path.join(args.out, "logs"), done,
                              lambda line: print(line, flush=True))
    except populations.Stopped as e:
      print(f"\nstopped by {e.signal_name}: every finished run is recorded in "
            f"{records.folder}; run the same command again to continue", file=sys.stderr)
      sys.exit(130 if e.signal_name == "SIGINT" else 143)
    except RuntimeError as e:
      raise SystemExit(f"error: {e}") from None
  if not total:
    return None
  return {"runs": total, "rounds": rounds, "seconds": round(time.time() - t0, 1),
          "date": time.strftime("%Y-%m-%d %H:%M")}


def write_report(name: str, docs: str, doc: dict, tables, folds: list[Fold], records: Records,
                 wall: dict | None, fsdd: str = "", mnist: str = "") -> None:
  """``<docs>.json`` and a markdown file a table, from the records alone; refused (nothing
  written) while a row lacks runs or where it would replace a table over more folds."""
  path = docs + ".json"
  labels = {f.label: test_labels(f) for f in folds
            if f.data_dir is None or os.path.isdir(f.data_dir)}
  ids = [recordings_of_test(f, os.path.join(docs, "recordings"), fsdd, mnist) for f in folds]
  clips = np.stack(ids) if ids and all(i is not None for i in ids) and len(
      {len(i) for i in ids}) == 1 else None
  of_folds = len(folds_of(name, "", None))
  reports = {t.name: table_report(t, folds, records, labels, clips, of_folds) for t in tables}
  missing = {t: r["missing"] for t, r in reports.items() if "missing" in r}
  if missing:
    raise SystemExit(f"error: {name}: runs are missing for {missing} (run without "
                     "--report-only to make them); nothing written")
  every = [f.fold for f in folds]
  for t, r in reports.items():
    r["folds"] = every
    old = doc.get("tables", {}).get(t)
    before = old.get("folds", doc.get("folds")) if isinstance(old, dict) else None
    if isinstance(before, list) and set(before) > set(every):
      raise SystemExit(f"error: {path}: its {t!r} table is over folds {before}, this one only "
                       f"{every}: nothing written (every run is recorded); leave --folds out for "
                       "the report over every fold")
  from inforeg_jax import datasets
  doc.update({"dataset": name, "prep_command": datasets.study()[name][1].prep or "(built in)",
              "folds": every, "seeds": list(study.SEEDS),
              "tuning_seeds": list(study.TUNING_SEEDS), "claim_rule": CLAIM_RULE,
              "date": time.strftime("%Y-%m-%d"),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, CPU",
              "records": os.path.relpath(records.folder, os.path.dirname(path) or ".")})
  doc.setdefault("tables", {}).update(reports)
  if wall:
    doc.setdefault("wall", []).append(wall)
  with open(path, "w") as f:
    json.dump(doc, f, indent=1)
  for t, r in reports.items():
    with open(f"{docs}_{t}.md", "w") as f:
      f.write(markdown(r))
    print(f"\n{name} / {t}\n" + markdown(r))


CLAIM_RULE = ("paired by (fold, seed); the interval is a t-interval on the F fold means of the "
              "differences (df = F - 1); Holm's step-down within each family; a row wins or "
              "loses only where its Holm-corrected interval excludes 0 (experiments/claims.py, "
              "coverage shown by tests/test_claims.py)")


if __name__ == "__main__":
  cli(main)
