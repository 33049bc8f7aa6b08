"""python -m experiments.table DIR... : gathers summary.json files into a Markdown table.

A row per setting (dataset, method, modalities trained, fusion, window, variant), seeds
pooled as mean +- std; columns: final fused accuracy, final accuracy of each modality
through the head, best fused accuracy (best-on-test: optimistic), seeds. Fractions.
"""

from __future__ import annotations

import glob
import json
import os
import sys
from collections import defaultdict

import numpy as np


def find_summaries(paths):
  for path in paths:
    if os.path.isfile(path):
      yield path
    else:
      yield from sorted(glob.glob(os.path.join(path, "**", "summary.json"), recursive=True))


def cell(values):
  if not values:
    return "-"
  v = np.asarray(values)
  return f"{v.mean():.3f}" if len(v) == 1 else f"{v.mean():.3f} ± {v.std(ddof=1):.3f}"


def _get(config: dict, key: str):
  """A config value by flag name (``agm.alpha`` reads the agm group)."""
  for part in key.split("."):
    config = config.get(part, "") if isinstance(config, dict) else ""
  return config


def render(paths, group_by=()) -> str:
  """The Markdown table; ``group_by`` adds config fields (e.g. beta, threshold) to the key."""
  extra = [k for k in group_by if k not in ("method", "dataset", "modalities", "fusion",
                                             "window", "variant")]
  groups, modalities = defaultdict(list), []
  for path in find_summaries(paths):
    with open(path) as f:
      s = json.load(f)
    c = s["config"]
    key = (s["dataset"], s["method"], c.get("modalities") or "all", c.get("fusion", "concat"),
           s.get("window", c.get("window", "prime")),
           c.get("inforeg", {}).get("variant", "paper")) + tuple(
               str(_get(c, k)) for k in extra)
    groups[key].append(s)
    for k in s["final"]:
      if k.startswith("acc_") and k[4:] not in modalities:
        modalities.append(k[4:])
  if not groups:
    raise SystemExit("error: no summary.json under " + " ".join(paths))
  head = (["dataset", "method", "modalities", "fusion", "window", "variant", *extra, "acc"]
          + [f"acc {m}" for m in modalities] + ["best acc", "seeds"])
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for key, runs in sorted(groups.items()):
    row = list(key) + [cell([r["final"]["acc"] for r in runs])]
    row += [cell([r["final"][f"acc_{m}"] for r in runs if f"acc_{m}" in r["final"]])
            for m in modalities]
    row += [cell([r["best"]["acc"] for r in runs]), str(len(runs))]
    lines.append("| " + " | ".join(row) + " |")
  return "\n".join(lines) + "\n\nAccuracies as fractions, final epoch unless marked best (best-on-test " \
                            "is optimistic); mean ± std over seeds.\n"


def main(argv=None) -> int:
  import argparse
  p = argparse.ArgumentParser(prog="python -m experiments.table", allow_abbrev=False,
                              description=__doc__.split("\n\n")[0].split(": ", 1)[-1])
  p.add_argument("paths", nargs="+", metavar="DIR",
                 help="run folders (or summary.json files) searched recursively")
  p.add_argument("--group_by", default="", help="comma-separated config fields added to each "
                 "row's key, e.g. inforeg.beta")
  args = p.parse_args(argv)
  print(render(args.paths, [g for g in args.group_by.split(",") if g]))
  return 0


if __name__ == "__main__":
  sys.exit(main())
