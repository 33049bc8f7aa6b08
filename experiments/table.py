"""python -m experiments.table DIR... : gathers summary.json files into a Markdown table.

A row per setting: the runs' whole config (summary.json's ``config``) less the seed and the
flags that do not change what is trained (workdir, resume, overwrite, eval_batch_size,
skip_nonfinite, data_dir). Columns: dataset, method, modalities, fusion, window, variant, the
``--group_by`` fields, the other settings that differ between rows (``settings``), then the
seeds pooled as mean +- std: final fused accuracy, final accuracy of each modality through the
head, best fused accuracy (best-on-test: optimistic), seeds. Fractions. Two runs of one seed
in one row are refused.
"""

from __future__ import annotations

import glob
import json
import os

import numpy as np

from experiments import cli
from inforeg_jax.config import flatten

# Config fields that do not change what is trained: runs that differ only in these pool.
NOT_TRAINED = ("seed", "workdir", "resume", "overwrite", "eval_batch_size", "skip_nonfinite",
               "data_dir")
# Fields with a column of their own, and what an older summary without them means.
BASE = {"dataset": "", "method": "", "modalities": "all", "fusion": "concat", "window": "prime",
        "inforeg.variant": "paper"}


def find_summaries(paths):
  for path in paths:
    if os.path.isfile(path):
      yield path
    else:
      yield from sorted(glob.glob(os.path.join(path, "**", "summary.json"), recursive=True))


def read_summary(path: str) -> dict:
  """A run's summary.json, checked; one ``error:`` line when it cannot be used."""
  try:
    with open(path) as f:
      s = json.load(f)
  except OSError as e:
    raise SystemExit(f"error: cannot read {path}: {e.strerror}") from None
  except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
    raise SystemExit(f"error: {path} is not valid JSON (truncated or damaged: {e}); rerun that "
                     "run with --resume or remove its folder") from None
  if not isinstance(s, dict) or not isinstance(s.get("config"), dict) or not all(
      isinstance(s.get(k), dict) and "acc" in s[k] for k in ("final", "best")):
    raise SystemExit(f"error: {path} is not a run's summary (config, final, best missing)")
  return s


def cell(values):
  if not values:
    return "-"
  v = np.asarray(values)
  return f"{v.mean():.3f}" if len(v) == 1 else f"{v.mean():.3f} ± {v.std(ddof=1):.3f}"


def setting(s: dict) -> dict:
  """The flat config that identifies a run's row (``agm.alpha`` for option groups)."""
  flat = {k: v for k, v in flatten(s["config"]).items() if k not in NOT_TRAINED}
  flat["dataset"], flat["method"] = s.get("dataset", flat.get("dataset")), s.get(
      "method", flat.get("method"))
  flat["window"] = s.get("window", flat.get("window"))  # resolved: auto -> prime / whole
  for k, default in BASE.items():
    if flat.get(k) in (None, ""):
      flat[k] = default
  return flat


def _text(value) -> str:
  return "default" if value is None else str(value)  # None: the flag's default (K, ...)


def _order(value):
  """Sort the default first, numbers as numbers, everything else as text."""
  if value is None:
    return (-1, 0, "")
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    return (0, value, "")
  return (1, 0, _text(value))


def render(paths, group_by=()) -> str:
  """The Markdown table; ``group_by`` gives config fields (e.g. inforeg.beta) a column."""
  extra = [k for k in group_by if k not in BASE]
  groups: dict[tuple, list[tuple[str, dict]]] = {}
  settings, modalities = {}, []
  for path in find_summaries(paths):
    s = read_summary(path)
    flat = setting(s)
    key = tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in flat.items()))
    settings[key] = flat
    groups.setdefault(key, []).append((os.path.dirname(path) or ".", s))
    for k in s["final"]:
      if k.startswith("acc_") and k[4:] not in modalities:
        modalities.append(k[4:])
  if not groups:
    raise SystemExit("error: no summary.json under " + " ".join(paths))
  for k in extra:
    if not any(k in flat for flat in settings.values()):
      raise SystemExit(f"error: --group_by={k}: no run's config has {k!r}")
  for runs in groups.values():
    seen = {}
    for folder, s in runs:
      seed = s.get("seed", s["config"].get("seed"))
      if seed in seen:
        raise SystemExit(f"error: {seen[seed]} and {folder} are both seed {seed} of one setting: "
                         "keep one of them (or pass only one of the folders)")
      seen[seed] = folder
  # The settings that tell rows apart beyond the named columns.
  names = sorted({k for flat in settings.values() for k in flat})
  differ = [k for k in names if k not in BASE and k not in extra
            and len({json.dumps(flat.get(k)) for flat in settings.values()}) > 1]
  head = (["dataset", "method", "modalities", "fusion", "window", "variant", *extra]
          + (["settings"] if differ else []) + ["acc"] + [f"acc {m}" for m in modalities]
          + ["best acc", "seeds"])
  order = [*BASE, *extra, *differ]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for key in sorted(groups, key=lambda k: [_order(settings[k].get(n)) for n in order]):
    flat, runs = settings[key], [s for _, s in groups[key]]
    row = [_text(flat.get(k)) for k in [*BASE, *extra]]
    if differ:
      row.append(" ".join(f"{k}={_text(flat.get(k))}" for k in differ))
    row.append(cell([r["final"]["acc"] for r in runs]))
    row += [cell([r["final"][f"acc_{m}"] for r in runs if f"acc_{m}" in r["final"]])
            for m in modalities]
    row += [cell([r["best"]["acc"] for r in runs]), str(len(runs))]
    lines.append("| " + " | ".join(row) + " |")
  return "\n".join(lines) + ("\n\nAccuracies as fractions, final epoch unless marked best "
                             "(best-on-test is optimistic); mean ± std over seeds.\n")


def main(argv=None) -> int:
  import argparse
  p = argparse.ArgumentParser(prog="python -m experiments.table", allow_abbrev=False,
                              description=__doc__.split("\n\n")[0].split(": ", 1)[-1])
  p.add_argument("paths", nargs="+", metavar="DIR",
                 help="run folders (or summary.json files) searched recursively")
  p.add_argument("--group_by", default="", help="comma-separated config fields shown in a "
                 "column of their own, e.g. inforeg.beta")
  args = p.parse_args(argv)
  print(render(args.paths, [g for g in args.group_by.split(",") if g]))
  return 0


if __name__ == "__main__":
  cli(main)
