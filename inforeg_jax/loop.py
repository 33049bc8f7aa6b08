"""The epoch loop: training epochs, evaluation and the per-member rows they give.

`Loop` is what a method's host hooks may use (the `methods.base.Loop` protocol): training
epochs, evaluation and forward passes over the whole population, states stacked [N].
`epochs` runs the schedule and yields, after each epoch, every member's metrics.jsonl row
(`epoch_row`), its test predictions and the members that stopped; what is written where is
the caller's (`inforeg_jax.members`). Accuracies are fractions.
"""

from __future__ import annotations

import dataclasses
import itertools
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterator, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from inforeg_jax.config import Config
from inforeg_jax.data import Dataset, pipeline
from inforeg_jax.hyper import Hyper
from inforeg_jax.program import Program, stack, to_global
from inforeg_jax.train import member_rng

MAX_SKIPPED_FRACTION = 0.1  # --skip_nonfinite: an epoch with more skipped steps stops
# Training steps in one compiled call (an unrolled scan): --steps_per_call (default 4: on the
# AV-MNIST preset, 2 cores, a step costs 2.43 ms at 4 a call against 2.9 ms one a call;
# compiling 4 costs 3.6 s, 8 cost 6.9 s for 2.42 ms), no more batches than fit in CHUNK_BYTES
# of host memory (a paper-size CREMA-D batch alone is ~50 MB: one step a call)
CHUNK_BYTES = 32 << 20


def stack_np(batches: Sequence[dict]) -> dict:
  return jax.tree.map(lambda *xs: np.stack(xs), *batches)


@dataclasses.dataclass
class Loop:  # pragma: no mutate
  """What the loop offers a method's hooks (`methods.base.Loop`): training epochs, evaluation
  and forward passes over the whole population, the members' values."""

  cfg: Config  # member 0's (the settings all members share)
  dataset: Dataset
  program: Program
  # called after every compiled call the loop makes (Ctrl-C and SIGTERM raise there)
  interrupt: Callable[[], None] = lambda: None

  @property
  def members(self) -> int:
    return self.program.members

  @property
  def hyper(self) -> Hyper:
    """The members' values, arrays [N] (``loop.hyper.method.momentum``)."""
    return self.program.hyper

  def place(self, tree):
    return self.program.place(tree)

  def map_members(self, fn: Callable, *trees):
    return self.program.map_members(fn, *trees)

  def init_opt_state(self, params):
    return self.program.init_opt_state(params)

  def steps_per_call(self, arrays=None) -> int:
    """Training steps a compiled call runs (`Program._train_chunk`): --steps_per_call, or as
    many batches as fit in ``CHUNK_BYTES`` of host memory when fewer, at least one."""
    arrays = self.dataset.train if arrays is None else arrays
    batch = self.cfg.batch_size * sum(v[0].nbytes for v in arrays.values())
    return int(min(self.cfg.steps_per_call, max(1, CHUNK_BYTES // max(batch, 1))))

  def _sharding(self, *spec):
    return NamedSharding(self.program.mesh, P(*spec))

  def train_chunks(self, epoch: int, arrays=None, steps_per_call: int | None = None) -> Iterator:
    """An epoch of ``arrays`` (default: the training split), ``steps_per_call`` batches at a
    time, each member in its own seed's order (members sharing a seed share a gather): a
    global array [N, k, B, ...] when vectorised, else a list of the members' [k, B, ...]."""
    arrays = self.dataset.train if arrays is None else arrays
    k = steps_per_call or self.steps_per_call(arrays)
    seeds = [int(s) for s in np.atleast_1d(self.hyper.seed)]
    distinct = list(dict.fromkeys(seeds))
    threads = 2 if len(distinct) == 1 else 1  # a reader thread a stream beside the compute
    streams = {s: pipeline.train_chunks(arrays, self.cfg.batch_size, s, epoch, k,
                                        process_index=jax.process_index(),
                                        process_count=jax.process_count(),
                                        prefetch_threads=threads)
               for s in distinct}
    for got in zip(*streams.values()):
      got = dict(zip(streams, got))
      if self.program.vectorised:
        yield to_global(stack_np([got[s] for s in seeds]), self._sharding("pop", None, "data"))
      else:
        placed = {s: to_global(b, self._sharding(None, "data")) for s, b in got.items()}
        yield [placed[s] for s in seeds]

  def train_epoch(self, state, epoch: int, arrays=None, on_step=None):
    """One epoch of training steps for every member, ``steps_per_call`` steps a compiled
    call; returns (state, the calls' records on the device: `step_records` reads them). The
    state passed in is donated. ``on_step(records)`` after each call."""
    program, records = self.program, []
    if program.vectorised:
      hyper = self.place(self.hyper)
      for chunk in self.train_chunks(epoch, arrays):
        state, metrics = program._train_chunk(state, chunk, hyper)
        records.append(metrics)
        self.interrupt()
        if on_step is not None:
          on_step(records)
      return state, records
    states, hypers = program.unstack(state), program.member_hypers()
    for chunks in self.train_chunks(epoch, arrays):
      record = []
      for i, chunk in enumerate(chunks):
        states[i], metrics = program._train_chunk(states[i], chunk, hypers[i])
        record.append(metrics)
      records.append(record)
      self.interrupt()
      if on_step is not None:
        on_step(records)
    return program.restack(states), records

  def step_records(self, records) -> list[dict[str, np.ndarray]]:
    """`train_epoch`'s records on the host: per step, {metric: values [N]}."""
    out = []
    for record in jax.device_get(records):
      if self.program.vectorised:  # {metric: [N, k]}
        chunk = {k: np.asarray(v) for k, v in record.items()}
      else:  # per member {metric: [k]}
        chunk = {k: np.stack([np.asarray(m[k]) for m in record]) for k in record[0]}
      steps = next(iter(chunk.values())).shape[1]
      out += [{k: v[:, j] for k, v in chunk.items()} for j in range(steps)]
    return out

  def finite(self, record) -> np.ndarray:
    """bool [N, k]: which members' steps were finite (one record of `train_epoch`)."""
    if self.program.vectorised:
      return np.asarray(jax.device_get(record["finite"])) > 0
    return np.stack(jax.device_get([m["finite"] for m in record])) > 0

  def evaluate(self, state, arrays, zeroed: Sequence[str] = (), limit: int | None = None,
               predictions: bool = False):
    """Every member's fused and per-modality accuracy and loss (means over the examples) and
    the macro-F1 of the fused prediction: {name: values [N]}. ``zeroed``: modalities whose
    inputs are zeros (after the on-device preprocessing); ``limit``: the first examples only;
    ``predictions``: also return each member's fused predictions, int [N, examples]. The
    batches go ``steps_per_call`` at a time through one compiled call a member."""
    if limit is not None:
      arrays = {k: v[:limit] for k, v in arrays.items()}
    program, outs = self.program, []
    states = None if program.vectorised else program.unstack(state)
    keep = lambda b: {m: np.full(len(b["label"]), m not in zeroed, np.float32)
                      for m in self.dataset.modalities}
    example = sum(v[0].nbytes for v in arrays.values())
    per_call = max(1, CHUNK_BYTES // max(example * self.cfg.eval_batch_size, 1))
    batches = pipeline.eval_batches(arrays, self.cfg.eval_batch_size, jax.process_index(),
                                    jax.process_count())
    while chunk := list(itertools.islice(batches, per_call)):
      if zeroed:
        for b in chunk:
          b["keep"] = keep(b)
      chunk = to_global(stack_np(chunk), self._sharding(None, "data"))
      outs.append(program._eval_chunk(state, chunk) if states is None else
                  stack_np(jax.device_get([program._eval_chunk(s, chunk) for s in states])))
      self.interrupt()
    # the outputs are whole on every process: one transfer for the whole evaluation
    outs = jax.device_get(outs)
    joined = {k: np.concatenate([np.asarray(o[k]) for o in outs], axis=1) for k in outs[0]}
    pred = joined.pop("pred").reshape(len(joined["count"]), -1)  # [N, batches x B]
    n = np.sum(joined.pop("count"), axis=1)
    metrics = {k: np.asarray([np.sum(row) for row in v], np.float64) / n
               for k, v in joined.items()}  # each member's own sum, whatever N
    pred = pred[:, :pipeline.num_examples(arrays)]
    labels = np.asarray(arrays["label"])
    metrics["f1_macro"] = np.asarray([macro_f1(labels, p) for p in pred])
    return (metrics, pred) if predictions else metrics

  def predict_batches(self, state, epoch: int, num_batches: int, augment: bool = False):
    """(outputs [N, ...], labels [N, B]) of the evaluation-mode forward pass over the first
    ``num_batches`` training batches in ``epoch``'s order, with the training augmentation if
    ``augment`` (each member its own order and keys)."""
    program = self.program
    states = None if program.vectorised else program.unstack(state)
    hypers = program.member_hypers()
    for i, chunk in enumerate(self.train_chunks(epoch, steps_per_call=1)):
      if i == num_batches:
        return
      self.interrupt()
      rngs = [jax.random.fold_in(member_rng(h), 2**30 + i) if augment else None
              for h in hypers]
      if states is None:
        batch = jax.tree.map(lambda x: x[:, 0], chunk)
        rng = jax.numpy.stack(rngs) if augment else None
        yield program._predict(state, batch, rng), batch["label"]
      else:
        batches = [jax.tree.map(lambda x: x[0], c) for c in chunk]
        outs = [program._predict(s, b, r) for s, b, r in zip(states, batches, rngs)]
        yield stack(outs), stack([b["label"] for b in batches])


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


def epoch_means(steps: list[dict]) -> list[tuple[dict[str, float], dict[str, list[float]]]]:
  """Per member, the means of the step metrics over its finite steps and the per-step series
  of the rule's coefficients for the plots; ``steps``: `Loop.step_records`."""
  members = len(np.atleast_1d(steps[0]["finite"]))
  out = []
  for i in range(members):
    rows = [{k: np.atleast_1d(v)[i] for k, v in r.items()} for r in steps]
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


def first_nonfinite(record: dict, modalities, i: int = 0) -> str:
  """What was not finite in member ``i``'s step (``record``: {metric: values [N]})."""
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


@dataclasses.dataclass
class Epoch:
  """What an epoch gave, per member (None for a member stopped before or in it)."""

  epoch: int
  state: Any  # the population's, after the epoch (and the method's end-of-epoch hook)
  rows: list[dict | None]  # metrics.jsonl rows
  series: list[dict[str, list[float]]]  # per-step coefficient series (plots)
  predictions: np.ndarray  # int [N, test examples], the fused test predictions
  stops: dict[int, str]  # members that stopped in this epoch: why
  seconds: dict[str, float]  # wall clock: train (steps and their metrics), method, evaluate


def epochs(loop: Loop, state, first_epoch: int, stopped: Sequence[bool],
           on_step: Callable[[int], None] = lambda steps: None,
           halt: Callable[[int, str, int, int], None] | None = None) -> Iterator[Epoch]:
  """Trains epochs ``first_epoch`` .. ``cfg.epochs - 1`` and yields each one's `Epoch`.
  ``stopped``: members that stopped earlier (trained on, reported nowhere). ``on_step(k)``
  after each compiled call of ``k`` steps. ``halt(i, what, step, epoch)`` is told as soon as
  a call ends in which member ``i``'s step ``step`` turned non-finite (``what``: the loss, or
  Tr(F) of a modality), unless --skip_nonfinite."""
  cfg, method = loop.cfg, loop.program.method
  modalities = loop.dataset.modalities
  steps = pipeline.steps_per_epoch(loop.dataset.train, cfg.batch_size)
  per_call = loop.steps_per_call()
  stopped = list(stopped)

  def check(records, k, epoch):
    live = [i for i, s in enumerate(stopped) if not s]
    if cfg.skip_nonfinite or not live:
      return
    finite = loop.finite(records[k])  # [N, steps of the call]
    for i in live:
      if not finite[i].all():
        j = int(np.argmin(finite[i]))  # its first non-finite step
        record = loop.step_records([records[k]])[j]
        stopped[i] = True
        if halt is not None:
          halt(i, first_nonfinite(record, modalities, i), epoch * steps + k * per_call + j,
               epoch)

  for epoch in range(first_epoch, cfg.epochs):
    def step(records):
      on_step(min(per_call, steps - (len(records) - 1) * per_call))
      if len(records) > 1:  # the previous call: reading it does not wait for this one
        check(records, len(records) - 2, epoch)

    before = list(stopped)
    t0 = time.perf_counter()
    state, records = loop.train_epoch(state, epoch, on_step=step)
    check(records, len(records) - 1, epoch)
    means = epoch_means(loop.step_records(records))
    t1 = time.perf_counter()
    state, method_rows = method.on_epoch_end(loop, state, epoch)
    jax.block_until_ready(state)
    t2 = time.perf_counter()
    val = loop.evaluate(state, loop.dataset.val) if loop.dataset.val is not None else None
    test, predicted = loop.evaluate(state, loop.dataset.test, predictions=True)
    seconds = {"train": t1 - t0, "method": t2 - t1, "evaluate": time.perf_counter() - t2}
    rows, stops = [], {}
    for i, (train_m, _) in enumerate(means):
      if before[i] or stopped[i]:
        rows.append(None)
        continue
      if cfg.skip_nonfinite and train_m["skipped_steps"] > MAX_SKIPPED_FRACTION * steps:
        stops[i] = (f"{train_m['skipped_steps']} of epoch {epoch}'s {steps} steps were "
                    f"non-finite and skipped (more than {MAX_SKIPPED_FRACTION:.0%}): the run "
                    "stopped. Lower --learning_rate")
        stopped[i] = True
        rows.append(None)
        continue
      pick = lambda d: None if d is None else {k: float(v[i]) for k, v in d.items()}
      rows.append({"epoch": epoch, **epoch_row(modalities, train_m, pick(val), pick(test)),
                   **{k: float(np.asarray(v)[i]) for k, v in method_rows.items()}})
    yield Epoch(epoch, state, rows, [s for _, s in means], predicted, stops, seconds)
    if all(stopped):
      return
