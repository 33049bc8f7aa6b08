"""python -m experiments.sweep --out=DIR [--seeds=0,1,2] [--grid=beta=0.1,0.5,0.9] [--grid=...]
                            [--name=value ...]

Runs the cross product of seeds and grids (paper Figs. 7/8: ``--grid=beta=0.1,0.3,0.5,0.7,0.9,1.0``,
``--grid=threshold=0.01,0.02,0.04,0.06,0.08,0.1``; or ``--grid=method=joint,inforeg,ogm_ge``),
each into its own ``DIR/<setting>/seed<k>``, and prints the ``experiments.table`` of all of
them (also written to ``DIR/table.md``). Any other ``--name=value`` is a run flag shared by
all runs. Runs already finished (a summary.json present) are kept and runs cut short resume
from their last checkpoint, so a sweep resumes.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys

from experiments import table
from inforeg_jax.config import parse_flags
from inforeg_jax.trainer import train


def parse_grid(specs: list[str]) -> list[tuple[str, list[str]]]:
  grid = []
  for spec in specs:
    name, _, values = spec.partition("=")
    if not name or not values:
      raise SystemExit(f"error: --grid={spec!r} is not name=v1,v2,...")
    grid.append((name, values.split(",")))
  return grid


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m experiments.sweep", add_help=True,
                              description=__doc__.split("\n")[0])
  p.add_argument("--out", required=True)
  p.add_argument("--seeds", default="0")
  p.add_argument("--grid", action="append", default=[])
  args, run_flags = p.parse_known_args(argv)
  grid = parse_grid(args.grid)
  seeds = [int(s) for s in args.seeds.split(",")]
  names = [n for n, _ in grid]
  for values in itertools.product(*[v for _, v in grid]) if grid else [()]:
    setting = "_".join(f"{n}={v}" for n, v in zip(names, values)) or "default"
    for seed in seeds:
      workdir = os.path.join(args.out, setting, f"seed{seed}")
      if os.path.exists(os.path.join(workdir, "summary.json")):
        continue
      started = os.path.isdir(os.path.join(workdir, "checkpoints"))
      flags = run_flags + [f"--{n}={v}" for n, v in zip(names, values)] + [
          f"--seed={seed}", f"--workdir={workdir}"] + (["--resume"] if started else
                                                       ["--overwrite"])
      cfg, _ = parse_flags(flags)
      print(f"== {setting} seed {seed}", flush=True)
      train(cfg)
  text = table.render([args.out], group_by=names)
  with open(os.path.join(args.out, "table.md"), "w") as f:
    f.write(text)
  print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
