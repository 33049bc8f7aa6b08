"""The training loop, top to bottom: workdir, mesh, input, method, model and optimizer,
sharding, checkpoints, the epoch loop, evaluation, summary.

``train(cfg)`` writes ``metrics.jsonl``, ``summary.json``, plots, TensorBoard events and
checkpoints into the workdir and returns the summary. It holds no per-method branch: the
method's hooks (`inforeg_jax.methods.base.Method`) do what differs. Accuracies are fractions.

What it refuses or stops on, each with one `RunError` line: a used workdir without --resume or
--overwrite; a --resume whose config differs from the checkpointed one (beyond what is safe to
change) or asks for fewer epochs than were run; a non-finite loss or Tr(F) (unless
--skip_nonfinite); a workdir that the processes of a multi-host run do not share.

``# pragma: no mutate`` marks the glue that only whole runs exercise (tests/test_trainer_runs.py,
test_run, test_distributed): too slow to rerun per mutant; the rules it calls are mutated.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import sys
import threading
import time
import uuid
from typing import Any, Callable, Iterator

import jax
import jax.experimental.multihost_utils as multihost
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
from tqdm.auto import tqdm

from inforeg_jax import checkpoint, methods
from inforeg_jax.config import Config, config_differences, from_dict
from inforeg_jax.data import Dataset, load_dataset, pipeline, select_modalities
from inforeg_jax.labels import modality_labels, resolve_labels
from inforeg_jax.methods.base import Method, Setup
from inforeg_jax.reporting import Reporter
from inforeg_jax.train import (TrainState, create_state, make_eval_step, make_predict,
                               make_train_step)


class RunError(Exception):
  """A run that cannot start or go on; the message is one line for the user."""


def make_optimizer(cfg: Config, method: Method, labels, steps_per_epoch: int):
  """[the method's transformations] -> weight decay -> SGD with momentum and StepLR, as the
  released code (the regulation acts on the gradient before weight decay and momentum)."""
  schedule = optax.piecewise_constant_schedule(
      cfg.learning_rate,
      {k * cfg.lr_step_epochs * steps_per_epoch: cfg.lr_decay
       for k in range(1, cfg.epochs // cfg.lr_step_epochs + 1)})
  return optax.chain(*method.transforms(labels), optax.add_decayed_weights(cfg.weight_decay),
                     optax.sgd(schedule, cfg.momentum))


def to_global(batch, sharding):  # pragma: no mutate
  """This process's slice of a global batch as global arrays laid out by ``sharding``."""
  if jax.process_count() == 1:  # the whole batch is here: a plain transfer, 10x cheaper
    return jax.device_put(batch, sharding)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def make_mesh():  # pragma: no mutate
  """Data parallelism over every device of every process."""
  return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))


@dataclasses.dataclass
class Program:
  """What a run executes: the method, model, optimizer, the sharded state, the jitted steps."""

  method: Method
  model: Any
  tx: optax.GradientTransformationExtraArgs
  state: TrainState
  train_step: Callable  # (state, batch, rng) -> (state, metrics); the state is donated
  eval_step: Callable  # (state, batch) -> metric sums
  predict: Callable  # (state, batch, rng=None) -> outputs, evaluation mode


def build_program(cfg: Config, dataset: Dataset, steps_per_epoch: int, mesh) -> Program:  # pragma: no mutate
  """The method, model and optimizer for ``cfg``, the state replicated over ``mesh``, the
  steps jitted with the batch sharded along its "data" axis."""
  replicated, data_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  setup = Setup(modalities=dataset.modalities, num_classes=dataset.num_classes,
                steps_per_epoch=steps_per_epoch, window=cfg.resolved_window,
                threshold=cfg.resolved_threshold, seed=cfg.seed)
  method = methods.get(cfg.method)(cfg, setup)
  model = method.build_model(dataset)
  example = {m: jnp.zeros((2,) + v.shape[1:], v.dtype) for m, v in dataset.train.items()
             if m != "label"}
  if dataset.preprocess is not None:
    example = dataset.preprocess({"inputs": example}, jax.random.key(0), False)["inputs"]
  init_rng = jax.random.key(cfg.seed)
  params_shape = jax.eval_shape(lambda: model.init({"params": init_rng, "dropout": init_rng},
                                                   example, train=False))["params"]
  labels = modality_labels(params_shape, setup.modalities)
  tx = make_optimizer(cfg, method, labels, steps_per_epoch)
  state = jax.jit(lambda r: create_state(model, tx, method, example, r),
                  out_shardings=replicated)(init_rng)
  train_step = jax.jit(
      make_train_step(model, tx, method, resolve_labels(labels, params_shape),
                      dataset.preprocess),
      in_shardings=(replicated, data_sharding, replicated),
      out_shardings=(replicated, replicated), donate_argnums=0)
  eval_step = jax.jit(make_eval_step(model, setup.modalities, dataset.preprocess),
                      in_shardings=(replicated, data_sharding))
  predict = jax.jit(make_predict(model, dataset.preprocess))
  return Program(method, model, tx, state, train_step, eval_step, predict)


@dataclasses.dataclass
class Loop:  # pragma: no mutate
  """What the loop offers a method's hooks: training epochs, evaluation, forward passes."""

  cfg: Config
  dataset: Dataset
  program: Program
  mesh: Any
  step_rng: jax.Array

  @property
  def data_sharding(self):
    return NamedSharding(self.mesh, P("data"))

  def replicate(self, tree):
    return jax.device_put(tree, NamedSharding(self.mesh, P()))

  def train_batches(self, epoch: int, arrays=None, start_batch: int = 0) -> Iterator[dict]:
    """The global batches of an epoch of ``arrays`` (default: the training split)."""
    arrays = self.dataset.train if arrays is None else arrays
    for batch in pipeline.train_batches(arrays, self.cfg.batch_size, self.cfg.seed, epoch,
                                        start_batch=start_batch,
                                        process_index=jax.process_index(),
                                        process_count=jax.process_count()):
      yield to_global(batch, self.data_sharding)

  def train_epoch(self, state, epoch: int, arrays=None, on_step=None):
    """One epoch of training steps; returns (state, per-step metrics on the device).
    The state passed in is donated (copy it first to keep it)."""
    records = []
    for batch in self.train_batches(epoch, arrays):
      state, metrics = self.program.train_step(state, batch, self.step_rng)
      records.append(metrics)
      if on_step is not None:
        on_step(records)
    return state, records

  def evaluate(self, state, arrays) -> dict[str, float]:
    """Fused and per-modality accuracy and loss, and the macro-F1 of the fused prediction."""
    sums, preds = None, []
    for batch in pipeline.eval_batches(arrays, self.cfg.eval_batch_size, jax.process_index(),
                                       jax.process_count()):
      out = self.program.eval_step(state, to_global(batch, self.data_sharding))
      preds.append(out.pop("pred"))
      sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    sums = jax.device_get(sums)
    n = sums.pop("count")
    metrics = {k: float(v / n) for k, v in sums.items()}
    pred = np.concatenate([np.asarray(multihost.process_allgather(p, tiled=True))
                           for p in preds])[:pipeline.num_examples(arrays)]
    metrics["f1_macro"] = macro_f1(np.asarray(arrays["label"]), pred)
    return metrics

  def predict_batches(self, state, epoch: int, num_batches: int, augment: bool = False):
    """(outputs, labels) of the evaluation-mode forward pass over the first ``num_batches``
    training batches in ``epoch``'s order, with the training augmentation if ``augment``."""
    for i, batch in enumerate(self.train_batches(epoch)):
      if i == num_batches:
        return
      rng = jax.random.fold_in(self.step_rng, 2**30 + i) if augment else None
      yield self.program.predict(state, batch, rng), batch["label"]


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


def _used(workdir: str) -> bool:
  return any(os.path.exists(os.path.join(workdir, f))
             for f in ("metrics.jsonl", "summary.json", "checkpoints"))


def prepare_workdir(cfg: Config) -> str:
  """The run's workdir, checked: a used one only with --resume or --overwrite, writable."""
  workdir = cfg.resolved_workdir
  if _used(workdir) and not (cfg.resume or cfg.overwrite):
    raise RunError(f"--workdir={workdir} already holds a run: pass --resume to continue it or "
                   "--overwrite to replace it (or choose another --workdir)")
  if cfg.resume and cfg.overwrite:
    raise RunError("--resume and --overwrite exclude each other")
  if jax.process_index() == 0:
    try:
      if cfg.overwrite and os.path.isdir(workdir):
        shutil.rmtree(workdir)
      os.makedirs(workdir, exist_ok=True)
      probe = os.path.join(workdir, f".write-test-{uuid.uuid4().hex}")
      with open(probe, "w") as f:
        f.write("ok")
      os.remove(probe)
    except OSError as e:
      raise RunError(f"cannot write to --workdir={workdir}: {e.strerror}") from None
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


def check_resumable(cfg: Config, loop: dict) -> None:
  """Refuses to resume a checkpoint (its ``loop`` JSON) under another config or with fewer
  epochs than it has done."""
  changed = config_differences(from_dict(loop["config"]), cfg)
  if changed:
    raise RunError("--resume with a different config: " + ", ".join(changed)
                   + " (only --epochs and the output/eval settings may change)")
  done = loop["history"][-1]["epoch"] + 1
  if cfg.epochs < done:
    raise RunError(f"--resume --epochs={cfg.epochs}, but the checkpoint has finished {done} "
                   f"epochs: pass --epochs >= {done}")


def check_resume_early(cfg: Config, workdir: str) -> None:
  """`check_resumable` on the latest checkpoint before any data is loaded or compiled."""
  if not cfg.resume or not os.path.isdir(os.path.join(workdir, "checkpoints")):
    return
  mngr = checkpoint.manager(workdir)
  try:
    loop = checkpoint.latest_loop(mngr)
  finally:
    mngr.close()
  if loop is not None:
    check_resumable(cfg, loop)


def restore(cfg: Config, mngr, state):
  """(state, loop JSON) from the latest readable checkpoint, checked against ``cfg``; or
  None for a fresh run."""
  if not cfg.resume:
    return None
  try:
    restored = checkpoint.restore_latest(mngr, state, log=print,
                                         check=lambda loop: check_resumable(cfg, loop))
  except checkpoint.CheckpointError as e:
    raise RunError(f"--resume: {e}; start afresh with --overwrite") from None
  if restored is None:
    print(f"--resume: {cfg.resolved_workdir} has no checkpoint yet; starting a fresh run")
  return restored


# ---------------------------------------------------------------- the loop


class StopAtStep:
  """Ctrl-C (SIGINT) stops the run at the next step boundary, never inside a checkpoint
  write or a library's worker threads (suspected, not reproduced, of keeping a process alive
  after Ctrl-C in a loaded suite); a second Ctrl-C stops at once. Outside the main thread it
  changes nothing. ``restore()`` puts the previous handler back."""

  def __init__(self):
    self.requested, self._previous = False, None
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGINT, self._handle)

  def _handle(self, signum, frame):
    if self.requested:
      raise KeyboardInterrupt
    self.requested = True
    print("\nCtrl-C: stopping after this step (again: at once)", file=sys.stderr, flush=True)

  def check(self) -> None:
    if self.requested:
      raise KeyboardInterrupt

  def restore(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGINT, self._previous)


def _epoch_means(records: list[dict]) -> tuple[dict[str, float], dict[str, list[float]]]:
  """One host transfer per epoch: the means of the step metrics over the finite steps,
  and the per-step series of the rule's coefficients for the plots."""
  stacked = jax.device_get(records)
  finite = np.array([r["finite"] for r in stacked]) > 0
  keep = [r for r, f in zip(stacked, finite) if f] or stacked
  means = {k: float(np.mean([r[k] for r in keep])) for k in keep[0]}
  means["skipped_steps"] = int((~finite).sum())
  series = {k: [float(r[k]) for r in stacked] for k in stacked[0]
            if k.startswith(("alpha_", "coef_"))}
  return means, series


def _first_nonfinite(record: dict, modalities) -> str:
  if not np.isfinite(float(record["loss"])):
    return "the loss"
  bad = [m for m in modalities if not np.isfinite(float(record[f"grad_sq_{m}"]))]
  return "Tr(F) of " + ", ".join(bad)


def epoch_row(loop: Loop, state, train: dict[str, float]) -> dict[str, float]:
  """An epoch's metrics.jsonl fields: training means, validation and test evaluations, the
  traces, and the method's own step metrics (their epoch means)."""
  modalities = loop.dataset.modalities
  row = {"train_loss": train["loss"], "train_acc": train["acc"]}
  if loop.dataset.val is not None:
    val = loop.evaluate(state, loop.dataset.val)
    row.update({"val_acc": val["acc"], "val_loss": val["loss"],
                **{f"val_acc_{m}": val[f"acc_{m}"] for m in modalities}})
  test = loop.evaluate(state, loop.dataset.test)
  row.update({"test_loss": test["loss"], "acc": test["acc"], "f1_macro": test["f1_macro"]})
  for m in modalities:
    row.update({f"acc_{m}": test[f"acc_{m}"], f"test_loss_{m}": test[f"loss_{m}"],
                f"train_acc_{m}": train[f"acc_{m}"],
                f"trace_{m}": train[f"grad_sq_{m}"]})  # Tr(F_m) of this epoch, Eq. 7
  generic = {"loss", "fused_loss", "acc", "finite"} | {
      f"{k}_{m}" for k in ("loss", "acc", "grad_sq") for m in modalities}
  row.update({k: v for k, v in train.items() if k not in generic})  # alpha_, coef_, cos_...
  return row


def _summary(cfg: Config, history: list[dict], train_seconds: float, workdir: str) -> dict:
  final = history[-1]
  select_key = "val_acc" if "val_acc" in final else "acc"
  selected = max(history, key=lambda r: r[select_key])
  best_test = max(history, key=lambda r: r["acc"])
  pick = lambda r: {k: v for k, v in r.items() if k in ("acc", "f1_macro", "val_acc")
                    or k.startswith("acc_")}
  return {
      "dataset": cfg.dataset, "method": cfg.method, "seed": cfg.seed, "epochs": cfg.epochs,
      "window": cfg.resolved_window, "workdir": workdir,
      "num_devices": jax.device_count(), "num_processes": jax.process_count(),
      "accuracy_unit": "fraction",
      "final": pick(final),
      # model selection on the validation split (on test only when there is none)
      "selected": {"by": select_key, "epoch": selected["epoch"], **pick(selected)},
      # the best test epoch: optimistic, what the released code reports
      "best": {"acc": best_test["acc"], "epoch": best_test["epoch"]},
      "skipped_steps": int(sum(r.get("skipped_steps", 0) for r in history)),
      "train_seconds": round(train_seconds, 2),
      "config": cfg.to_dict(),
  }


def train(cfg: Config, dataset: Dataset | None = None, progress: bool | None = None) -> dict:  # pragma: no mutate
  """Trains ``cfg``; returns the summary it also writes to ``<workdir>/summary.json``."""
  workdir = prepare_workdir(cfg)
  check_shared_workdir(workdir)
  check_resume_early(cfg, workdir)
  mesh = make_mesh()
  for flag in ("batch_size", "eval_batch_size"):
    if getattr(cfg, flag) % jax.device_count():
      raise RunError(f"--{flag}={getattr(cfg, flag)} must be a multiple of the "
                     f"{jax.device_count()} devices")

  # Input: the dataset, the modalities trained on, the method's split.
  dataset = dataset or load_dataset(cfg.dataset, cfg.resolved_data_dir, cfg.seed)
  if cfg.modalities:
    dataset = select_modalities(dataset, cfg.modalities.split(","))
  if cfg.limit_train:
    dataset = dataclasses.replace(
        dataset, train={k: v[:cfg.limit_train] for k, v in dataset.train.items()})
  dataset = methods.get(cfg.method).split_data(cfg, dataset)
  steps = pipeline.steps_per_epoch(dataset.train, cfg.batch_size)

  # Method, model, optimizer, sharded state, jitted steps.
  program = build_program(cfg, dataset, steps, mesh)
  modalities = dataset.modalities
  loop = Loop(cfg, dataset, program, mesh, jax.random.fold_in(jax.random.key(cfg.seed), 1))

  # Checkpoints: resume from the latest readable one when asked.
  mngr = checkpoint.manager(workdir)
  state, resumed = program.state, restore(cfg, mngr, program.state)
  if resumed is not None:
    state, saved = resumed
    history, series = list(saved["history"]), saved.get("series", {})
  else:
    history, series = [], {}
    state = program.method.on_start(loop, state)
  first_epoch = history[-1]["epoch"] + 1 if history else 0
  reporter = Reporter(workdir, modalities, history, series, run_name=run_name(cfg),
                      hparams=hparams(cfg), write=jax.process_index() == 0)

  interactive = sys.stderr.isatty() if progress is None else progress
  bar = tqdm(total=cfg.epochs * steps, initial=first_epoch * steps, unit="step",
             desc=f"{cfg.dataset}/{cfg.method}",
             disable=not interactive or jax.process_index() != 0)
  t0 = time.time()
  stop = StopAtStep()
  try:
    for epoch in range(first_epoch, cfg.epochs):
      def check(records, i):
        if not cfg.skip_nonfinite and not records[i]["finite"]:
          last = f"epoch {history[-1]['epoch']}" if history else "none"
          raise RunError(f"non-finite {_first_nonfinite(records[i], modalities)} at step "
                         f"{epoch * steps + i} (epoch {epoch}); the run stopped (last good "
                         f"checkpoint: {last}). Lower --learning_rate, or pass "
                         "--skip_nonfinite to skip such steps")

      def on_step(records):
        stop.check()
        bar.update()
        if len(records) > 1:  # the previous step: reading it does not wait for this one
          check(records, len(records) - 2)

      state, records = loop.train_epoch(state, epoch, on_step=on_step)
      check(records, len(records) - 1)
      train_m, step_series = _epoch_means(records)
      state, method_row = program.method.on_epoch_end(loop, state, epoch)
      row = {"epoch": epoch, **epoch_row(loop, state, train_m), **method_row}
      row["time_s"] = round(time.time() - t0, 2)
      reporter.epoch(row, step_series)
      rank = "val_acc" if "val_acc" in row else "acc"
      checkpoint.save(mngr, epoch, state, {"history": history, "series": reporter.series,
                                            "config": cfg.to_dict()},
                      best_epoch=max(history, key=lambda r: r[rank])["epoch"])
      stop.check()  # a Ctrl-C during evaluation or the save stops here, the epoch saved
      bar.set_postfix(acc=f"{row['acc']:.3f}",
                      **{m[:1]: f"{row[f'acc_{m}']:.3f}" for m in modalities})
      if not interactive and jax.process_index() == 0:
        print(f"epoch {epoch}: loss {row['train_loss']:.4f} acc {row['acc']:.3f} "
              + " ".join(f"{m} {row[f'acc_{m}']:.3f}" for m in modalities), flush=True)
  finally:
    stop.restore()
    bar.close()
    reporter.close()
    mngr.close()

  summary = _summary(cfg, history, time.time() - t0, workdir)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
  return summary


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
