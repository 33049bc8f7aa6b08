"""python -m experiments.sweep --out=DIR [--seeds=0,1,2] [--grid=inforeg.beta=0.1,0.5,0.9]
                            [--grid=...] [--name=value ...]

Runs the cross product of seeds and grids (paper Figs. 7/8:
``--grid=inforeg.beta=0.1,0.3,0.5,0.7,0.9,1.0``, ``--grid=threshold=0.01,0.02,0.04,0.06,0.08,0.1``;
or ``--grid=method=joint,inforeg,ogm_ge``), each into its own ``DIR/<setting>/seed<k>``, and
prints the ``experiments.table`` of this sweep's runs (also written to ``DIR/table.md``; other
runs under DIR are left out). Any other ``--name=value`` is a run flag shared by all runs.
Every setting is checked before anything trains. A finished run (summary.json) of the same
config and data is kept, one cut short resumes from its last checkpoint, so a sweep resumes;
a folder holding a run of another config (other flags than the last sweep's) or of other data
(the prepared data changed since) is refused. Runs are read by `experiments.runs`.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os

from experiments import cli, os_error_line, runs, table
from inforeg_jax.config import config_differences, from_dict
from inforeg_jax.flags import parse_flags

try:
  from inforeg_jax.data.records import MissingDataError, identity, read_manifest
  from inforeg_jax.members import check_resume_early
  from inforeg_jax.trainer import RunError, train
except ModuleNotFoundError as e:  # the core install: no orbax, grain, tqdm, ...
  if (e.name or "").split(".")[0] in ("inforeg_jax", "experiments"):
    raise
  raise SystemExit("error: experiments.sweep needs the [train] extra: "
                   "pip install -e '.[train]'") from None

# Flags the sweep sets itself, per run.
OWN_FLAGS = ("seed", "seeds", "workdir", "resume", "overwrite")


def setting_of(flag: str) -> str:
  """The setting a flag or grid name sets (``--config.epochs=2``: ``epochs``)."""
  return flag.lstrip("-").split("=")[0].removeprefix("config.")


def parse_grid(specs: list[str]) -> list[tuple[str, list[str]]]:
  grid = []
  for spec in specs:
    name, _, values = spec.partition("=")
    if not name or not values:
      raise SystemExit(f"error: --grid={spec!r} is not name=v1,v2,...")
    if setting_of(name) in OWN_FLAGS:
      raise SystemExit(f"error: --grid={spec}: the sweep sets --{name} itself (use --seeds)")
    if any(setting_of(n) == setting_of(name) for n, _ in grid):
      raise SystemExit(f"error: --grid={name}=... given twice: put its values in one --grid")
    grid.append((name, values.split(",")))
  return grid


def parse_seeds(text: str) -> list[int]:
  """``0,1,2``: distinct non-negative integers."""
  seeds = []
  for part in text.split(","):
    if not part.strip().isdigit():
      raise SystemExit(f"error: --seeds={text}: {part!r} is not a seed (comma-separated "
                       "non-negative integers, e.g. --seeds=0,1,2)")
    if int(part) in seeds:
      raise SystemExit(f"error: --seeds={text}: seed {int(part)} is given twice")
    seeds.append(int(part))
  return seeds


def check_existing(workdir: str, cfg) -> str:
  """What to do with ``workdir``: "done" (its finished or stopped run has ``cfg``'s config
  and, for prepared data, was trained on the data ``cfg`` names as it is now), "resume"
  (checkpoints of ``cfg``'s config) or "fresh"; a run of another config or data is refused."""
  run = runs.read(workdir) if runs.is_run(workdir) else None
  if run is not None and run.status != "unfinished":
    # The folder is this seed's: another seed is another config.
    allowed = tuple(k for k in runs.NOT_TRAINED if k != "seed")
    try:
      changed = config_differences(from_dict(run.config), cfg, allowed=allowed)
    except (ValueError, TypeError) as e:  # a summary of another version
      changed = [str(e)]
    if changed:
      raise SystemExit(f"error: {workdir} holds a run of another config ({', '.join(changed)}):"
                       " sweep into another --out, or remove that folder to rerun it")
    now = data_identity(cfg)  # (a summary from before the data was recorded: not compared)
    if now is not None and "data" in run.summary and run.data != now:
      raise SystemExit(f"error: {workdir} holds a run on other data ({runs.data_label(run.data)}"
                       f"; {cfg.resolved_data_dir} holds {runs.data_label(now)}): sweep into "
                       "another --out, or remove that folder to rerun it")
    return "done"
  if os.path.isdir(os.path.join(workdir, "checkpoints")):
    try:
      check_resume_early(dataclasses.replace(cfg, resume=True), workdir)
    except RunError as e:
      raise SystemExit(f"error: {workdir}: {e}; sweep into another --out, or remove that "
                       "folder") from None
    return "resume"
  return "fresh"


def data_identity(cfg) -> dict | None:
  """The identity of the prepared data ``cfg`` names (None: the built-in data, or none
  prepared yet: training says so)."""
  if cfg.dataset == "synthetic":
    return None
  manifest = read_manifest(cfg.resolved_data_dir, strict=False)
  return identity(manifest) if manifest is not None else None


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m experiments.sweep", add_help=True,
                              allow_abbrev=False, description=__doc__.split("\n\n")[1])
  p.add_argument("--out", required=True)
  p.add_argument("--seeds", default="0")
  p.add_argument("--grid", action="append", default=[])
  args, run_flags = p.parse_known_args(argv)
  grid = parse_grid(args.grid)
  seeds = parse_seeds(args.seeds)
  for flag in run_flags:
    if setting_of(flag) in OWN_FLAGS:
      raise SystemExit(f"error: {flag}: the sweep sets --seed, --workdir, --resume and "
                       "--overwrite itself (use --seeds and --out)")
  names = [n for n, _ in grid]
  for flag in run_flags:
    both = [n for n in names if setting_of(n) == setting_of(flag)]
    if both:
      raise SystemExit(f"error: {flag} and --grid={both[0]}=... both set it: give one")

  plan = []  # (setting, seed, workdir, cfg, what to do), every one checked before any trains
  runs_of = {}  # a run's config (less its workdir): the plan's folder for it
  for values in itertools.product(*[v for _, v in grid]) if grid else [()]:
    setting = "_".join(f"{n}={v}" for n, v in zip(names, values)) or "default"
    for seed in seeds:
      workdir = os.path.join(args.out, setting, f"seed{seed}")
      flags = run_flags + [f"--{n}={v}" for n, v in zip(names, values)] + [
          f"--seed={seed}", f"--workdir={workdir}"]
      cfg, _ = parse_flags(flags)
      same = json.dumps({**cfg.to_dict(), "workdir": ""}, sort_keys=True, default=str)
      if same in runs_of:
        raise SystemExit(f"error: --grid: {runs_of[same]} and {workdir} would be one run (the "
                         "same config): give each value once")
      runs_of[same] = workdir
      plan.append((setting, seed, workdir, cfg, check_existing(workdir, cfg)))

  for setting, seed, _, cfg, todo in plan:
    if todo == "done":
      continue
    print(f"== {setting} seed {seed}", flush=True)
    try:
      train(dataclasses.replace(cfg, resume=todo == "resume", overwrite=todo == "fresh"))
    except (MissingDataError, RunError, ValueError) as e:
      raise SystemExit(f"error: {e}") from None
    except OSError as e:  # a full disk, a vanished directory, ...
      raise SystemExit(os_error_line(e)) from None
  text = table.render([w for _, _, w, _, _ in plan], group_by=[setting_of(n) for n in names])
  with open(os.path.join(args.out, "table.md"), "w") as f:
    f.write(text)
  print(text)
  return 0


if __name__ == "__main__":
  cli(main)
