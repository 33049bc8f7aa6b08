"""The training loop, top to bottom: workdirs, mesh, input, members, program, checkpoints, the
epoch loop, evaluation, summaries.

A run is a population: one or more members (configs that differ only in the hyperparameters
`config.member_fields` lists: the seed, the optimizer's numbers, K, a method's coefficient)
trained by one compiled program, the step vmapped over a leading member axis (sharded over a
``pop`` mesh axis when there are devices to spare). A single run is a population of one. Each
member is exactly the run its config names: its own initial parameters, data order and
augmentation keys (from its seed), and its own workdir with ``metrics.jsonl``,
``summary.json``, plots, TensorBoard events, ``log.txt`` and checkpoints, as a single run
writes them, so tables, analyses and ``--resume`` of one member work on it alone.

``train(cfg | [cfg, ...])`` returns the summary (or the members' summaries). It holds no
per-method branch: the method's hooks (`inforeg_jax.methods.base.Method`) do what differs.
Accuracies are fractions.

What it refuses or stops on, each with one `RunError` line: a used workdir without --resume or
--overwrite; --overwrite of a folder that holds more than a run; a workdir another run is
writing; a --resume whose config or data differ from the checkpointed run's (beyond what is
safe to change) or that asks for fewer epochs than were run, or with no checkpoint left of a
run that has results; a non-finite loss or Tr(F) (unless --skip_nonfinite, and then more than
a tenth of an epoch's steps); a workdir that the processes of a multi-host run do not share.
In a population, a member that turns non-finite stops alone (its summary says so) and the
others go on.

``# pragma: no mutate`` marks the glue that only whole runs exercise (tests/test_trainer_runs.py,
test_run, test_distributed, test_population): too slow to rerun per mutant; the rules it
calls are mutated.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.experimental.multihost_utils as multihost
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
from tqdm.auto import tqdm

from inforeg_jax import checkpoint, methods, workdir as workdir_lib
from inforeg_jax.config import Config, config_differences, from_dict, member_values
from inforeg_jax.data import Dataset, load_dataset, pipeline, select_modalities
from inforeg_jax.labels import modality_labels, resolve_labels
from inforeg_jax.methods.base import Method, Setup
from inforeg_jax.reporting import Reporter, RunLog, json_safe
from inforeg_jax.train import (MemberBuilder, TrainState, make_create_state, make_eval_step,
                               make_optimizer, make_predict, make_train_step, member_rng)
from inforeg_jax.workdir import RunError

__all__ = ["train", "RunError", "build_program", "make_mesh", "Loop", "Program",
           "make_optimizer"]

MAX_SKIPPED_FRACTION = 0.1  # --skip_nonfinite: an epoch with more skipped steps stops


def to_global(batch, sharding):  # pragma: no mutate
  """This process's slice of a global batch as global arrays laid out by ``sharding``."""
  if jax.process_count() == 1:  # the whole batch is here: a plain transfer, 10x cheaper
    return jax.device_put(batch, sharding)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def make_mesh(members: int = 1):  # pragma: no mutate
  """A ("pop", "data") mesh over every device of every process: the members split over
  ``pop`` (as many groups as divide both the members and the devices), each member's batch
  over ``data``. Across processes the members stay whole (each process feeds its slice of
  every member's batch)."""
  devices = jax.device_count()
  pop = math.gcd(members, devices) if jax.process_count() == 1 else 1
  return jax.make_mesh((pop, devices // pop), ("pop", "data"),
                       axis_types=(AxisType.Auto, AxisType.Auto))


def stack(trees: Sequence) -> Any:
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def member_slice(tree, i: int):
  return jax.tree.map(lambda x: x[i], tree)


@dataclasses.dataclass
class Program:
  """What a population executes: member 0's method (for the host hooks), the model, the
  members' hyperparameters, the sharded state, the jitted vmapped steps."""

  builder: MemberBuilder
  method: Method
  model: Any
  hp: dict[str, np.ndarray]  # member-wise values [N]
  state: TrainState  # every leaf with a leading member axis
  train_step: Callable  # (state, batch [N, B, ...], hp) -> (state, metrics [N]); state donated
  eval_step: Callable  # (state, batch [B, ...]) -> metric sums [N, ...]
  predict: Callable  # (state, batch [N, B, ...], rng [N] | None) -> outputs [N, ...]
  init_opt_state: Callable  # (params [N, ...], hp) -> a fresh optimizer state per member
  member_state_shape: Any  # one member's TrainState (shapes, dtypes), for checkpoints
  mesh: Any

  @property
  def members(self) -> int:
    return len(next(iter(self.hp.values())))


def member_hp(cfgs: Sequence[Config]) -> dict[str, np.ndarray]:
  """The members' member-wise values as arrays [N] (int32 seeds, float32 the rest)."""
  values = [member_values(c) for c in cfgs]
  return {k: np.asarray([v[k] for v in values], np.int32 if k == "seed" else np.float32)
          for k in values[0]}


def build_program(cfgs: Sequence[Config] | Config, dataset: Dataset, steps_per_epoch: int,
                  mesh=None) -> Program:  # pragma: no mutate
  """The method, model and optimizer for the members ``cfgs`` (or one config), the state of
  every member sharded over ``mesh``, the steps vmapped over the members and jitted."""
  cfgs = [cfgs] if isinstance(cfgs, Config) else list(cfgs)
  mesh = make_mesh(len(cfgs)) if mesh is None else mesh
  cfg = cfgs[0]
  setup = Setup(modalities=dataset.modalities, num_classes=dataset.num_classes,
                steps_per_epoch=steps_per_epoch, window=cfg.resolved_window)
  host_method = methods.get(cfg.method)(cfg, setup)
  model = host_method.build_model(dataset)
  example = {m: jnp.zeros((2,) + v.shape[1:], v.dtype) for m, v in dataset.train.items()
             if m != "label"}
  if dataset.preprocess is not None:
    example = dataset.preprocess({"inputs": example}, jax.random.key(0), False)["inputs"]
  hp = member_hp(cfgs)
  hp0 = {k: v[0] for k, v in hp.items()}
  params_shape = jax.eval_shape(lambda: model.init(
      {"params": jax.random.key(0), "dropout": jax.random.key(0)}, example, train=False))["params"]
  labels = modality_labels(params_shape, setup.modalities)
  builder = MemberBuilder(cfg, setup, labels)
  create_state = make_create_state(model, builder, example)

  members, batch = NamedSharding(mesh, P("pop")), NamedSharding(mesh, P("pop", "data"))
  shared_batch = NamedSharding(mesh, P("data"))
  hp_device = jax.device_put(hp, members)
  state = jax.jit(jax.vmap(create_state), out_shardings=members)(hp_device)
  train_step = jax.jit(
      jax.vmap(make_train_step(model, builder, resolve_labels(labels, params_shape),
                               dataset.preprocess)),
      in_shardings=(members, batch, members), out_shardings=(members, members),
      donate_argnums=0)
  eval_step = jax.jit(jax.vmap(make_eval_step(model, setup.modalities, dataset.preprocess),
                               in_axes=(0, None)),
                      in_shardings=(members, shared_batch), out_shardings=members)
  predict = jax.jit(jax.vmap(make_predict(model, dataset.preprocess)))
  init_opt_state = jax.jit(jax.vmap(lambda params, hp: builder.build(hp)[1].init(params)),
                           out_shardings=members)
  return Program(builder, host_method, model, hp, state, train_step, eval_step, predict,
                 init_opt_state, jax.eval_shape(create_state, hp0), mesh)


@dataclasses.dataclass
class Loop:  # pragma: no mutate
  """What the loop offers a method's hooks: training epochs, evaluation and forward passes
  over the whole population, the members' hyperparameters."""

  cfg: Config  # member 0's (the settings all members share)
  dataset: Dataset
  program: Program

  @property
  def mesh(self):
    return self.program.mesh

  @property
  def members(self) -> int:
    return self.program.members

  @property
  def member_values(self) -> dict[str, np.ndarray]:
    """The members' member-wise hyperparameters, arrays [N]
    (``loop.member_values['pmr.momentum']``)."""
    return self.program.hp

  def place(self, tree):
    """Arrays with a leading member axis, laid out as the population's state."""
    return jax.device_put(tree, NamedSharding(self.mesh, P("pop")))

  def init_opt_state(self, params):
    """A fresh optimizer state for every member (e.g. G-Blending's trial copies)."""
    return self.program.init_opt_state(params, self.place(self.program.hp))

  def train_batches(self, epoch: int, arrays=None, start_batch: int = 0) -> Iterator[dict]:
    """The global batches [N, B, ...] of an epoch of ``arrays`` (default: the training
    split), each member in its own seed's order (members sharing a seed share a gather)."""
    arrays = self.dataset.train if arrays is None else arrays
    seeds = [int(s) for s in self.program.hp["seed"]]
    distinct = list(dict.fromkeys(seeds))
    threads = 2 if len(distinct) == 1 else 1  # a reader thread a stream beside the compute
    streams = {s: pipeline.train_batches(arrays, self.cfg.batch_size, s, epoch,
                                         start_batch=start_batch,
                                         process_index=jax.process_index(),
                                         process_count=jax.process_count(),
                                         prefetch_threads=threads)
               for s in distinct}
    sharding = NamedSharding(self.mesh, P("pop", "data"))
    for _ in range(pipeline.steps_per_epoch(arrays, self.cfg.batch_size) - start_batch):
      got = {s: next(it) for s, it in streams.items()}
      yield to_global(stack_np([got[s] for s in seeds]), sharding)

  def train_epoch(self, state, epoch: int, arrays=None, on_step=None):
    """One epoch of training steps for every member; returns (state, per-step metrics [N]
    on the device). The state passed in is donated (copy it first to keep it)."""
    records = []
    hp = self.place(self.program.hp)
    for batch in self.train_batches(epoch, arrays):
      state, metrics = self.program.train_step(state, batch, hp)
      records.append(metrics)
      if on_step is not None:
        on_step(records)
    return state, records

  def evaluate(self, state, arrays, zeroed: Sequence[str] = (), limit: int | None = None,
               predictions: bool = False):
    """Every member's fused and per-modality accuracy and loss (means over the examples) and
    the macro-F1 of the fused prediction: {name: values [N]}. ``zeroed``: modalities whose
    inputs are zeros (after the on-device preprocessing); ``limit``: the first examples only;
    ``predictions``: also return each member's fused predictions, int [N, examples]."""
    if limit is not None:
      arrays = {k: v[:limit] for k, v in arrays.items()}
    outs = []
    keep = lambda b: {m: np.full(len(b["label"]), m not in zeroed, np.float32)
                      for m in self.dataset.modalities}
    sharding = NamedSharding(self.mesh, P("data"))
    for batch in pipeline.eval_batches(arrays, self.cfg.eval_batch_size, jax.process_index(),
                                       jax.process_count()):
      if zeroed:
        batch["keep"] = keep(batch)
      outs.append(self.program.eval_step(state, to_global(batch, sharding)))
    # one transfer for the whole evaluation (the outputs are whole on every process: the
    # eval step's outputs are laid out by member, replicated over the data axis)
    outs = jax.device_get(outs)
    pred = np.concatenate([np.asarray(o.pop("pred")) for o in outs], axis=1)
    sums = {k: np.sum([o[k] for o in outs], axis=0) for k in outs[0]}
    n = sums.pop("count")
    metrics = {k: np.asarray(v / n, np.float64) for k, v in sums.items()}
    pred = pred[:, :pipeline.num_examples(arrays)]
    labels = np.asarray(arrays["label"])
    metrics["f1_macro"] = np.asarray([macro_f1(labels, p) for p in pred])
    return (metrics, pred) if predictions else metrics

  def predict_batches(self, state, epoch: int, num_batches: int, augment: bool = False):
    """(outputs [N, ...], labels [N, B]) of the evaluation-mode forward pass over the first
    ``num_batches`` training batches in ``epoch``'s order, with the training augmentation if
    ``augment`` (each member its own order and keys)."""
    seeds = jnp.asarray(self.program.hp["seed"])
    for i, batch in enumerate(self.train_batches(epoch)):
      if i == num_batches:
        return
      rng = (jax.vmap(lambda s: jax.random.fold_in(member_rng({"seed": s}), 2**30 + i))(seeds)
             if augment else None)
      yield self.program.predict(state, batch, rng), batch["label"]


def stack_np(batches: Sequence[dict]) -> dict:
  return jax.tree.map(lambda *xs: np.stack(xs), *batches)


def macro_f1(labels: np.ndarray, pred: np.ndarray) -> float:
  """Unweighted mean over the classes that occur in ``labels`` or ``pred`` of each class's
  F1 = 2 TP / (2 TP + FP + FN): scikit-learn's ``f1_score(average="macro")``, computed as it
  does, without its import (~2 s of every run's start)."""
  classes, inverse = np.unique(np.concatenate([labels, pred]), return_inverse=True)
  true, hat = inverse[:len(labels)], inverse[len(labels):]
  tp = np.bincount(true[true == hat], minlength=len(classes)).astype(np.float64)
  true_sum = np.bincount(true, minlength=len(classes)).astype(np.float64)
  pred_sum = np.bincount(hat, minlength=len(classes)).astype(np.float64)
  return float(np.mean(2 * tp / (true_sum + pred_sum)))


# ---------------------------------------------------------------- workdir and resume


def prepare_workdir(cfg: Config) -> str:
  """The run's workdir, checked: a used one only with --resume or --overwrite, --overwrite
  only of a run's folder, writable. Nothing is deleted here (see `workdir.set_aside`)."""
  workdir = cfg.resolved_workdir
  if cfg.resume and cfg.overwrite:
    raise RunError("--resume and --overwrite exclude each other")
  if workdir_lib.used(workdir) and not (cfg.resume or cfg.overwrite):
    raise RunError(f"--workdir={workdir} already holds a run: pass --resume to continue it or "
                   "--overwrite to replace it (or choose another --workdir)")
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


# ---------------------------------------------------------------- the loop


class StopAtStep:
  """Ctrl-C (SIGINT) and SIGTERM stop the run at the next step boundary, never inside a
  checkpoint write or a library's worker threads; a second one stops at once. Outside the
  main thread it changes nothing. ``restore()`` puts the previous handlers back."""

  SIGNALS = (signal.SIGINT, signal.SIGTERM)

  def __init__(self):
    self.requested, self._previous = None, {}
    if threading.current_thread() is threading.main_thread():
      for s in self.SIGNALS:
        self._previous[s] = signal.signal(s, self._handle)

  def _handle(self, signum, frame):
    if self.requested:
      raise KeyboardInterrupt
    self.requested = signal.Signals(signum).name
    what = "Ctrl-C" if signum == signal.SIGINT else self.requested
    print(f"\n{what}: stopping after this step (again: at once)", file=sys.stderr, flush=True)

  def check(self) -> None:
    if self.requested:
      raise KeyboardInterrupt(self.requested)

  def restore(self) -> None:
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous = {}


def _epoch_means(records: list[dict]) -> list[tuple[dict[str, float], dict[str, list[float]]]]:
  """One host transfer per epoch: per member, the means of the step metrics over its finite
  steps and the per-step series of the rule's coefficients for the plots."""
  stacked = jax.device_get(records)
  members = len(np.atleast_1d(stacked[0]["finite"]))
  out = []
  for i in range(members):
    rows = [{k: np.atleast_1d(v)[i] for k, v in r.items()} for r in stacked]
    finite = np.array([r["finite"] for r in rows]) > 0
    keep = [r for r, f in zip(rows, finite) if f] or rows
    means = {k: float(np.mean([r[k] for r in keep])) for k in keep[0]}
    means["skipped_steps"] = int((~finite).sum())
    for k in [k for k in keep[0] if k.startswith("grad_sq_")]:  # Tr(F)'s standard error
      values = np.asarray([r[k] for r in keep], np.float64)
      means[f"trace_se_{k[8:]}"] = (float(values.std(ddof=1) / np.sqrt(len(values)))
                                    if len(values) > 1 else 0.0)
    series = {k: [float(r[k]) for r in rows] for k in rows[0]
              if k.startswith(("alpha_", "coef_"))}
    out.append((means, series))
  return out


def _first_nonfinite(record: dict, modalities, i: int = 0) -> str:
  if not np.isfinite(float(np.atleast_1d(record["loss"])[i])):
    return "the loss"
  bad = [m for m in modalities if not np.isfinite(float(np.atleast_1d(record[f"grad_sq_{m}"])[i]))]
  return "Tr(F) of " + ", ".join(bad)


def epoch_row(modalities, train: dict[str, float], val: dict | None,
              test: dict) -> dict[str, float]:
  """An epoch's metrics.jsonl fields for one member: training means, validation and test
  evaluations (that member's), the traces, and the method's own step metrics (epoch means)."""
  row = {"train_loss": train["loss"], "train_acc": train["acc"]}
  if val is not None:
    row.update({"val_acc": val["acc"], "val_loss": val["loss"],
                **{f"val_acc_{m}": val[f"acc_{m}"] for m in modalities}})
  row.update({"test_loss": test["loss"], "acc": test["acc"], "f1_macro": test["f1_macro"]})
  for m in modalities:
    row.update({f"acc_{m}": test[f"acc_{m}"], f"test_loss_{m}": test[f"loss_{m}"],
                f"trace_{m}": train[f"grad_sq_{m}"]})  # Tr(F_m) of this epoch, Eq. 7
    if f"acc_{m}" in train:
      row[f"train_acc_{m}"] = train[f"acc_{m}"]
  generic = {"loss", "fused_loss", "acc", "finite"} | {
      f"{k}_{m}" for k in ("loss", "acc", "grad_sq") for m in modalities}
  # trace_se_<m>: the standard error of Tr(F_m)'s epoch mean, from its steps' spread
  row.update({k: v for k, v in train.items() if k not in generic})  # alpha_, coef_, cos_...
  return row


def _summary(cfg: Config, history: list[dict], train_seconds: float, workdir: str,
             stopped: str | None = None, members: int = 1) -> dict:
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


@dataclasses.dataclass
class Member:  # pragma: no mutate
  """One member's host bookkeeping: its config, workdir, history (the loop owns it), plot
  series, reporter, checkpoints, and why it stopped (None while it trains)."""

  index: int
  cfg: Config
  workdir: str
  history: list = dataclasses.field(default_factory=list)
  series: dict = dataclasses.field(default_factory=dict)
  stopped: str | None = None
  seconds: float = 0.0  # training time of earlier sessions (a resumed run)
  reporter: Any = None
  mngr: Any = None
  lock: Any = None
  set_aside: bool = False
  saved: bool = False  # a checkpoint was written in this session

  @property
  def done(self) -> int:
    return self.history[-1]["epoch"] + 1 if self.history else 0


def _check_members(cfgs: Sequence[Config]) -> None:
  """Members differ only in their member-wise values and workdirs."""
  base = cfgs[0]
  allowed = ("workdir",) + tuple(member_values(base))
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


def _restore_members(members: list[Member], program: Program, dataset: Dataset, log):
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
    m.stopped = _stopped_before(m.workdir)
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
    restored = restore(m.cfg, m.mngr, target, dataset.identity,
                       None if m.stopped else common, log)
    if restored is None:
      raise RunError(f"--resume: {m.workdir}: no checkpoint of epoch {common} or earlier")
    state, saved = restored
    m.history, m.series = list(saved["history"]), dict(saved.get("series", {}))
    m.seconds = float(saved.get("train_seconds", 0.0))
    states.append(state)
  epochs = {m.done for m in members if not m.stopped}
  if len(epochs) > 1:  # a member's checkpoints stop earlier than the others' (none of epoch
    raise RunError(  # ``common`` survived): not resumable as one population
        f"--resume: the members' checkpoints are of different epochs ({sorted(epochs)}): "
        "resume them one at a time")
  return jax.device_put(stack(states), NamedSharding(program.mesh, P("pop")))


def _stopped_before(workdir: str) -> str | None:
  """Why a member stopped in an earlier session (its summary says), or None."""
  try:
    with open(os.path.join(workdir, "summary.json")) as f:
      return json.load(f).get("stopped")
  except (OSError, ValueError, AttributeError):
    return None


def train(cfgs: Config | Sequence[Config], dataset: Dataset | None = None,
          progress: bool | None = None, files: dict[str, str] | None = None):  # pragma: no mutate
  """Trains a config (returns its summary) or the members of a population (returns their
  summaries), writing ``<workdir>/summary.json`` for each. ``files``: {name: text} written
  into every member's workdir (e.g. the --config file, as config.py)."""
  single = isinstance(cfgs, Config)
  cfgs = [cfgs] if single else list(cfgs)
  _check_members(cfgs)
  cfg = cfgs[0]
  members = [Member(i, c, prepare_workdir(c)) for i, c in enumerate(cfgs)]
  writer = jax.process_index() == 0
  locks = []
  try:
    for m in members:
      check_shared_workdir(m.workdir)
      if writer:  # before anything reads the workdir: another run may be writing it
        locks.append(workdir_lib.Lock(m.workdir))
      check_resume_early(m.cfg, m.workdir)
    summaries = _train(members, cfg, dataset, progress, files or {}, writer)
  finally:
    for lock in locks:
      lock.release()
  return summaries[0] if single else summaries


def _train(members: list[Member], cfg: Config, dataset, progress, files,
           writer):  # pragma: no mutate
  mesh = make_mesh(len(members))
  data_devices = mesh.shape["data"]
  for flag in ("batch_size", "eval_batch_size"):
    if getattr(cfg, flag) % data_devices:
      raise RunError(f"--{flag}={getattr(cfg, flag)} must be a multiple of the "
                     f"{data_devices} devices each member's batch is split over")

  # Input: the dataset, the modalities trained on.
  dataset = dataset or load_dataset(cfg.dataset, cfg.resolved_data_dir, cfg.seed)
  if cfg.modalities:
    dataset = select_modalities(dataset, cfg.modalities.split(","))
  if cfg.limit_train:
    dataset = dataclasses.replace(
        dataset, train={k: v[:cfg.limit_train] for k, v in dataset.train.items()})
  method_cls = methods.get(cfg.method)
  if method_cls.needs_validation and dataset.val is None:
    raise RunError(f"--method={cfg.method} reads a validation split, and {cfg.dataset} in "
                   f"{cfg.resolved_data_dir} has none: prepare the data with a validation split")
  steps = pipeline.steps_per_epoch(dataset.train, cfg.batch_size)

  # Method, model, optimizer, sharded state, jitted steps: everything checked before any file
  # of an old run is touched.
  try:
    program = build_program([m.cfg for m in members], dataset, steps, mesh)
  except ValueError as e:  # a method refusing this setting (e.g. Greedy's two modalities)
    raise RunError(str(e)) from None
  log = RunLog([m.workdir for m in members] if writer else [], console=writer)
  loop = Loop(cfg, dataset, program)

  for m in members:
    m.mngr = checkpoint.manager(m.workdir)
  try:
    restored = _restore_members(members, program, dataset, log.all)
    if restored is None:
      if cfg.overwrite and writer:  # the old run is kept aside until an epoch is saved
        for m in members:
          m.set_aside = workdir_lib.set_aside(m.workdir)
          m.mngr.close()
          m.mngr = checkpoint.manager(m.workdir)
          m.history, m.series = [], {}
      state = program.method.on_start(loop, program.state)
    else:
      state = restored
    for m in members:
      for name, text in files.items():
        if writer:
          with open(os.path.join(m.workdir, name), "w") as f:
            f.write(text)
    log.open()
    return _epochs(members, cfg, loop, program, state, steps, log, progress, writer)
  finally:
    for m in members:
      if m.mngr is not None:
        m.mngr.close()
      if m.set_aside and writer:
        (workdir_lib.drop_aside if m.saved else workdir_lib.restore_aside)(m.workdir)
    log.close()


def _epochs(members: list[Member], cfg: Config, loop: Loop, program: Program, state, steps,
            log, progress, writer):  # pragma: no mutate
  modalities = loop.dataset.modalities
  first_epoch = min((m.done for m in members if not m.stopped), default=cfg.epochs)
  trained = first_epoch < cfg.epochs
  for m in members:
    m.reporter = Reporter(m.workdir, modalities, m.history, run_name=run_name(m.cfg),
                          hparams=hparams(m.cfg), write=writer)
  n = len(members)
  interactive = sys.stderr.isatty() if progress is None else progress
  bar = tqdm(total=cfg.epochs * steps, initial=first_epoch * steps, unit="step",
             desc=f"{cfg.dataset}/{cfg.method}" + (f" x{n}" if n > 1 else ""),
             disable=not interactive or not writer)
  t0 = time.time()
  stop = StopAtStep()
  label = (lambda m: "" if n == 1 else f"[{os.path.relpath(m.workdir)}] ")

  def halt(m: Member, message: str):
    m.stopped = message
    if n == 1:
      raise RunError(message)
    log.member(m.index, f"{label(m)}stopped: {message}; the other members go on")

  try:
    for epoch in range(first_epoch, cfg.epochs):
      def check(records, k):
        record = None
        for m in members:
          if m.stopped or cfg.skip_nonfinite:
            continue
          record = jax.device_get(records[k]) if record is None else record
          if not np.atleast_1d(record["finite"])[m.index]:
            last = f"epoch {m.history[-1]['epoch']}" if m.history else "none"
            halt(m, f"non-finite {_first_nonfinite(record, modalities, m.index)} at step "
                    f"{epoch * steps + k} (epoch {epoch}); the run stopped (last good "
                    f"checkpoint: {last}). Lower --learning_rate, or pass --skip_nonfinite "
                    "to skip such steps")

      def on_step(records):
        stop.check()
        bar.update()
        if len(records) > 1:  # the previous step: reading it does not wait for this one
          check(records, len(records) - 2)

      state, records = loop.train_epoch(state, epoch, on_step=on_step)
      check(records, len(records) - 1)
      means = _epoch_means(records)
      state, method_rows = program.method.on_epoch_end(loop, state, epoch)
      val = loop.evaluate(state, loop.dataset.val) if loop.dataset.val is not None else None
      test, predicted = loop.evaluate(state, loop.dataset.test, predictions=True)
      elapsed = time.time() - t0
      for m in members:
        if m.stopped:
          continue
        train_m, series = means[m.index]
        if cfg.skip_nonfinite and train_m["skipped_steps"] > MAX_SKIPPED_FRACTION * steps:
          halt(m, f"{train_m['skipped_steps']} of epoch {epoch}'s {steps} steps were "
                  f"non-finite and skipped (more than {MAX_SKIPPED_FRACTION:.0%}): the run "
                  "stopped. Lower --learning_rate")
          continue
        pick = lambda d: None if d is None else {k: float(v[m.index]) for k, v in d.items()}
        row = {"epoch": epoch, **epoch_row(modalities, train_m, pick(val), pick(test)),
               **{k: float(np.asarray(v)[m.index]) for k, v in method_rows.items()},
               "time_s": round(m.seconds + elapsed, 2)}
        m.history.append(row)
        if writer:  # the epoch's test predictions, for intervals over test examples
          np.save(os.path.join(m.workdir, "test_predictions.npy"),
                  predicted[m.index].astype(np.int16))
        for k, values in series.items():
          m.series.setdefault(k, []).extend(values)
        m.reporter.epoch(row, series, m.history, m.series)
        rank = "val_acc" if "val_acc" in row else "acc"
        if (epoch + 1) % cfg.checkpoint_every and epoch + 1 < cfg.epochs:
          pass  # not this epoch (--checkpoint_every)
        else:  # every process: orbax writes global arrays collectively
          checkpoint.save(m.mngr, epoch, member_slice(state, m.index),
                          {"history": m.history, "series": m.series,
                           "config": m.cfg.to_dict(), "data": loop.dataset.identity,
                           "train_seconds": m.seconds + elapsed},
                          best_epoch=max(m.history, key=lambda r: r[rank])["epoch"])
          m.saved = True
        if m.saved and m.set_aside and writer:
          workdir_lib.drop_aside(m.workdir)
          m.set_aside = False
        log.member(m.index, f"{label(m)}epoch {epoch}: loss {row['train_loss']:.4f} acc "
                   f"{row['acc']:.3f} " + " ".join(f"{k} {row[f'acc_{k}']:.3f}"
                                                   for k in modalities),
                   console=not interactive)
      stop.check()  # a signal during evaluation or the saves stops here, the epoch saved
      live = [m for m in members if not m.stopped]
      if not live:
        break
      bar.set_postfix(acc=f"{np.mean([m.history[-1]['acc'] for m in live]):.3f}")
  finally:
    stop.restore()
    bar.close()
    for m in members:
      m.reporter.close(m.history, m.series, trained=trained)

  summaries = []
  for m in members:
    if not m.history:  # stopped in its first epoch: say so where its results would be
      summary = {"workdir": m.workdir, "stopped": m.stopped, "config": m.cfg.to_dict()}
      if writer and m.stopped:
        with open(os.path.join(m.workdir, "summary.json"), "w") as f:
          json.dump(json_safe(summary), f, indent=2)
      summaries.append(summary)
      continue
    # the time through its last epoch's evaluation, as its checkpoint holds it: a finished
    # run resumed again (re-reported) keeps it
    summary = _summary(m.cfg, m.history, m.history[-1]["time_s"], m.workdir, m.stopped,
                       len(members))
    if writer:
      with open(os.path.join(m.workdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    summaries.append(summary)
  stopped = [m for m in members if m.stopped]
  if stopped and len(stopped) == len(members) and n > 1:
    raise RunError(f"every member stopped: {stopped[0].stopped}")
  return summaries


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
