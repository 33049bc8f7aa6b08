"""python -m experiments.results [--tables=methods] [--datasets=synthetic,avmnist] [--jobs=2]

Regenerates the paper's tables on the synthetic data and AV-MNIST, every row over the same
seeds, and writes what a reader needs to check or extend them:
- ``docs/results/<dataset>.json``: the prep command, then per row its name, the command that
  reproduces its setting (no --seed or --workdir: add them per seed; DIR is the prepared data),
  the seeds, and mean and std of the final-epoch accuracies (fractions), of the
  validation-selected epoch's, and of the paired difference from joint training;
- ``docs/results/<dataset>_<table>.md``: the table in Markdown.

Tables (``--tables``; ``make results`` runs ``methods``):
- ``methods``: Tables 2 and 3, every method (fused and per-modality accuracy) and the
  unimodal baselines;
- ``options``: InfoReg's two window options (``--inforeg.criterion``) beside the paper's rule;
- ``epochs``: Table 1, joint training for E and 2E epochs against InfoReg for E;
- ``window``: Table 4, OGM-GE, AGM, PMR and InfoReg over the whole run, inside and outside
  the prime learning window;
- ``fusion``: Table 5, joint training and InfoReg under the four fusions;
- ``beta``, ``threshold``: Figs. 7 and 8, InfoReg's beta and K.

Runs go to ``runs/results/<dataset>/<row>/seed<k>``; a finished run is read back, an
interrupted one resumes from its checkpoint, so the command resumes. ``--jobs`` runs so many
single-threaded processes at once.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import math
import os
import platform
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS = (0, 1, 2, 3, 4)
DATA = {"avmnist": "data/avmnist"}
PREP = {"avmnist": ("python -m data_prep.avmnist --fsdd_dir=../shared/data/fsdd "
                    "--mnist_dir=../shared/data/mnist --out_dir=DIR")}
METHODS_T2 = ("joint", "ogm_ge", "agm", "pmr", "greedy", "inforeg")  # multimodal loss only
METHODS_T3 = ("joint_uni", "gblending", "mmpareto", "inforeg_uni")  # with unimodal losses


def rows(table: str) -> list[tuple[str, list[str]]]:
  """(row name, run flags) of a table."""
  if table == "methods":
    return [(m, [f"--method={m}"]) for m in METHODS_T2 + METHODS_T3] + [
        ("audio alone", ["--method=joint", "--modalities=audio"]),
        ("visual alone", ["--method=joint", "--modalities=visual"])]
  if table == "options":
    return [("joint", ["--method=joint"]), ("inforeg", ["--method=inforeg"])] + [
        (f"inforeg criterion={c}", ["--method=inforeg", f"--inforeg.criterion={c}"])
        for c in ("bounded", "trend")]
  if table == "epochs":
    return [("joint E", ["--method=joint"]), ("joint 2E", ["--method=joint", "EPOCHS2"]),
            ("inforeg E", ["--method=inforeg"])]
  if table == "window":
    return [(f"{m} {w}", [f"--method={m}", f"--window={w}"])
            for m in ("ogm_ge", "agm", "pmr", "inforeg") for w in ("whole", "prime", "other")]
  if table == "fusion":
    return [(f"{m} {f}", [f"--method={m}", f"--fusion={f}"])
            for f in ("concat", "sum", "film", "gated") for m in ("joint", "inforeg")]
  if table == "beta":
    return [(f"inforeg beta={b}", ["--method=inforeg", f"--inforeg.beta={b}"])
            for b in (0.1, 0.3, 0.5, 0.7, 0.9, 1.0)]
  if table == "threshold":
    return [(f"inforeg K={k}", ["--method=inforeg", f"--threshold={k}"])
            for k in (0.01, 0.02, 0.04, 0.06, 0.08, 0.1)]
  raise SystemExit(f"error: --tables: unknown table {table!r}")


TABLES = ("methods", "options", "epochs", "window", "fusion", "beta", "threshold")


def resolve(flags: list[str], dataset: str) -> list[str]:
  """The row's flags for a dataset (EPOCHS2: twice the dataset preset's epochs)."""
  from inforeg_jax.config import PRESETS
  out = [f"--dataset={dataset}"]
  if dataset in DATA:
    out.append(f"--data_dir={DATA[dataset]}")
  for f in flags:
    out.append(f"--epochs={2 * PRESETS[dataset]['epochs']}" if f == "EPOCHS2" else f)
  return out


def _setting(argv: list[str]):
  """The run's config with ``auto``/None resolved: what the run actually does."""
  from inforeg_jax.config import parse_flags
  cfg = parse_flags(argv)[0]
  return dataclasses.replace(cfg, window=cfg.resolved_window, threshold=cfg.resolved_threshold)


def canonical(flags: list[str]) -> tuple[str, ...]:
  """The flags without those that restate a default (``--window=whole`` for a baseline,
  ``--fusion=concat``, ``--inforeg.beta=0.9``, ``--threshold=0.04``): rows of one setting in
  several tables then share one run."""
  base = [f for f in flags if f.startswith(("--dataset=", "--data_dir=", "--method="))]
  default = _setting(base)
  return tuple(f for f in flags if f in base or _setting(base + [f]) != default)


def command(flags: list[str]) -> str:
  return " ".join(["python -m experiments.run"]
                  + [("--data_dir=DIR" if f.startswith("--data_dir=") else f) for f in flags])


def slug(name: str) -> str:
  return name.replace(" ", "_").replace("=", "-")


def run_one(flags: list[str], seed: int, workdir: str, single_thread: bool,
            compile_cache: str | None = None) -> dict:
  """One seed of a row: read back when finished, else run (resuming) and read back. Runs
  share JAX's persistent ``compile_cache``: a row's other seeds skip compiling its steps
  (the same executables, so the same numbers)."""
  summary = os.path.join(workdir, "summary.json")
  if os.path.exists(summary):
    return read_summary(summary, seed)
  env = dict(os.environ)
  if compile_cache:
    env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.abspath(compile_cache))
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  if single_thread:
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false "
                        "intra_op_parallelism_threads=1").strip()
  cmd = [sys.executable, "-m", "experiments.run", *flags, f"--seed={seed}",
         f"--workdir={workdir}", "--resume"]
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
  if proc.returncode != 0:
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
  return read_summary(summary, seed)


def read_summary(path: str, seed: int) -> dict:
  """A run's summary.json, refused when it is another seed's run."""
  with open(path) as f:
    summary = json.load(f)
  if summary["config"]["seed"] != seed:
    raise RuntimeError(f"{path}: a run of seed {summary['config']['seed']}, expected seed {seed}"
                       " (delete the folder to rerun it)")
  return summary


def stats(values) -> dict:
  v = np.asarray(values, float)
  return {"mean": round(float(v.mean()), 4),
          "std": round(float(v.std(ddof=1)), 4) if len(v) > 1 else 0.0}


def paired(values, reference) -> dict:
  """Mean of the per-seed differences and its 95% t interval."""
  from scipy import stats as st
  d = np.asarray(values, float) - np.asarray(reference, float)
  half = float(st.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 \
      else float("nan")
  return {"per_seed": [round(float(x), 4) for x in d], "mean": round(float(d.mean()), 4),
          "ci95": [round(float(d.mean()) - half, 4), round(float(d.mean()) + half, 4)]}


def reference(table: str, name: str) -> str:
  """The row a row is compared with: joint training, or joint training* (with unimodal
  losses) for the Table 3 methods; in Table 1 joint training for E epochs, in Table 4 the
  method over the whole run, in Table 5 joint training with the same fusion."""
  if table == "epochs":
    return "joint E"
  if table == "window":  # inside or outside the window against the whole run
    return name.split()[0] + " whole"
  if table == "fusion":
    return "joint " + name.split()[1]
  return "joint_uni" if name in METHODS_T3 else "joint"


def summarise(dataset: str, table: str, results: dict[str, dict[int, dict]]) -> dict:
  """The JSON rows of one table."""
  out = []
  for name, flags in rows(table):
    ref = reference(table, name)
    if name not in results:
      continue
    runs = results[name]
    seeds = sorted(runs)
    row = {"name": name, "command": command(resolve(flags, dataset)), "seeds": seeds,
           "acc": stats([runs[s]["final"]["acc"] for s in seeds])}
    for k in sorted(runs[seeds[0]]["final"]):
      if k.startswith("acc_"):
        row[k] = stats([runs[s]["final"][k] for s in seeds])
    row["selected_acc"] = stats([runs[s]["selected"]["acc"] for s in seeds])
    row["selected_epoch"] = [runs[s]["selected"]["epoch"] for s in seeds]
    row["train_seconds"] = stats([runs[s]["train_seconds"] for s in seeds])
    if ref in results and name != ref and seeds == sorted(results[ref]):
      row["reference"] = ref
      row["minus_reference"] = paired([runs[s]["final"]["acc"] for s in seeds],
                                  [results[ref][s]["final"]["acc"] for s in seeds])
      for m in ("audio", "visual"):
        if f"acc_{m}" in runs[seeds[0]]["final"] and f"acc_{m}" in results[ref][seeds[0]]["final"]:
          row[f"minus_reference_acc_{m}"] = paired(
              [runs[s]["final"][f"acc_{m}"] for s in seeds],
              [results[ref][s]["final"][f"acc_{m}"] for s in seeds])
    out.append(row)
  return out


def markdown(table_rows: list[dict]) -> str:
  mods = sorted({k[4:] for r in table_rows for k in r if k.startswith("acc_")})
  head = ["row", "acc"] + [f"acc {m}" for m in mods] + ["acc (val-selected)",
                                                       "acc - reference (95% CI)", "seeds", "s/run"]
  cell = lambda s: f"{s['mean']:.3f} ± {s['std']:.3f}" if s else "-"
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in table_rows:
    diff = r.get("minus_reference")
    d = (f"{diff['mean']:+.3f} [{diff['ci95'][0]:+.3f}, {diff['ci95'][1]:+.3f}] vs "
         f"{r['reference']}" if diff else "-")
    lines.append("| " + " | ".join([r["name"], cell(r["acc"])]
                                   + [cell(r.get(f"acc_{m}")) for m in mods]
                                   + [cell(r["selected_acc"]), d, str(len(r["seeds"])),
                                      f"{r['train_seconds']['mean']:.0f}"]) + " |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m experiments.results", allow_abbrev=False,
                              description=__doc__.split("\n\n")[0])
  p.add_argument("--tables", default="methods", help=f"comma-separated, of {', '.join(TABLES)}")
  p.add_argument("--datasets", default="synthetic,avmnist")
  p.add_argument("--seeds", default=",".join(map(str, SEEDS)))
  p.add_argument("--jobs", type=int, default=2, help="runs at once (single-threaded each)")
  p.add_argument("--out", default="runs/results")
  p.add_argument("--docs", default="docs/results")
  p.add_argument("--rows", default="",
                 help="comma-separated row names to run and tabulate (default: every row)")
  p.add_argument("--report-only", action="store_true",
                 help="run nothing: tabulate the finished runs (a row needs every seed)")
  args = p.parse_args(argv)
  from tqdm import tqdm

  tables, datasets = args.tables.split(","), args.datasets.split(",")
  seeds = [int(s) for s in args.seeds.split(",")]
  for d in datasets:
    manifest = os.path.join(ROOT, DATA.get(d, ""), "manifest.json")
    if not args.report_only and d in DATA and not os.path.exists(manifest):
      prep = PREP[d].replace("DIR", DATA[d]).split()
      print("preparing", d, ":", " ".join(prep), flush=True)
      subprocess.run([sys.executable] + prep[1:], cwd=ROOT, check=True)
  only = set(filter(None, args.rows.split(",")))
  known = {name for t in tables for name, _ in rows(t)}
  if only - known:
    raise SystemExit(f"error: --rows: unknown {sorted(only - known)}; the rows of "
                     f"{','.join(tables)}: {', '.join(sorted(known))}")
  table_rows = {t: [(n, f) for n, f in rows(t) if not only or n in only] for t in tables}
  # One run per setting and seed, in the folder of the setting's first row over all tables.
  setting, folder = {}, {}  # (dataset, row flags) -> canonical flags -> folder name
  for d in datasets:
    for t in TABLES:
      for name, flags in rows(t):
        key = setting.setdefault((d, tuple(flags)), (d, canonical(resolve(flags, d))))
        folder.setdefault(key, slug(name))
  unique = dict.fromkeys(setting[(d, tuple(flags))] + (seed,) for d in datasets
                         for t in tables for _, flags in table_rows[t] for seed in seeds)
  results: dict = {}
  t0 = time.time()
  tty = sys.stderr.isatty()
  workdirs = {key: os.path.join(args.out, key[0], folder[key[:2]], f"seed{key[2]}")
              for key in unique}
  if args.report_only:
    for key, workdir in workdirs.items():
      if os.path.exists(os.path.join(workdir, "summary.json")):
        results[key] = read_summary(os.path.join(workdir, "summary.json"), key[2])
    unique = {}
  bar = tqdm(total=len(unique), unit="run", desc="results", disable=not tty)
  with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
    futures = {}
    for (d, flags, seed) in unique:
      workdir = workdirs[(d, flags, seed)]
      futures[pool.submit(run_one, list(flags), seed, workdir, args.jobs > 1,
                          os.path.join(args.out, ".jax_cache"))] = (d, flags, seed)
    for f in concurrent.futures.as_completed(futures):
      results[futures[f]] = r = f.result()
      bar.update()
      bar.set_postfix_str(f"{futures[f][0]} {r['method']}")
      if not tty:  # one line a run instead of a progress bar in a log
        print(f"[{len(results)}/{len(unique)} {time.time() - t0:.0f} s] {r['dataset']} "
              f"{r['method']} seed {r['seed']}: acc {r['final']['acc']:.3f}", flush=True)
  bar.close()
  os.makedirs(args.docs, exist_ok=True)
  for d in datasets:
    path = os.path.join(args.docs, f"{d}.json")
    doc = json.load(open(path)) if os.path.exists(path) else {}
    doc.update({"dataset": d, "prep_command": PREP.get(d, "(built in: no preparation)"),
                "date": time.strftime("%Y-%m-%d"),
                "machine": f"{platform.machine()}, {os.cpu_count()} cores, CPU"})
    doc.setdefault("tables", {})
    doc.setdefault("table_commands", {})
    for t in tables:
      doc["table_commands"][t] = (f"python -m experiments.results --tables={t} "
                                  f"--datasets={d} --seeds={args.seeds}"
                                  + (f" --rows='{args.rows}'" if only else ""))
      by_name = {name: {seed: results[setting[(d, tuple(flags))] + (seed,)] for seed in seeds
                        if setting[(d, tuple(flags))] + (seed,) in results}
                 for name, flags in table_rows[t]}
      missing = [name for name, runs in by_name.items() if len(runs) < len(seeds)]
      if missing:
        print(f"{d} / {t}: not every seed has run for {', '.join(missing)}: left out")
      doc.setdefault("not_run", {})[t] = missing
      doc["tables"][t] = summarise(d, t, {n: r for n, r in by_name.items() if n not in missing})
      with open(os.path.join(args.docs, f"{d}_{t}.md"), "w") as f:
        f.write(markdown(doc["tables"][t]))
      print(f"\n{d} / {t}\n" + markdown(doc["tables"][t]))
    doc["rows"] = [r for t in doc["tables"].values() for r in t]
    with open(path, "w") as f:
      json.dump(doc, f, indent=1)
  print(f"{len(unique)} runs made, {time.time() - t0:.0f} s wall")
  return 0


if __name__ == "__main__":
  sys.exit(main())
