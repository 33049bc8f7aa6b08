"""Running many runs as populations, ``jobs`` at a time in worker processes.

A `Unit` is one run: its flags and seed, and the folder it trains in. `train_units` groups
units that share a compiled program (the same config less the member-wise values) into
populations (`inforeg_jax.trainer`: members one after another on the CPU, each bit for bit its
single run, so how the units are grouped changes no number), trains them ``jobs`` at a time
in worker processes with one CPU thread each (XLA's thread settings fixed and recorded in
every run's summary), and reports each finished population at once (``done``).

A run killed before its first checkpoint starts afresh, a run with checkpoints resumes. Ctrl-C
or SIGTERM stop every worker at its next step (each run's last checkpoint kept) and raise
`Stopped`; nothing is left running.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import math
import multiprocessing
import os
import shutil
import signal
import sys
import time
from typing import Callable, Sequence

# XLA's CPU thread settings of every worker: one thread (and what a run's command records)
SINGLE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
MAX_MEMBERS = 24  # a population: its members train one after another, so this only bounds
# how much one worker holds; populations are split so that every worker has work
CHECKPOINT_EVERY = 5  # epochs: an orbax save costs ~0.1 s a member (docs/PERFORMANCE.md)


class Stopped(Exception):
  """Ctrl-C or SIGTERM: the workers were stopped (``signal``: SIGINT or SIGTERM)."""

  def __init__(self, signal_name: str):
    super().__init__(signal_name)
    self.signal_name = signal_name


@dataclasses.dataclass(frozen=True)
class Unit:
  """One run: the flags of its config (a dataset's, its data folder, a row's or a tuning
  setting's), its seed, and its folder."""

  flags: tuple[str, ...]
  seed: int
  workdir: str
  weight: float = 1.0  # its cost in run-equivalents (the progress line's ETA)


def program_key(unit: Unit) -> str:
  """What the units of one population share: the config less the seed, the workdir and the
  member-wise values."""
  from inforeg_jax.config import member_fields
  from inforeg_jax.flags import parse_flags
  cfg = parse_flags(list(unit.flags) + [f"--seed={unit.seed}"])[0]
  program = {k: v for k, v in cfg.to_dict().items() if k not in ("seed", "workdir")}
  for name in member_fields():
    group, _, field = name.rpartition(".")
    (program.get(group, {}) if group else program).pop(field if group else name, None)
  return json.dumps(program, sort_keys=True, default=str)


def plan_populations(units: Sequence[Unit], jobs: int) -> list[list[Unit]]:
  """The units grouped by program, each group split so that there are at least ``jobs``
  populations when there are that many units (none over MAX_MEMBERS), the heaviest first."""
  groups: dict[str, list[Unit]] = {}
  for u in units:
    groups.setdefault(program_key(u), []).append(u)
  cap = MAX_MEMBERS
  if len(groups) < jobs:  # few programs: split them so that every worker has work
    cap = max(1, min(cap, math.ceil(len(units) / jobs)))
  out = []
  for members in groups.values():
    out += [members[i:i + cap] for i in range(0, len(members), cap)]
  return sorted(out, key=lambda p: -sum(u.weight for u in p))


def _fresh_or_resumed(members: list[Unit]) -> bool:
  """Whether the population resumes (a member has a checkpoint). A member folder with
  neither a checkpoint nor a summary (killed before its first save) is emptied: nothing in it
  can be continued, and `--resume` would refuse it."""
  resume = False
  for m in members:
    ckpts = os.path.join(m.workdir, "checkpoints")
    if os.path.isdir(ckpts) and any(n.isdigit() for n in os.listdir(ckpts)):
      resume = True
    elif os.path.isdir(m.workdir):
      shutil.rmtree(m.workdir)
  return resume


_STOPPED: list = []  # in a worker: SIGTERM came; it takes no further population
_TRAINING: list = []  # in a worker: a population under way


def _on_sigterm(*_) -> None:
  """A worker's SIGTERM: no further population; one under way, still importing or building
  (before the trainer's own handler stops it at a step), stops here and now."""
  _STOPPED.append(True)
  if _TRAINING:
    raise KeyboardInterrupt("SIGTERM")


def train_population(members: list[Unit], log_path: str) -> float:
  """Trains one population (in a worker process), its output to ``log_path``; the seconds
  it took."""
  if _STOPPED:
    raise Stopped("SIGTERM")
  start = time.time()
  os.makedirs(os.path.dirname(log_path), exist_ok=True)
  streams = sys.stdout, sys.stderr
  with open(log_path, "a") as log:
    sys.stdout = sys.stderr = log
    _TRAINING.append(True)
    try:
      from experiments.run import enable_compilation_cache
      from inforeg_jax.flags import parse_flags
      from inforeg_jax.trainer import train
      enable_compilation_cache()
      resume = _fresh_or_resumed(members)
      cfgs = [parse_flags(list(m.flags) + [
          f"--seed={m.seed}", f"--workdir={m.workdir}", f"--checkpoint_every={CHECKPOINT_EVERY}",
          "--plots=false", "--resume" if resume else "--overwrite"])[0] for m in members]
      try:
        train(cfgs, progress=False)
      except KeyboardInterrupt:  # SIGTERM from the parent: the run stopped at a step
        _STOPPED.append(True)
        raise
    finally:
      _TRAINING.clear()
      sys.stdout, sys.stderr = streams
  return time.time() - start


def eta_seconds(busy: float, finished: float, total: float, jobs: int) -> float:
  """The time left: the weighted runs left at the seconds a weighted run has taken one worker
  (``busy``: the finished populations' own seconds), shared by ``jobs`` workers. (Elapsed
  time over the runs finished would count ``jobs`` populations' time as one's.)"""
  return busy / finished * (total - finished) / jobs


def _worker_init(cache: str) -> None:
  os.environ["XLA_FLAGS"] = SINGLE_THREAD
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", cache)
  signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; SIGTERM stops a run
  signal.signal(signal.SIGTERM, _on_sigterm)


def train_units(units: Sequence[Unit], jobs: int, logs: str,
                done: Callable[[list[Unit]], None], progress: Callable[[str], None]) -> None:
  """Trains ``units`` as populations, ``jobs`` at a time; ``done(population)`` after each
  (in this process); ``progress(line)`` a line with counts, elapsed time and ETA. A failed
  population is one `RuntimeError` naming its log (the others finish first, kept)."""
  pops = plan_populations(units, jobs)
  if not pops:
    return
  total = sum(u.weight for u in units)
  finished, busy, t0 = 0.0, 0.0, time.time()
  stamp = time.strftime("%Y%m%d-%H%M%S")
  log_of = [os.path.join(logs, f"{stamp}-population{k:03d}.txt") for k in range(len(pops))]
  stop: list[str] = []
  previous = {s: signal.signal(s, lambda n, f: stop.append(signal.Signals(n).name))
              for s in (signal.SIGINT, signal.SIGTERM)}
  failed = []
  context = multiprocessing.get_context("spawn")
  pool = concurrent.futures.ProcessPoolExecutor(
      jobs, mp_context=context, initializer=_worker_init,
      initargs=(os.path.abspath(os.path.join(logs, "..", ".jax_cache")),))
  try:
    futures = {pool.submit(train_population, p, log): (p, log) for p, log in zip(pops, log_of)}
    pending = set(futures)
    while pending:
      ready, pending = concurrent.futures.wait(pending, timeout=0.5,
                                               return_when=concurrent.futures.FIRST_COMPLETED)
      if stop:
        raise Stopped(stop[0])
      for f in ready:
        members, log = futures[f]
        try:
          busy += f.result()
        except Exception as e:  # the worker's error, shown with its log
          failed.append(f"a population of {len(members)} ({' '.join(members[0].flags)}) "
                        f"failed: {type(e).__name__}: {e} (its log: {log})")
          continue
        done(members)
        finished += sum(u.weight for u in members)
        elapsed = time.time() - t0
        eta = eta_seconds(busy, finished, total, min(jobs, len(pops)))
        progress(f"[{finished:.0f}/{total:.0f} runs, {elapsed / 60:.1f} min, ETA "
                 f"{eta / 60:.1f} min] {' '.join(members[0].flags[2:])}: "
                 f"{len(members)} members")
  except (Stopped, KeyboardInterrupt) as e:
    for process in list(getattr(pool, "_processes", {}).values()):
      if process.is_alive():
        process.terminate()  # SIGTERM: the run stops at its next step, its checkpoint kept
    pool.shutdown(wait=True, cancel_futures=True)
    raise Stopped(e.signal_name if isinstance(e, Stopped) else "SIGINT") from None
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
    pool.shutdown(wait=True, cancel_futures=True)
  if failed:
    raise RuntimeError(failed[0] + (f" (and {len(failed) - 1} more)" if len(failed) > 1 else "")
                       + "; the runs that finished are kept: run the command again to continue")
