"""Per-epoch outputs of a run: metrics.jsonl, TensorBoard event files, PNG plots, log.txt.

Plots, refreshed after an epoch at most every ``PLOT_SECONDS`` and at the end, in the workdir,
each titled with the run (dataset / method / seed):
- ``accuracy.png``: test accuracy, fused and of each modality (and validation, if any);
- ``trace.png``: Tr(F_m) per epoch (Eq. 7); each modality's prime-learning-window epochs are
  marked in that modality's colour (a band under the curves, and the curve's markers filled);
- ``alpha.png``: the rule's per-step coefficient per modality (InfoReg's alpha, Eq. 16, or the
  baseline's coefficient), epoch boundaries marked, when the method has one.
Non-finite numbers are written as JSON ``null`` (bare NaN is not JSON). The loop owns the
history; a `Reporter` writes the rows it is given. `RunLog` writes the run's messages to the
terminal and to ``<workdir>/log.txt`` (absl's line format, through the standard ``logging``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
import time
from typing import Any, Sequence

PLOT_SECONDS = 30.0  # plotting costs about a second: a small CPU run's epoch is a few


def pyplot():
  """matplotlib's pyplot (Agg), imported on the first plot: a run without plots (--plots=
  false) does not pay its import."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def json_safe(value):
  """``value`` with every non-finite float replaced by None."""
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {k: json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_safe(v) for v in value]
  return value


def summary_digest(summary: dict) -> str:
  """sha256 of a summary's JSON (all but ``summary_sha256``, keys sorted)."""
  fields = {k: v for k, v in summary.items() if k != "summary_sha256"}
  return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def with_digest(summary: dict) -> dict:
  """``summary`` as its JSON reads back (non-finite numbers null) with ``summary_sha256``:
  the numbers a table reports from a run are its summary's, so an edit or damage is found
  (`experiments.runs`), as the checkpoints' and the predictions' checksums find theirs."""
  plain = json.loads(json.dumps(json_safe(summary)))
  plain["summary_sha256"] = summary_digest(plain)
  return plain


class _NoWriter:
  """Stands in for TensorBoard when tensorboardX is not installed (e.g. a bare GPU image)."""

  def add_scalar(self, *args, **kwargs):
    pass

  add_hparams = flush = close = add_scalar


def _summary_writer(logdir: str):
  try:
    from tensorboardX import SummaryWriter
  except ImportError:
    print("tensorboardX is not installed: no TensorBoard events (pip install tensorboardX)")
    return _NoWriter()
  return SummaryWriter(logdir)


def close_events(tb) -> None:
  """Closes a TensorBoard writer. One that cannot flush (a full disk) is closed all the same,
  its thread stopped, before the error goes on: tensorboardX would otherwise try again at
  exit, and its thread and its exit hook would each print a traceback."""
  try:
    tb.close()
  except OSError:
    for writer in (getattr(tb, "all_writers", None) or {}).values():
      events = getattr(writer, "event_writer", None)
      if events is None or getattr(events, "_closed", True):
        continue
      events._closed = True  # its exit hook's close does nothing now
      for stop in (lambda: events._worker.stop(), lambda: events._ev_writer.close()):
        try:
          stop()
        except (OSError, AttributeError):
          pass
    raise


class Reporter:
  """Writes one run's outputs from the rows the loop gives it. In a multi-host run only
  process 0 writes (``write=False`` elsewhere)."""

  def __init__(self, workdir: str, modalities: Sequence[str], history: Sequence[dict],
               run_name: str = "", hparams: dict[str, Any] | None = None, write: bool = True,
               plots: bool = True):
    self.workdir, self.modalities = workdir, list(modalities)
    self.run_name, self.hparams, self.write, self.plots = run_name, hparams or {}, write, plots
    self.plotted = time.monotonic()  # of the last plot: the first after PLOT_SECONDS
    self.log = open(os.path.join(workdir, "metrics.jsonl"), "w") if write else None
    for row in history if write else ():  # the rows so far (a resumed run's)
      self.log.write(json.dumps(json_safe(row)) + "\n")
    if write:
      self.log.flush()
    self.tb = _summary_writer(os.path.join(workdir, "tensorboard")) if write else _NoWriter()

  def epoch(self, row: dict, step_series: dict[str, list[float]], history: Sequence[dict],
            series: dict[str, list[float]]) -> None:
    """Writes ``row`` (and its steps' coefficients); ``history``/``series``: the whole run's
    rows and coefficient series so far, for the plots."""
    if not self.write:
      return
    self.log.write(json.dumps(json_safe(row)) + "\n")
    self.log.flush()
    for k, v in row.items():
      if k != "epoch" and isinstance(v, (int, float)):
        self.tb.add_scalar(k, v, row["epoch"])
    for k, values in step_series.items():
      start = len(series[k]) - len(values)
      for i, v in enumerate(values):
        self.tb.add_scalar(f"step/{k}", v, start + i)
    self.tb.flush()
    if self.plots and time.monotonic() - self.plotted > PLOT_SECONDS:
      self.plot(history, series)

  def _title(self, ax, what: str) -> None:
    ax.set_title(f"{what}\n{self.run_name}" if self.run_name else what, fontsize=10)

  def plot(self, history: Sequence[dict], series: dict[str, list[float]]) -> None:
    self.plotted = time.monotonic()
    plt = pyplot()
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    epochs = [r["epoch"] for r in history]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(epochs, [r["acc"] for r in history], label="fused (test)", lw=2, color="k")
    if "val_acc" in history[0]:
      ax.plot(epochs, [r["val_acc"] for r in history], label="fused (validation)", lw=1,
              ls="--", color="k")
    for i, m in enumerate(self.modalities):
      ax.plot(epochs, [r[f"acc_{m}"] for r in history], label=f"{m} (test)",
              color=colors[i % len(colors)])
    ax.set(xlabel="epoch", ylabel="accuracy")
    self._title(ax, "Accuracy")
    ax.legend(fontsize=8)
    self._save(fig, "accuracy.png")

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    top = max((r[f"trace_{m}"] or 0) for r in history for m in self.modalities) or 1.0
    for i, m in enumerate(self.modalities):
      color = colors[i % len(colors)]
      values = [r[f"trace_{m}"] for r in history]
      ax.plot(epochs, values, marker="o", ms=4, mfc="white", color=color, label=f"{m}: Tr(F)")
      flags = [r.get(f"window_{m}", r.get("window", 0.0)) > 0.5 for r in history]
      opened = [(e, v) for e, v, f in zip(epochs, values, flags) if f]
      if opened:
        ax.plot(*zip(*opened), ls="none", marker="o", ms=4, color=color)
        band = -0.04 * top * (i + 1)
        for e, _ in opened:
          ax.hlines(band, e - 0.5, e + 0.5, color=color, lw=5)
        ax.plot([], [], color=color, lw=5, label=f"{m}: window open")
    ax.set(xlabel="epoch", ylabel="Tr(F)  (mean squared gradient norm)")
    self._title(ax, "Information acquisition (filled, bands: prime learning window)")
    ax.legend(fontsize=8)
    self._save(fig, "trace.png")

    if series:
      fig, ax = plt.subplots(figsize=(6.4, 4.2))
      n = len(next(iter(series.values())))
      steps_per_epoch = max(n // max(len(history), 1), 1)
      for e in range(1, len(history)):
        ax.axvline(e * steps_per_epoch, color="0.85", lw=0.8, zorder=0)
      for i, (k, values) in enumerate(sorted(series.items())):
        ax.plot(values, label=k, lw=1.2, color=colors[i % len(colors)])
      low = min(min(v) for v in series.values())
      high = max(max(v) for v in series.values())
      pad = 0.05 * (high - low) or 0.1
      ax.set_ylim(low - pad, high + pad)
      ax.set(xlabel=f"step (grey lines: epochs of {steps_per_epoch} steps)",
             ylabel="coefficient (0: not regulated)")
      self._title(ax, "Regulation coefficient per step")
      ax.legend(fontsize=8)
      self._save(fig, "alpha.png")

  def _save(self, fig, name: str) -> None:
    fig.tight_layout()
    fig.savefig(os.path.join(self.workdir, name), dpi=100)
    pyplot().close(fig)

  def close(self, history: Sequence[dict], series: dict[str, list[float]],
            trained: bool = True) -> None:
    """Final plots; TensorBoard's hparams session only when this session trained (a
    re-report of a finished run adds none)."""
    if not self.write:
      return
    try:
      if history and self.plots:
        self.plot(history, series)
      if history and self.hparams and trained:
        last = history[-1]
        self.tb.add_hparams(self.hparams, {
            f"hparam/{k}": last[k] for k in ("acc", "val_acc",
                                             *(f"acc_{m}" for m in self.modalities))
            if isinstance(last.get(k), (int, float))}, name=".")
    finally:  # the files closed even when a plot could not be written (a full disk)
      try:
        self.log.close()
      finally:
        close_events(self.tb)


class RunLog:
  """A run's messages: to the terminal (stdout) and to ``log.txt`` in the workdirs, one file
  per member, in absl's format (``I1203 06:00:00.123 12345 message``)."""

  FORMAT = "%(levelname).1s%(asctime)s.%(msecs)03d %(process)d %(message)s"

  def __init__(self, workdirs: Sequence[str], console: bool = True):
    self.workdirs, self.console = list(workdirs), console
    self.loggers: list[logging.Logger] = []

  def open(self) -> None:
    """Starts the log files (appending: a resumed run's log goes on)."""
    for i, workdir in enumerate(self.workdirs):
      logger = logging.getLogger(f"inforeg_jax.run.{id(self)}.{i}")
      logger.setLevel(logging.INFO)
      logger.propagate = False
      handler = logging.FileHandler(os.path.join(workdir, "log.txt"))
      handler.setFormatter(logging.Formatter(self.FORMAT, "%m%d %H:%M:%S"))
      logger.addHandler(handler)
      self.loggers.append(logger)

  def member(self, index: int, message: str, console: bool = True) -> None:
    """A message of one member (also on the terminal, unless ``console`` is False)."""
    if self.console and console:
      print(message, flush=True)
    if index < len(self.loggers):
      self.loggers[index].info(message)

  def all(self, message: str) -> None:
    """A message of the whole run: the terminal once, every member's log."""
    if self.console:
      print(message, file=sys.stdout, flush=True)
    for logger in self.loggers:
      logger.info(message)

  def close(self) -> None:
    for logger in self.loggers:
      for handler in list(logger.handlers):
        handler.close()
        logger.removeHandler(handler)
    self.loggers = []
