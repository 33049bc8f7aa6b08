"""``train(cfg | [cfg, ...])``: a run, or a population of runs, from its workdirs to its
summaries.

A run is a population: one or more members (configs that differ only in the values
`config.member_fields` lists: the seed, the optimizer's numbers, K, a method's coefficient)
trained by one compiled program (`inforeg_jax.program`); a single run is a population of one.
This module is the order of things: workdirs and locks (`members`), data, the program, resume,
the epochs (`loop`), each member's outputs and checkpoints (`members.Member.record`),
summaries. It holds no per-method branch: the method's hooks (`methods.base.Method`) do what
differs.

A non-finite loss or Tr(F) stops a single run (unless --skip_nonfinite, and then more than a
tenth of an epoch's steps); in a population the member that turns non-finite stops alone (its
summary says so) and the others go on.

``# pragma: no mutate`` marks the glue that only whole runs exercise (tests/test_trainer_runs.py,
test_run, test_distributed, test_population): too slow to rerun per mutant; the rules it
calls are mutated.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time
from typing import Sequence

import jax
from tqdm.auto import tqdm

from inforeg_jax import checkpoint, methods, workdir as workdir_lib
from inforeg_jax import loop as loop_lib
from inforeg_jax import members as members_lib
from inforeg_jax.config import Config
from inforeg_jax.data import load_dataset, pipeline, select_modalities
from inforeg_jax.members import Member
from inforeg_jax.program import build_program, make_mesh, member_slice, vectorised
from inforeg_jax.reporting import RunLog
from inforeg_jax.workdir import RunError

__all__ = ["train", "RunError"]


def train(cfgs: Config | Sequence[Config], dataset=None, progress: bool | None = None,
          files: dict[str, str] | None = None):  # pragma: no mutate
  """Trains a config (returns its summary) or the members of a population (returns their
  summaries), writing ``<workdir>/summary.json`` for each. ``files``: {name: text} written
  into every member's workdir (e.g. the --config file, as config.py)."""
  started = time.perf_counter()
  single = isinstance(cfgs, Config)
  cfgs = [cfgs] if single else list(cfgs)
  members_lib.check_members(cfgs)
  made = workdir_lib.missing_folders([c.resolved_workdir for c in cfgs])
  writer = jax.process_index() == 0
  locks = []
  try:
    members = [Member(i, c, members_lib.prepare_workdir(c)) for i, c in enumerate(cfgs)]
    for m in members:
      members_lib.check_shared_workdir(m.workdir)
      if writer:  # before anything reads the workdir: another run may be writing it
        locks.append(workdir_lib.Lock(m.workdir))
      members_lib.check_resume_early(m.cfg, m.workdir)
    summaries = _train(members, dataset, progress, files or {}, writer, started)
  except RunError:  # refused: the folders made for it are not left behind empty
    if writer:
      workdir_lib.remove_unused(made)
    raise
  finally:
    for lock in locks:
      lock.release()
  return summaries[0] if single else summaries


def _dataset(cfg: Config, dataset):
  """The data a run trains on: the dataset, its modalities, --limit_train."""
  dataset = dataset or load_dataset(cfg.dataset, cfg.resolved_data_dir, cfg.seed)
  if cfg.modalities:
    dataset = select_modalities(dataset, cfg.modalities.split(","))
  if cfg.limit_train:
    dataset = dataclasses.replace(
        dataset, train={k: v[:cfg.limit_train] for k, v in dataset.train.items()})
  if methods.get(cfg.method).needs_validation and dataset.val is None:
    raise RunError(f"--method={cfg.method} reads a validation split, and {cfg.dataset} in "
                   f"{cfg.resolved_data_dir} has none: prepare the data with a validation split")
  return dataset


def _train(members: list[Member], dataset, progress, files, writer,
           started: float):  # pragma: no mutate
  cfg = members[0].cfg
  dataset = _dataset(cfg, dataset)
  steps = pipeline.steps_per_epoch(dataset.train, cfg.batch_size)
  mesh = make_mesh(len(members), vectorised(cfg.execution))
  for flag in ("batch_size", "eval_batch_size"):
    if getattr(cfg, flag) % mesh.shape["data"]:
      raise RunError(f"--{flag}={getattr(cfg, flag)} must be a multiple of the "
                     f"{mesh.shape['data']} devices each member's batch is split over")
  # Method, model, optimizer, state, jitted steps: everything checked before any file of an
  # old run is touched.
  try:
    program = build_program([m.cfg for m in members], dataset, steps, mesh)
  except ValueError as e:  # a method refusing this setting (e.g. Greedy's two modalities)
    raise RunError(str(e)) from None
  log = RunLog([m.workdir for m in members] if writer else [], console=writer)
  # Ctrl-C and SIGTERM stop at the loop's next compiled call, a method's own passes (e.g.
  # G-Blending's trials before epoch 0) included
  stop = loop_lib.StopAtStep()
  loop = loop_lib.Loop(cfg, dataset, program, interrupt=stop.check)
  for m in members:
    m.mngr = checkpoint.manager(m.workdir)
  try:
    state = members_lib.restore_members(members, program, dataset.identity, log.all)
    if state is None:
      if cfg.overwrite and writer:  # the old run is kept aside until an epoch is saved
        for m in members:
          m.set_aside = workdir_lib.set_aside(m.workdir)
          m.mngr.close()
          m.mngr = checkpoint.manager(m.workdir)
          m.history, m.series = [], {}
      state = program.method.on_start(loop, program.state)
    for m in members:
      for name, text in files.items():
        if writer:
          with open(os.path.join(m.workdir, name), "w") as f:
            f.write(text)
    log.open()
    summaries = _run(members, loop, state, steps, log, progress, writer, started)
  finally:
    stop.restore()
    for m in members:
      if m.mngr is not None:
        m.mngr.close()
      if m.set_aside and writer:
        (workdir_lib.drop_aside if m.saved else workdir_lib.restore_aside)(m.workdir)
    log.close()
  if stop.requested:  # came after the last step (the run finished, its files written): passed
    signal.raise_signal(getattr(signal, stop.requested))  # on to whoever handled it before
  return summaries


def _run(members: list[Member], loop, state, steps, log, progress, writer,
         started: float):  # pragma: no mutate
  """The epochs, each member's outputs, the summaries. Each member's summary and checkpoints
  record this session (`members.session`) with its wall clock split: start-up (imports
  excluded: from `train`'s call to the first epoch), the training steps, the method's
  end-of-epoch work, evaluation, and writing (outputs, checkpoints)."""
  cfg, n = loop.cfg, len(members)
  modalities = loop.dataset.modalities
  first_epoch = min((m.done for m in members if not m.stopped), default=cfg.epochs)
  for m in members:
    m.open_outputs(modalities, writer)
  session = members_lib.session(loop.program, first_epoch)
  wall = session["wall_s"] = {"startup": 0.0, "train": 0.0, "method": 0.0, "evaluate": 0.0,
                              "write": 0.0}
  for m in members:
    m.sessions.append(session)
  interactive = sys.stderr.isatty() if progress is None else progress
  bar = tqdm(total=cfg.epochs * steps, initial=first_epoch * steps, unit="step",
             desc=f"{cfg.dataset}/{cfg.method}" + (f" x{n}" if n > 1 else ""),
             disable=not interactive or not writer)
  label = (lambda m: "" if n == 1 else f"[{os.path.relpath(m.workdir)}] ")

  def halt(i: int, message: str):
    members[i].stopped = message
    if n == 1:
      raise RunError(message)
    log.member(i, f"{label(members[i])}stopped: {message}; the other members go on")

  def nonfinite(i: int, what: str, step: int, epoch: int):
    m = members[i]
    last = f"epoch {m.history[-1]['epoch']}" if m.history else "none"
    halt(i, f"non-finite {what} at step {step} (epoch {epoch}); the run stopped (last good "
            f"checkpoint: {last}). Lower --learning_rate, or pass --skip_nonfinite to skip "
            "such steps")

  t0 = time.time()
  wall["startup"] = time.perf_counter() - started

  def on_step(steps: int):
    bar.update(steps)

  try:
    for result in loop_lib.epochs(loop, state, first_epoch, [bool(m.stopped) for m in members],
                                  on_step, nonfinite):
      elapsed = time.time() - t0
      for k, v in result.seconds.items():
        wall[k] += v
      written = time.perf_counter()
      for i, why in result.stops.items():
        halt(i, why)
      for m, row, series in zip(members, result.rows, result.series):
        if row is None:
          continue
        m.record(row, series, result.predictions[m.index], member_slice(result.state, m.index),
                 loop.dataset.identity, elapsed, writer)
        log.member(m.index, f"{label(m)}epoch {row['epoch']}: loss {row['train_loss']:.4f} acc "
                   f"{row['acc']:.3f} " + " ".join(f"{k} {row[f'acc_{k}']:.3f}"
                                                   for k in modalities),
                   console=not interactive)
      wall["write"] += time.perf_counter() - written
      loop.interrupt()  # a signal during evaluation or the saves stops here, the epoch saved
      live = [m for m in members if not m.stopped]
      if live:
        bar.set_postfix(acc=f"{sum(m.history[-1]['acc'] for m in live) / len(live):.3f}")
  finally:
    bar.close()
    closing = time.perf_counter()
    unclosed = []
    # A session that ends in an error or a signal adds no TensorBoard hparams session (the
    # one that finishes the run does); every member's files are closed, even when one cannot
    # be (a full disk).
    ended = sys.exc_info()[0] is None
    for m in members:
      try:
        m.reporter.close(m.history, m.series, trained=ended and first_epoch < cfg.epochs)
      except OSError as e:
        unclosed.append(e)
    wall["write"] += time.perf_counter() - closing
    for k in wall:
      wall[k] = round(wall[k], 3)
    if unclosed and ended:  # (else the error under way is the one told)
      raise unclosed[0]

  summaries = [m.write_summary(n, writer, loop.dataset.identity) for m in members]
  stopped = [m for m in members if m.stopped]
  if stopped and len(stopped) == n and n > 1:
    raise RunError(f"every member stopped: {stopped[0].stopped}")
  return summaries
