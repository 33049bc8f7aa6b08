"""python -m experiments.results [--tables=tuned] [--datasets=avmnist_hard] [--jobs=2]

Regenerates the paper's tables, every row over the same seeds, its runs trained as
populations (`inforeg_jax.trainer`: the members of one program, each the single run it names),
and writes what a reader needs to check or extend them:
- ``docs/results/<dataset>.json``: the prep command, then per row its name, the command that
  reproduces it (``--seeds=...``; DIR is the prepared data), each seed's values, mean and std
  of the final-epoch accuracies (fractions), and the paired difference from its reference
  with two intervals: over seeds (t), and over seeds *and* test examples (a paired
  hierarchical bootstrap: seeds and test examples resampled, the same examples for both);
- ``docs/results/<dataset>_<table>.md``: the table in Markdown.

Tables (``--tables``):
- ``tuned``: the comparison protocol (docs/RESULTS.md, "Protocol"): every method's learning
  rate and key hyperparameter chosen on validation accuracy over tuning seeds never reported,
  the same number of tuning runs a method; its chosen setting and its official defaults then
  on the reported seeds;
- ``methods``: Tables 2 and 3 at every method's defaults (the untuned rows), and each
  modality alone;
- ``options``: InfoReg's two window options (``--inforeg.criterion``) beside the paper's rule;
- ``epochs``: Table 1, joint training for E and 2E epochs against InfoReg for E;
- ``window``: Table 4, OGM-GE, AGM, PMR and InfoReg over the whole run, inside and outside
  the prime learning window;
- ``fusion``: Table 5, joint training and InfoReg under the four fusions;
- ``beta``, ``threshold``: Figs. 7 and 8, InfoReg's beta and K.

Datasets: ``synthetic`` (built in), ``avmnist`` (the easy variant) and ``avmnist_hard``
(``--variant=hard``), read from ``--data_root`` (default data/); a missing one is prepared
when ``--fsdd_dir`` and ``--mnist_dir`` are given, else the command to run is one line.

Runs go to ``--out``/<dataset>/<row>/seed<k>; a finished run is read back, an interrupted
population resumes from its checkpoints, so the command resumes. ``--jobs`` populations train
at once, each in its own process with one CPU thread.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import math
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import time

import numpy as np

from experiments import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS = (0, 1, 2, 3, 4)
MAX_MEMBERS = 12  # members of one population (its compile time grows with them on the CPU)
CHECKPOINT_EVERY = 5  # epochs: an orbax save costs ~0.1 s a member (docs/PERFORMANCE.md)


@dataclasses.dataclass(frozen=True)
class Data:
  dataset: str  # --dataset
  folder: str | None  # under --data_root; None: built in
  prep: str | None  # the command that prepares it (FSDD, MNIST, DIR: paths)


DATASETS = {
    "synthetic": Data("synthetic", None, None),
    "avmnist": Data("avmnist", "avmnist", "python -m data_prep.avmnist --fsdd_dir=FSDD "
                    "--mnist_dir=MNIST --out_dir=DIR"),
    "avmnist_hard": Data("avmnist", "avmnist_hard", "python -m data_prep.avmnist "
                         "--variant=hard --fsdd_dir=FSDD --mnist_dir=MNIST --out_dir=DIR"),
}
METHODS_T2 = ("joint", "ogm_ge", "agm", "pmr", "greedy", "inforeg")  # multimodal loss only
METHODS_T3 = ("joint_uni", "gblending", "mmpareto", "inforeg_uni")  # with unimodal losses

# The tuning protocol: a log grid of learning rates and each method's one key hyperparameter
# (three values, its official default among them); a method without one spends the same
# number of tuning runs on more tuning seeds.
LEARNING_RATES = (0.01, 0.02, 0.04)  # the presets' 0.01 and above: methods that slow
# learning were seen to want more (docs/RESULTS.md)
KEY_GRID = {
    "inforeg": ("inforeg.beta", (0.3, 0.9, 2.0)),  # paper Sec. 4.7: 0.9
    "inforeg_uni": ("inforeg.beta", (0.3, 0.9, 2.0)),
    "ogm_ge": ("ogm_ge.alpha", (0.1, 0.3, 0.8)),  # main.py 0.1; README CREMA-D 0.8
    "agm": ("agm.alpha", (0.5, 1.0, 2.5)),  # utils/config.py 1.0; README AV-MNIST 2.5
    "pmr": ("pmr.alpha", (1.0, 2.0, 4.0)),  # official 1.0; CREMA-D commands 2-5
    "gblending": ("gblending.super_epoch", (5, 10, 20)),  # BalanceBenchmark 10
}
TUNING_SEEDS = (100, 101)  # never reported
TUNING_SEEDS_NO_KEY = (100, 101, 102, 103, 104, 105)


def rows(table: str) -> list[tuple[str, list[str]]]:
  """(row name, run flags) of a table (``tuned``: its default rows; the tuned ones follow
  from the tuning runs)."""
  if table in ("methods", "tuned"):
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


TABLES = ("tuned", "methods", "options", "epochs", "window", "fusion", "beta", "threshold")


def tuning_settings(method: str) -> tuple[list[list[str]], tuple[int, ...]]:
  """(the settings tried, as flags; the tuning seeds) of a method."""
  key = KEY_GRID.get(method)
  if key is None:
    return [[f"--learning_rate={lr}"] for lr in LEARNING_RATES], TUNING_SEEDS_NO_KEY
  name, values = key
  return ([[f"--learning_rate={lr}", f"--{name}={v}"] for lr in LEARNING_RATES
           for v in values], TUNING_SEEDS)


RUN_FLAGS: list[str] = []  # --run_flags: added to every run (e.g. --epochs=2 for a smoke test)


def resolve(flags: list[str], name: str, data_root: str) -> list[str]:
  """The row's flags for a dataset (EPOCHS2: twice the dataset preset's epochs)."""
  from inforeg_jax.config import PRESETS
  data = DATASETS[name]
  out = [f"--dataset={data.dataset}"]
  if data.folder:
    out.append(f"--data_dir={os.path.join(data_root, data.folder)}")
  out += RUN_FLAGS
  for f in flags:
    out.append(f"--epochs={2 * PRESETS[data.dataset]['epochs']}" if f == "EPOCHS2" else f)
  return out


def _setting(argv: list[str]):
  """The run's config with ``auto``/None resolved: what the run actually does."""
  from inforeg_jax.flags import parse_flags
  cfg = parse_flags(argv)[0]
  return dataclasses.replace(cfg, window=cfg.resolved_window, threshold=cfg.resolved_threshold)


def canonical(flags: list[str]) -> tuple[str, ...]:
  """The flags without those that restate a default (``--window=whole`` for a baseline,
  ``--fusion=concat``, ``--inforeg.beta=0.9``, ``--threshold=0.04``): rows of one setting in
  several tables then share one run."""
  base = [f for f in flags if f.startswith(("--dataset=", "--data_dir=", "--method="))]
  default = _setting(base)
  return tuple(f for f in flags if f in base or _setting(base + [f]) != default)


def command(flags, seeds) -> str:
  return " ".join(["python -m experiments.run"]
                  + [("--data_dir=DIR" if f.startswith("--data_dir=") else f) for f in flags]
                  + [f"--seeds={','.join(map(str, seeds))}"])


def slug(name: str) -> str:
  return name.replace(" ", "_").replace("=", "-")


# ---------------------------------------------------------------- running populations


@dataclasses.dataclass(frozen=True)
class Run:
  """One seed of one setting: a member of some population."""

  flags: tuple[str, ...]
  seed: int
  workdir: str


def read_summary(path: str, seed: int) -> dict:
  """A run's summary.json, refused when it is another seed's run."""
  with open(path) as f:
    summary = json.load(f)
  if summary["config"]["seed"] != seed:
    raise RuntimeError(f"{path}: a run of seed {summary['config']['seed']}, expected seed {seed}"
                       " (delete the folder to rerun it)")
  return summary


def finished(run: Run) -> dict | None:
  path = os.path.join(run.workdir, "summary.json")
  if not os.path.exists(path):
    return None
  summary = read_summary(path, run.seed)
  return summary if "final" in summary or summary.get("stopped") else None


def populations(runs: list[Run]) -> list[list[Run]]:
  """The unfinished runs grouped into populations: one program (the config less the seed and
  the member-wise values) and one point of progress (a fresh run, or the epoch its checkpoints
  reached) each, at most MAX_MEMBERS members."""
  from inforeg_jax.config import member_fields
  from inforeg_jax.flags import parse_flags
  groups: dict = {}
  for run in runs:
    cfg = parse_flags(list(run.flags) + [f"--seed={run.seed}"])[0]
    program = {k: v for k, v in cfg.to_dict().items() if k not in ("seed", "workdir")}
    for name in member_fields():
      group, _, field = name.rpartition(".")
      if group:
        program.get(group, {}).pop(field, None)
      else:
        program.pop(name, None)
    ckpt = os.path.join(run.workdir, "checkpoints")
    steps = [int(d) for d in os.listdir(ckpt) if d.isdigit()] if os.path.isdir(ckpt) else []
    key = (json.dumps(program, sort_keys=True, default=str), max(steps, default=-1))
    groups.setdefault(key, []).append(run)
  out = []
  for members in groups.values():
    out += [members[i:i + MAX_MEMBERS] for i in range(0, len(members), MAX_MEMBERS)]
  return out


def resumable(members: list[Run]) -> bool:
  """Whether a population resumes: when a member has saved a checkpoint. A member that holds
  the start of a run and neither a checkpoint nor a summary (killed before its first save,
  every ``CHECKPOINT_EVERY`` epochs) has nothing to continue from, and ``--resume`` rightly
  refuses such a folder: it is emptied (the engine's folders hold only its own runs) and the
  member starts afresh."""
  saved = False
  for m in members:
    ckpts = os.path.join(m.workdir, "checkpoints")
    if os.path.isdir(ckpts) and any(n.isdigit() for n in os.listdir(ckpts)):
      saved = True
    elif os.path.isdir(m.workdir) and not os.path.exists(os.path.join(m.workdir,
                                                                      "summary.json")):
      shutil.rmtree(m.workdir)
  return saved


def train_population(members: list[Run], log_path: str) -> list[dict]:
  """Trains one population (in a worker process) and returns its members' summaries."""
  os.makedirs(os.path.dirname(log_path), exist_ok=True)
  streams = sys.stdout, sys.stderr
  with open(log_path, "a") as log:
    sys.stdout = sys.stderr = log
    try:
      from experiments.run import enable_compilation_cache
      from inforeg_jax.flags import parse_flags
      from inforeg_jax.trainer import train
      enable_compilation_cache()
      resume = resumable(members)
      cfgs = [parse_flags(list(m.flags) + [f"--seed={m.seed}", f"--workdir={m.workdir}",
                                           f"--checkpoint_every={CHECKPOINT_EVERY}"]
                          + (["--resume"] if resume else ["--overwrite"]))[0] for m in members]
      train(cfgs, progress=False)
    finally:
      sys.stdout, sys.stderr = streams
  return [read_summary(os.path.join(m.workdir, "summary.json"), m.seed) for m in members]


def _worker_init(single_thread: bool, compile_cache: str) -> None:
  if single_thread:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen"
                               "=false intra_op_parallelism_threads=1").strip()
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.abspath(compile_cache))


def run_all(runs: list[Run], jobs: int, out: str, tty: bool) -> dict[str, dict]:
  """Every run's summary {workdir: summary}: finished ones read back, the others trained as
  populations, ``jobs`` at once."""
  from tqdm import tqdm
  done = {r.workdir: s for r in runs for s in [finished(r)] if s is not None}
  todo = [r for r in dict.fromkeys(runs) if r.workdir not in done]
  pops = populations(todo)
  if not pops:
    return done
  t0 = time.time()
  bar = tqdm(total=len(todo), unit="run", desc="results", disable=not tty)
  logs = [os.path.join(out, "logs", f"population{k:03d}-{int(t0)}.txt") for k in range(len(pops))]

  def finish(members, summaries):
    for m, s in zip(members, summaries):
      done[m.workdir] = s
    bar.update(len(members))
    if not tty:
      print(f"[{len(done)}/{len(runs)} {time.time() - t0:.0f} s] "
            f"{' '.join(members[0].flags[2:])}: {len(members)} members", flush=True)

  if jobs == 1:  # in this process, with every thread
    _worker_init(False, os.path.join(out, ".jax_cache"))
    for members, log in zip(pops, logs):
      finish(members, train_population(members, log))
  else:
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        jobs, mp_context=context, initializer=_worker_init,
        initargs=(True, os.path.join(out, ".jax_cache"))) as pool:
      futures = {pool.submit(train_population, members, log): (members, log)
                 for members, log in zip(pops, logs)}
      for f in concurrent.futures.as_completed(futures):
        members, log = futures[f]
        try:
          summaries = f.result()
        except Exception as e:  # pending ones are cancelled, running ones finish (kept)
          for other in futures:
            other.cancel()
          raise SystemExit(f"error: a population of {len(members)} ("
                           f"{' '.join(members[0].flags)}) failed: {e} (its log: {log}); "
                           "the runs that finished are kept: run the command again to "
                           "continue") from None
        finish(members, summaries)
  bar.close()
  return done


# ---------------------------------------------------------------- statistics


def stats(values) -> dict:
  v = np.asarray(values, float)
  return {"mean": round(float(v.mean()), 4),
          "std": round(float(v.std(ddof=1)), 4) if len(v) > 1 else 0.0,
          "per_seed": [round(float(x), 4) for x in v]}


def paired(values, reference) -> dict:
  """Mean of the per-seed differences and its 95% t interval (over seeds only)."""
  from scipy import stats as st
  d = np.asarray(values, float) - np.asarray(reference, float)
  half = float(st.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 \
      else float("nan")
  return {"per_seed": [round(float(x), 4) for x in d], "mean": round(float(d.mean()), 4),
          "ci95": [round(float(d.mean()) - half, 4), round(float(d.mean()) + half, 4)]}


def bootstrap(correct, reference, draws: int = 4000, seed: int = 0) -> list[float] | None:
  """95% interval of the mean accuracy difference, resampling the seeds and, within the
  draw, the test examples (the same ones for both rows): the uncertainty of the seeds and of
  the test set together. ``correct``: bool [seeds, examples] of a row, paired by seed."""
  if correct is None or reference is None:
    return None
  a, b = np.asarray(correct, float), np.asarray(reference, float)
  rng = np.random.default_rng(seed)
  s, n = a.shape
  diffs = np.empty(draws)
  for i in range(draws):
    seeds = rng.integers(0, s, s)
    examples = rng.integers(0, n, n)
    diffs[i] = (a[np.ix_(seeds, examples)] - b[np.ix_(seeds, examples)]).mean()
  return [round(float(np.quantile(diffs, 0.025)), 4), round(float(np.quantile(diffs, 0.975)), 4)]


def correctness(runs: list[dict], labels) -> np.ndarray | None:
  """bool [seeds, examples]: each run's final-epoch test predictions right or not."""
  out = []
  for s in runs:
    path = os.path.join(s["workdir"], "test_predictions.npy")
    if not os.path.exists(path):
      return None
    out.append(np.load(path) == labels)
  return np.stack(out)


# ---------------------------------------------------------------- tables


def reference(table: str, name: str) -> str:
  """The row a row is compared with: joint training, or joint training* (with unimodal
  losses) for the Table 3 methods; in Table 1 joint training for E epochs, in Table 4 the
  method over the whole run, in Table 5 joint training with the same fusion, in Figs. 7/8
  the paper's choice (beta 0.9, K 0.04); in the tuned table, tuned joint training (or joint
  training*)."""
  if table == "beta":
    return "inforeg beta=0.9"
  if table == "threshold":
    return "inforeg K=0.04"
  if table == "epochs":
    return "joint E"
  if table == "window":  # inside or outside the window against the whole run
    return name.split()[0] + " whole"
  if table == "fusion":
    return "joint " + name.split()[1]
  base = name.split()[0]
  ref = "joint_uni" if base in METHODS_T3 else "joint"
  return f"{ref} tuned" if name.endswith(" tuned") else ref


def row_of(name: str, flags, runs: list[dict], labels) -> dict:
  seeds = [s["seed"] for s in runs]
  row = {"name": name, "command": command(flags, seeds), "seeds": seeds,
         "acc": stats([s["final"]["acc"] for s in runs])}
  for k in sorted(runs[0]["final"]):
    if k.startswith("acc_"):
      row[k] = stats([s["final"][k] for s in runs])
  row["selected_acc"] = stats([s["selected"]["acc"] for s in runs])
  row["selected_epoch"] = [s["selected"]["epoch"] for s in runs]
  row["train_seconds"] = stats([s["train_seconds"] for s in runs])
  row["_seeds"], row["_acc"] = seeds, [s["final"]["acc"] for s in runs]
  row["_correct"] = correctness(runs, labels)
  for m in ("audio", "visual"):
    if f"acc_{m}" in runs[0]["final"]:
      row[f"_acc_{m}"] = [s["final"][f"acc_{m}"] for s in runs]
  return row


def compare(row: dict, ref: dict | None) -> None:
  """The row minus its reference row, paired by seed (t) and by seed and test example
  (bootstrap); per modality over seeds. Nothing when the reference is the row itself or
  was not run on the same seeds."""
  if ref is None or ref["name"] == row["name"] or ref["_seeds"] != row["_seeds"]:
    return
  row["reference"] = ref["name"]
  row["minus_reference"] = paired(row["_acc"], ref["_acc"])
  row["minus_reference"]["ci95_with_test_examples"] = bootstrap(row["_correct"],
                                                                ref["_correct"])
  for m in ("audio", "visual"):
    if row.get(f"_acc_{m}") is not None and ref.get(f"_acc_{m}") is not None:
      row[f"minus_reference_acc_{m}"] = paired(row[f"_acc_{m}"], ref[f"_acc_{m}"])


def public(row: dict) -> dict:
  return {k: v for k, v in row.items() if not k.startswith("_")}


def markdown(table_rows: list[dict]) -> str:
  mods = sorted({k[4:] for r in table_rows for k in r if k.startswith("acc_")})
  head = (["row", "acc"] + [f"acc {m}" for m in mods]
          + ["acc - reference: seeds (t) / seeds and test examples (bootstrap), 95%", "seeds",
             "s/run"])
  cell = lambda s: f"{s['mean']:.3f} ± {s['std']:.3f}" if s else "-"
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in table_rows:
    diff = r.get("minus_reference")
    if diff:
      boot = diff.get("ci95_with_test_examples")
      d = (f"{diff['mean']:+.3f} [{diff['ci95'][0]:+.3f}, {diff['ci95'][1]:+.3f}]"
           + (f" / [{boot[0]:+.3f}, {boot[1]:+.3f}]" if boot else "") + f" vs {r['reference']}")
    else:
      d = "-"
    name = r["name"] + (f" ({r['chosen']})" if r.get("chosen") else "")
    lines.append("| " + " | ".join([name, cell(r["acc"])]
                                   + [cell(r.get(f"acc_{m}")) for m in mods]
                                   + [d, str(len(r["seeds"])),
                                      f"{r['train_seconds']['mean']:.0f}"]) + " |")
  return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the protocol


def choose(method: str, settings, tuning: dict[tuple, list[dict]]) -> tuple[list[str], dict]:
  """The setting with the best mean final validation accuracy over the tuning seeds (the
  first on a tie), and every setting's mean."""
  means = {" ".join(s): float(np.mean([r["final"]["val_acc"] for r in tuning[tuple(s)]]))
           for s in settings}
  best = max(settings, key=lambda s: means[" ".join(s)])
  return best, {k: round(v, 4) for k, v in means.items()}


def check_data(names, data_root: str, fsdd: str, mnist: str) -> None:
  """Every prepared dataset present, or prepared now (with --fsdd_dir and --mnist_dir), or
  one line saying what to run."""
  for name in names:
    data = DATASETS[name]
    if data.folder is None:
      continue
    out = os.path.join(data_root, data.folder)
    if os.path.exists(os.path.join(out, "manifest.json")):
      continue
    cmd = data.prep.replace("DIR", out)
    if not (fsdd and mnist):
      raise SystemExit(f"error: no prepared {name} in {out}: run {cmd} (FSDD and MNIST: "
                       "docs/DATA.md), or pass --fsdd_dir and --mnist_dir to prepare it here")
    cmd = cmd.replace("FSDD", fsdd).replace("MNIST", mnist)
    print(f"preparing {name}: {cmd}", flush=True)
    if subprocess.run([sys.executable, *cmd.split()[1:]], cwd=ROOT).returncode != 0:
      raise SystemExit(f"error: preparing {name} failed: {cmd}")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m experiments.results", allow_abbrev=False,
                              description=__doc__.split("\n\n")[0])
  p.add_argument("--tables", default="tuned", help=f"comma-separated, of {', '.join(TABLES)}")
  p.add_argument("--datasets", default="avmnist_hard",
                 help=f"comma-separated, of {', '.join(DATASETS)}")
  p.add_argument("--seeds", default=",".join(map(str, SEEDS)))
  p.add_argument("--jobs", type=int, default=2, help="populations at once (one thread each)")
  p.add_argument("--data_root", default="data", help="where the prepared datasets are")
  p.add_argument("--fsdd_dir", default="", help="prepare a missing AV-MNIST from these")
  p.add_argument("--mnist_dir", default="")
  p.add_argument("--out", default="runs/results")
  p.add_argument("--docs", default="docs/results")
  p.add_argument("--rows", default="",
                 help="comma-separated row names to run and tabulate (default: every row)")
  p.add_argument("--report-only", action="store_true",
                 help="run nothing: tabulate the finished runs (a row needs every seed)")
  p.add_argument("--run_flags", default="",
                 help="flags added to every run, space-separated (e.g. '--epochs=2')")
  args = p.parse_args(argv)
  RUN_FLAGS[:] = args.run_flags.split()
  tables, names = args.tables.split(","), args.datasets.split(",")
  for t in tables:
    rows(t)  # unknown table: one line
  unknown = [n for n in names if n not in DATASETS]
  if unknown:
    raise SystemExit(f"error: --datasets: unknown {unknown}; choose from {', '.join(DATASETS)}")
  try:
    seeds = [int(s) for s in args.seeds.split(",")]
  except ValueError:
    raise SystemExit(f"error: --seeds={args.seeds!r} is not a list of integers") from None
  if args.jobs < 1:
    raise SystemExit(f"error: --jobs={args.jobs} must be >= 1")
  only = set(filter(None, args.rows.split(",")))
  known = {name for t in tables for name, _ in rows(t)}
  if only - known:
    raise SystemExit(f"error: --rows: unknown {sorted(only - known)}; the rows of "
                     f"{','.join(tables)}: {', '.join(sorted(known))}")
  if not args.report_only:
    check_data(names, args.data_root, args.fsdd_dir, args.mnist_dir)
  tty = sys.stderr.isatty()
  t0 = time.time()

  # One run per setting and seed, in the folder of the setting's first row over all tables.
  folder: dict = {}
  for name in names:
    for t in TABLES:
      for row, flags in rows(t):
        folder.setdefault((name, canonical(resolve(flags, name, args.data_root))), slug(row))
  table_rows = {t: [(n, f) for n, f in rows(t) if not only or n in only] for t in tables}

  def run_of(name, flags, seed, where=None) -> Run:
    key = (name, canonical(resolve(flags, name, args.data_root)))
    base = where or os.path.join(args.out, name, folder.setdefault(key, slug(" ".join(flags))))
    return Run(key[1], seed, os.path.join(base, f"seed{seed}"))

  wanted = [run_of(n, f, s) for n in names for t in tables for _, f in table_rows[t]
            for s in seeds]
  tuning = {}  # (dataset, method, setting) -> runs
  if "tuned" in tables:
    for n in names:
      for method in METHODS_T2 + METHODS_T3:
        if only and method not in only:
          continue
        settings, tune_seeds = tuning_settings(method)
        for s in settings:
          where = os.path.join(args.out, n, "tuning", method, slug("_".join(f[2:] for f in s)))
          tuning[(n, method, tuple(s))] = [
              run_of(n, [f"--method={method}", *s], k, where) for k in tune_seeds]
  todo = wanted + [r for runs in tuning.values() for r in runs]
  if args.report_only:
    done = {r.workdir: s for r in todo for s in [finished(r)] if s is not None}
  else:
    done = run_all(todo, args.jobs, args.out, tty)

  # The tuned rows: each method's chosen setting on the reported seeds.
  chosen = {}
  for (n, method, _), _ in tuning.items():
    if (n, method) in chosen:
      continue
    settings, _ = tuning_settings(method)
    runs = {tuple(s): [done.get(r.workdir) for r in tuning[(n, method, tuple(s))]]
            for s in settings}
    if any(x is None for v in runs.values() for x in v):
      continue
    best, means = choose(method, settings, runs)
    chosen[(n, method)] = (best, means)
  final = {(n, m): [run_of(n, [f"--method={m}", *best], s,
                           os.path.join(args.out, n, "tuned", m)) for s in seeds]
           for (n, m), (best, _) in chosen.items()}
  finals = [r for v in final.values() for r in v]
  if args.report_only:
    done.update({r.workdir: s for r in finals for s in [finished(r)] if s is not None})
  elif finals:
    done.update(run_all(finals, args.jobs, args.out, tty))

  os.makedirs(args.docs, exist_ok=True)
  from inforeg_jax.data import load_dataset
  for n in names:
    data = DATASETS[n]
    labels = np.asarray(load_dataset(data.dataset, os.path.join(args.data_root, data.folder)
                                     if data.folder else "").test["label"])
    path = os.path.join(args.docs, f"{n}.json")
    doc = json.load(open(path)) if os.path.exists(path) else {}
    doc.update({"dataset": n, "prep_command": data.prep or "(built in: no preparation)",
                "date": time.strftime("%Y-%m-%d"),
                "machine": f"{platform.machine()}, {os.cpu_count()} cores, CPU"})
    doc.setdefault("tables", {})
    doc.setdefault("table_commands", {})
    doc.setdefault("not_run", {})
    for t in tables:
      doc["table_commands"][t] = (f"python -m experiments.results --tables={t} "
                                  f"--datasets={n} --seeds={args.seeds}"
                                  + (f" --rows='{args.rows}'" if only else ""))
      out, missing, made = [], [], {}
      entries = list(table_rows[t])
      if t == "tuned":
        entries = [(f"{m} tuned", None) for m in METHODS_T2 + METHODS_T3
                   if (n, m) in final and (not only or m in only)] + entries
      for name, flags in entries:
        if flags is None:  # a tuned row
          m = name.split()[0]
          runs_ = [done.get(r.workdir) for r in final[(n, m)]]
          best, means = chosen[(n, m)]
          row_flags = resolve([f"--method={m}", *best], n, args.data_root)
        else:
          runs_ = [done.get(run_of(n, flags, s).workdir) for s in seeds]
          row_flags = resolve(flags, n, args.data_root)
        if any(r is None or "final" not in r for r in runs_):
          missing.append(name)
          continue
        row = row_of(name, row_flags, runs_, labels)
        if flags is None:
          row["chosen"] = " ".join(f[2:] for f in best)
          row["tuning"] = {"seeds": list(TUNING_SEEDS if m in KEY_GRID else
                                         TUNING_SEEDS_NO_KEY),
                           "val_acc_by_setting": means}
        made[name] = row
        out.append(row)
      for row in out:  # once every row is made: a reference may come later in the table
        compare(row, made.get(reference(t, row["name"])))
        if row.get("chosen") and row["name"].split()[0] in made:  # tuned minus its defaults
          default = made[row["name"].split()[0]]
          row["minus_default"] = paired(row["_acc"], default["_acc"])
          row["minus_default"]["ci95_with_test_examples"] = bootstrap(row["_correct"],
                                                                      default["_correct"])
      if missing:
        print(f"{n} / {t}: not every seed has run for {', '.join(missing)}: left out")
      doc["not_run"][t] = missing
      doc["tables"][t] = [public(r) for r in out]
      with open(os.path.join(args.docs, f"{n}_{t}.md"), "w") as f:
        f.write(markdown(out))
      print(f"\n{n} / {t}\n" + markdown(out))
    doc["rows"] = [r for t in doc["tables"].values() for r in t]
    with open(path, "w") as f:
      json.dump(doc, f, indent=1)
  print(f"{len(done)} runs, {time.time() - t0:.0f} s wall")
  return 0


if __name__ == "__main__":
  cli(main)
