"""python -m experiments.table DIR... : gathers finished runs into a Markdown table.

A row per setting (`experiments.runs`: the runs' whole config less the seed and the flags
that do not change what is trained, plus the data they trained on). Columns: dataset, data
(name, variant, fold, version; "built in" for the synthetic data), method, modalities,
fusion, window, variant, the ``--group_by`` fields, the other settings that differ between
rows (``settings``), then the seeds pooled as mean +- std: final fused accuracy, final
accuracy of each modality through the head, best fused accuracy (best-on-test: optimistic),
seeds. Fractions. Stopped and unfinished runs are left out, one line each on stderr; two runs
of one seed in one row are refused.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from experiments import cli, runs as runs_lib

# Fields with a column of their own (the data has one too).
BASE = ("dataset", "method", "modalities", "fusion", "window", "inforeg.variant")


def cell(values):
  if not values:
    return "-"
  v = np.asarray(values, float)
  return f"{v.mean():.3f}" if len(v) == 1 else f"{v.mean():.3f} ± {v.std(ddof=1):.3f}"


def _text(value) -> str:
  return "default" if value is None else str(value)  # None: the flag's default (K, ...)


def _order(value):
  """Sort the default first, numbers as numbers, everything else as text."""
  if value is None:
    return (-1, 0, "")
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    return (0, value, "")
  return (1, 0, _text(value))


def data_labels(settings: dict[str, dict]) -> dict[str, str]:
  """Each setting's data in a few words; the checksum added where two datasets would read
  the same."""
  datas = {json.dumps(s["data"], sort_keys=True): s["data"] for s in settings.values()}
  plain = {k: runs_lib.data_label(d) for k, d in datas.items()}
  labels = {k: f"{plain[k]} {str(d.get('sha256'))[:12]}"
            if isinstance(d, dict) and list(plain.values()).count(plain[k]) > 1 else plain[k]
            for k, d in datas.items()}
  return {key: labels[json.dumps(s["data"], sort_keys=True)] for key, s in settings.items()}


def render(paths, group_by=(), warn=lambda line: print(line, file=sys.stderr)) -> str:
  """The Markdown table; ``group_by`` gives config fields (e.g. inforeg.beta) a column;
  ``warn`` is given one line per run left out."""
  extra = [k for k in group_by if k not in BASE]
  found = runs_lib.find(paths)
  if not found:
    raise SystemExit("error: no summary.json under " + " ".join(paths))
  groups, left_out = runs_lib.group(found)
  for run, why in left_out:
    warn(f"left out: {run.name()}: {why}")
  if not groups:
    raise SystemExit(f"error: no finished run under {' '.join(paths)} ({len(left_out)} left "
                     "out)")
  settings = {key: rs[0].setting() for key, rs in groups.items()}
  for k in extra:
    if not any(k in flat for flat in settings.values()):
      raise SystemExit(f"error: --group_by={k}: no run's config has {k!r}")
  modalities = []
  for rs in groups.values():
    for r in rs:
      for k in r.final:
        if k.startswith("acc_") and k[4:] not in modalities:
          modalities.append(k[4:])
  data = data_labels(settings)
  # The settings that tell rows apart beyond the named columns.
  names = sorted({k for flat in settings.values() for k in flat} - {"data"})
  differ = [k for k in names if k not in BASE and k not in extra
            and len({json.dumps(flat.get(k)) for flat in settings.values()}) > 1]
  head = (["dataset", "data", "method", "modalities", "fusion", "window", "variant", *extra]
          + (["settings"] if differ else []) + ["acc"] + [f"acc {m}" for m in modalities]
          + ["best acc", "seeds"])
  order = [*BASE, *extra, *differ]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for key in sorted(groups, key=lambda k: ([_order(settings[k].get(n)) for n in order], data[k])):
    flat, rs = settings[key], groups[key]
    row = [_text(flat.get(k)) for k in [*BASE, *extra]]
    row.insert(1, data[key])
    if differ:
      row.append(" ".join(f"{k}={_text(flat.get(k))}" for k in differ))
    row.append(cell([r.final["acc"] for r in rs]))
    row += [cell([r.final[f"acc_{m}"] for r in rs if r.final.get(f"acc_{m}") is not None])
            for m in modalities]
    row += [cell([r.summary["best"]["acc"] for r in rs
                  if r.summary["best"]["acc"] is not None]), str(len(rs))]
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
