"""A population's members on disk: workdirs, resume, checkpoints, outputs and summaries.

Each member is exactly the run its config names, with its own workdir holding
``metrics.jsonl``, ``summary.json``, plots, TensorBoard events, ``log.txt``, the last epoch's
``test_predictions.npy`` and checkpoints, as a single run writes them, so that tables,
analyses and ``--resume`` of one member work on it alone. The loop (`inforeg_jax.loop`) gives
each epoch's rows; `Member.record` writes them.

What is refused, each with one `RunError` line: a used workdir without --resume or
--overwrite; --overwrite of a folder that holds more than a run; a --resume whose config or
data differ from the checkpointed run's (beyond what is safe to change), or that asks for
fewer epochs than were run, or of a run with results and no checkpoint left; members that
differ in more than their member-wise values or share a workdir; a workdir that the processes
of a multi-host run do not share.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import subprocess
from typing import Any, Sequence

import jax
import jax.experimental.multihost_utils as multihost
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from inforeg_jax import checkpoint, workdir as workdir_lib
from inforeg_jax.config import Config, config_differences, from_dict, member_fields
from inforeg_jax.program import Program, stack
from inforeg_jax.reporting import Reporter, json_safe, with_digest
from inforeg_jax.workdir import RunError


def prepare_workdir(cfg: Config) -> str:
  """The run's workdir, checked: a used one only with --resume or --overwrite, --overwrite
  only of a run's folder, writable. Nothing is deleted here (see `workdir.set_aside`)."""
  workdir = cfg.resolved_workdir
  if cfg.resume and cfg.overwrite:
    raise RunError("--resume and --overwrite exclude each other")
  if workdir_lib.used(workdir) and not (cfg.resume or cfg.overwrite):
    raise RunError(f"--workdir={workdir} already holds a run: pass --resume to continue it or "
                   "--overwrite to replace it (or choose another --workdir)")
  other = None if cfg.resume or cfg.overwrite else workdir_lib.nested_run(workdir)
  if other is not None:  # (table and --overwrite would read the two as one folder's runs)
    raise RunError(f"--workdir={workdir} would nest with the run in {other}: runs lie side "
                   "by side, never one inside another's folder; choose another --workdir")
  if cfg.overwrite and os.path.isdir(workdir):
    workdir_lib.check_replaceable(workdir)
  if jax.process_index() == 0:
    workdir_lib.check_writable(workdir)
  return workdir


def check_shared_workdir(workdir: str) -> None:  # pragma: no mutate
  """Multi-host runs write one set of checkpoints: every process must see process 0's
  workdir. A token written by process 0 must be readable by all of them."""
  if jax.process_count() == 1:
    return
  token = int(multihost.broadcast_one_to_all(np.int32(np.random.randint(1, 2**31 - 1))))
  path = os.path.join(workdir, ".process0-token")
  if jax.process_index() == 0:
    with open(path, "w") as f:
      f.write(str(token))
  multihost.sync_global_devices("token written")
  try:
    with open(path) as f:
      ok = f.read().strip() == str(token)
  except OSError:
    ok = False
  everyone = np.asarray(multihost.process_allgather(np.int32(ok)))
  if not everyone.all():
    raise RunError(f"--workdir={workdir} is not shared by all {jax.process_count()} processes "
                   f"(processes {np.flatnonzero(everyone == 0).tolist()} do not see process 0's "
                   "files): give every process the same directory on a shared filesystem")


def check_resumable(cfg: Config, loop: dict, data: dict | None = None) -> None:
  """Refuses to resume a checkpoint (its ``loop`` JSON) under another config, on other data
  (``data``: the dataset's identity), or with fewer epochs than it has done."""
  changed = config_differences(from_dict(loop["config"]), cfg)
  if changed:
    raise RunError("--resume with a different config: " + ", ".join(changed)
                   + " (only --epochs and the output/eval settings may change)")
  if data is not None and loop.get("data") not in (None, data):
    raise RunError(f"--resume on other data: {cfg.resolved_data_dir} holds version "
                   f"{data.get('version')} ({data.get('sha256', '')[:12]}), the run was "
                   f"trained on {loop['data'].get('version')} "
                   f"({loop['data'].get('sha256', '')[:12]}): give the same data, or start "
                   "afresh with --overwrite")
  done = loop["history"][-1]["epoch"] + 1
  if cfg.epochs < done:
    raise RunError(f"--resume --epochs={cfg.epochs}, but the checkpoint has finished {done} "
                   f"epochs: pass --epochs >= {done}")


def check_resume_early(cfg: Config, workdir: str) -> None:
  """Before any data is loaded or compiled: `check_resumable` on the latest checkpoint; and
  a run with results but no checkpoint left is refused (it cannot be continued, and a
  fresh run would replace its results)."""
  if not cfg.resume:
    return
  loop, saved = None, False
  if os.path.isdir(os.path.join(workdir, "checkpoints")):
    mngr = checkpoint.manager(workdir)
    try:
      saved = bool(mngr.all_steps())
      loop = checkpoint.latest_loop(mngr)
    finally:
      mngr.close()
  if loop is not None:
    check_resumable(cfg, loop)
  if saved:  # (unreadable ones: the restore says so, and which)
    return
  results = [f for f in ("summary.json", "metrics.jsonl")
             if os.path.exists(os.path.join(workdir, f))]
  if results:
    raise RunError(f"--resume: --workdir={workdir} holds a run's {results[0]} but no "
                   "checkpoint to continue it from: pass --overwrite to replace it, or choose "
                   "another --workdir")


def check_members(cfgs: Sequence[Config]) -> None:
  """Members differ only in their member-wise values and workdirs."""
  base = cfgs[0]
  allowed = ("workdir",) + tuple(member_fields())
  for c in cfgs[1:]:
    changed = config_differences(base, c, allowed=allowed)
    if changed:
      raise RunError("the members of a population differ in " + ", ".join(changed)
                     + ": only the member-wise settings may differ")
  dirs = [c.resolved_workdir for c in cfgs]
  if len(set(map(os.path.abspath, dirs))) != len(dirs):
    raise RunError("two members of the population would write the same --workdir "
                   f"({', '.join(d for d in dirs if dirs.count(d) > 1)})")


def restore(cfg: Config, mngr, abstract_state, data: dict | None = None,
            at_most: int | None = None, log=print):
  """(state, loop JSON) of the latest readable checkpoint (of epoch ``at_most`` or earlier),
  checked against ``cfg`` and the data's identity; None for a fresh run."""
  if not cfg.resume:
    return None
  try:
    restored = checkpoint.restore_latest(mngr, abstract_state, log=log, at_most=at_most,
                                         check=lambda loop: check_resumable(cfg, loop, data))
  except checkpoint.CheckpointError as e:
    raise RunError(f"--resume: {e}; start afresh with --overwrite") from None
  if restored is None:
    log(f"--resume: {cfg.resolved_workdir} has no checkpoint yet; starting a fresh run")
  return restored


@dataclasses.dataclass
class Member:  # pragma: no mutate
  """One member's host bookkeeping: its config, workdir, history, plot series, reporter,
  checkpoints, and why it stopped (None while it trains)."""

  index: int
  cfg: Config
  workdir: str
  history: list = dataclasses.field(default_factory=list)
  series: dict = dataclasses.field(default_factory=dict)
  stopped: str | None = None
  seconds: float = 0.0  # training time of earlier sessions (a resumed run)
  reporter: Any = None
  mngr: Any = None
  set_aside: bool = False
  saved: bool = False  # a checkpoint was written in this session
  sessions: list = dataclasses.field(default_factory=list)  # `session` of each, this one last
  predictions_sha256: str | None = None  # of the last test_predictions.npy written

  @property
  def done(self) -> int:
    return self.history[-1]["epoch"] + 1 if self.history else 0

  def open_outputs(self, modalities, writer: bool) -> None:
    self.reporter = Reporter(self.workdir, modalities, self.history, run_name=run_name(self.cfg),
                             hparams=hparams(self.cfg), write=writer, plots=self.cfg.plots)

  def record(self, row: dict, series: dict, predictions: np.ndarray, state, data: dict | None,
             elapsed: float, writer: bool) -> None:
    """Writes an epoch: its row (``time_s`` added), the test predictions, the outputs, and a
    checkpoint every --checkpoint_every epochs and after the last."""
    row = {**row, "time_s": round(self.seconds + elapsed, 2)}
    epoch = row["epoch"]
    self.history.append(row)
    if writer:  # the epoch's test predictions, for intervals over test examples
      predictions = np.ascontiguousarray(predictions, np.int16)
      np.save(os.path.join(self.workdir, "test_predictions.npy"), predictions)
      self.predictions_sha256 = hashlib.sha256(predictions.tobytes()).hexdigest()
    for k, values in series.items():
      self.series.setdefault(k, []).extend(values)
    self.reporter.epoch(row, series, self.history, self.series)
    if (epoch + 1) % self.cfg.checkpoint_every == 0 or epoch + 1 >= self.cfg.epochs:
      rank = "val_acc" if "val_acc" in row else "acc"
      checkpoint.save(self.mngr, epoch, state,  # every process: orbax writes collectively
                      {"history": self.history, "series": self.series,
                       "config": self.cfg.to_dict(), "data": data,
                       "train_seconds": self.seconds + elapsed, "sessions": self.sessions},
                      best_epoch=max(self.history, key=lambda r: r[rank])["epoch"])
      self.saved = True
    if self.saved and self.set_aside and writer:
      workdir_lib.drop_aside(self.workdir)
      self.set_aside = False

  def write_summary(self, members: int, writer: bool, data: dict | None = None) -> dict:
    """The member's summary (a member stopped in its first epoch: why, where its results
    would be), written to summary.json: with the data it trained on (``data``: the
    dataset's identity), its sessions, the checksum of its test predictions' values and its
    own (`reporting.with_digest`)."""
    if not self.history:
      summary = {"workdir": self.workdir, "stopped": self.stopped, "config": self.cfg.to_dict()}
      write = writer and self.stopped
    else:  # the time through its last epoch's evaluation, as its checkpoint holds it
      summary = run_summary(self.cfg, self.history, self.history[-1]["time_s"], self.workdir,
                            self.stopped, members)
      summary.update(data=data, sessions=self.sessions,
                     predictions_sha256=self.predictions_sha256 or predictions_digest(
                         os.path.join(self.workdir, "test_predictions.npy")))
      write = writer
    summary = with_digest(summary)
    if write:
      with open(os.path.join(self.workdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def predictions_digest(path: str) -> str | None:
  """sha256 of the values of a saved test_predictions.npy (None when there is none)."""
  try:
    values = np.ascontiguousarray(np.load(path), np.int16)
  except (OSError, ValueError):
    return None
  return hashlib.sha256(values.tobytes()).hexdigest()


def stopped_before(workdir: str) -> str | None:
  """Why a member stopped in an earlier session (its summary says), or None."""
  try:
    with open(os.path.join(workdir, "summary.json")) as f:
      return json.load(f).get("stopped")
  except (OSError, ValueError, AttributeError):
    return None


def restore_members(members: list[Member], program: Program, identity: dict | None, log):
  """The population's state from its members' checkpoints (--resume): every member from the
  same epoch, the latest one they all have (a population killed between two members' saves
  resumes from the earlier one); a stopped member from its own last. None for a fresh run."""
  cfg = members[0].cfg
  if not cfg.resume:
    return None
  replicated = NamedSharding(program.mesh, P())
  target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated),
                        program.member_state_shape)
  latest = {}
  for m in members:
    m.stopped = stopped_before(m.workdir)
    steps = m.mngr.all_steps()
    if steps:
      latest[m.index] = max(steps)
  if not latest:
    for m in members:
      log(f"--resume: {m.workdir} has no checkpoint yet; starting a fresh run")
    return None
  if len(latest) < len(members):
    missing = [m.workdir for m in members if m.index not in latest]
    raise RunError(f"--resume: {', '.join(missing)} have no checkpoint while other members "
                   "do: resume the members that have one on their own, or start afresh with "
                   "--overwrite")
  common = min((e for i, e in latest.items() if not members[i].stopped),
               default=max(latest.values()))
  states = []
  for m in members:
    restored = restore(m.cfg, m.mngr, target, identity, None if m.stopped else common, log)
    if restored is None:
      raise RunError(f"--resume: {m.workdir}: no checkpoint of epoch {common} or earlier")
    state, saved = restored
    m.history, m.series = list(saved["history"]), dict(saved.get("series", {}))
    m.seconds = float(saved.get("train_seconds", 0.0))
    m.sessions = list(saved.get("sessions", []))
    states.append(state)
  epochs = {m.done for m in members if not m.stopped}
  if len(epochs) > 1:  # a member's checkpoints stop earlier than the others' (none of epoch
    raise RunError(  # ``common`` survived): not resumable as one population
        f"--resume: the members' checkpoints are of different epochs ({sorted(epochs)}): "
        "resume them one at a time")
  return program.place(stack(states))


@functools.cache
def code_commit() -> dict:
  """The code's git commit, and whether tracked files differ from it (None outside a clone)."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    git = lambda *a: subprocess.run(["git", "-C", root, *a], capture_output=True, text=True,
                                    timeout=30).stdout.strip()
    commit = git("rev-parse", "HEAD")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
  except (OSError, subprocess.SubprocessError):
    return {"commit": None, "dirty": None}
  return {"commit": commit or None, "dirty": dirty if commit else None}


def session(program: Program, first_epoch: int) -> dict:
  """What this session ran on: everything besides the config and the data that can change a
  number (the population, how its members ran, the devices, XLA's thread settings, the code),
  and later its wall clock split (`trainer`)."""
  return {"first_epoch": first_epoch, "population": program.members,
          "execution": "vectorised" if program.vectorised else "sequential",
          "backend": jax.default_backend(), "num_devices": jax.device_count(),
          "num_processes": jax.process_count(), "jax": jax.__version__,
          "xla_flags": os.environ.get("XLA_FLAGS", ""), **code_commit()}


def run_name(cfg: Config) -> str:
  name = f"{cfg.dataset} / {cfg.method}"
  if cfg.modalities:
    name += f" ({cfg.modalities})"
  return name + f" / seed {cfg.seed}"


def hparams(cfg: Config) -> dict[str, Any]:
  """The flat settings TensorBoard's hparams view compares runs by."""
  flat = {"dataset": cfg.dataset, "method": cfg.method, "seed": cfg.seed, "epochs": cfg.epochs,
          "batch_size": cfg.batch_size, "learning_rate": cfg.learning_rate,
          "window": cfg.resolved_window, "fusion": cfg.fusion, "encoder": cfg.encoder,
          "width": cfg.width, "modalities": cfg.modalities or "all"}
  if cfg.options is not None:
    for k, v in dataclasses.asdict(cfg.options).items():
      flat[f"{cfg.method}.{k}"] = "" if v is None else v
  return flat


def run_summary(cfg: Config, history: list[dict], train_seconds: float, workdir: str,
                stopped: str | None = None, members: int = 1) -> dict:
  """A run's summary.json: final, selected-by-validation and best-on-test accuracies."""
  final = history[-1]
  select_key = "val_acc" if "val_acc" in final else "acc"
  selected = max(history, key=lambda r: r[select_key])
  best_test = max(history, key=lambda r: r["acc"])
  pick = lambda r: {k: v for k, v in r.items() if k in ("acc", "f1_macro", "val_acc")
                    or k.startswith("acc_")}
  skipped = int(sum(r.get("skipped_steps", 0) for r in history))
  summary = {
      "dataset": cfg.dataset, "method": cfg.method, "seed": cfg.seed, "epochs": cfg.epochs,
      "window": cfg.resolved_window, "workdir": workdir,
      "num_devices": jax.device_count(), "num_processes": jax.process_count(),
      "population": members,
      "accuracy_unit": "fraction",
      "final": pick(final),
      # model selection on the validation split (on test only when there is none)
      "selected": {"by": select_key, "epoch": selected["epoch"], **pick(selected)},
      # the best test epoch: optimistic, what the released code reports
      "best": {"acc": best_test["acc"], "epoch": best_test["epoch"]},
      "skipped_steps": skipped,
      "train_seconds": round(train_seconds, 2),
      "config": cfg.to_dict(),
  }
  if stopped:
    summary["stopped"] = stopped
  return json_safe(summary)
