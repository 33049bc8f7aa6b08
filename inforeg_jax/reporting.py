"""Per-epoch outputs of a run: metrics.jsonl, TensorBoard event files, PNG plots.

Plots, refreshed after an epoch at most every ``PLOT_SECONDS`` and at the end, in the workdir, each titled with the run (dataset / method / seed):
- ``accuracy.png``: test accuracy, fused and of each modality (and validation, if any);
- ``trace.png``: Tr(F_m) per epoch (Eq. 7); each modality's prime-learning-window epochs are
  marked in that modality's colour (a band under the curves, and the curve's markers filled);
- ``alpha.png``: the rule's per-step coefficient per modality (InfoReg's alpha, Eq. 16, or the
  baseline's coefficient), epoch boundaries marked, when the method has one.
Non-finite numbers are written as JSON ``null`` (bare NaN is not JSON).
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]
PLOT_SECONDS = 30.0  # plotting costs about a second: a small CPU run's epoch is a few


def json_safe(value):
  """``value`` with every non-finite float replaced by None."""
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {k: json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_safe(v) for v in value]
  return value


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


class Reporter:
  """Writes one run's outputs; ``history`` rows are the metrics.jsonl lines. In a multi-host
  run only process 0 writes (``write=False`` elsewhere): the history is kept all the same."""

  def __init__(self, workdir: str, modalities: Sequence[str], history: list[dict],
               coefficient_series: dict[str, list[float]] | None = None, run_name: str = "",
               hparams: dict[str, Any] | None = None, write: bool = True):
    self.workdir, self.modalities = workdir, list(modalities)
    self.history = history
    self.series = coefficient_series or {}
    self.run_name, self.hparams, self.write = run_name, hparams or {}, write
    self.plotted = 0.0  # time.monotonic() of the last plot
    self.log = open(os.path.join(workdir, "metrics.jsonl"), "w") if write else None
    for row in history if write else ():
      self.log.write(json.dumps(json_safe(row)) + "\n")
    if write:
      self.log.flush()
    self.tb = _summary_writer(os.path.join(workdir, "tensorboard")) if write else _NoWriter()

  def epoch(self, row: dict, step_series: dict[str, list[float]]) -> None:
    self.history.append(row)
    for k, values in step_series.items():
      self.series.setdefault(k, []).extend(values)
    if not self.write:
      return
    self.log.write(json.dumps(json_safe(row)) + "\n")
    self.log.flush()
    for k, v in row.items():
      if k != "epoch" and isinstance(v, (int, float)):
        self.tb.add_scalar(k, v, row["epoch"])
    for k, values in step_series.items():
      start = len(self.series[k]) - len(values)
      for i, v in enumerate(values):
        self.tb.add_scalar(f"step/{k}", v, start + i)
    self.tb.flush()
    if time.monotonic() - self.plotted > PLOT_SECONDS:
      self.plot()

  def _title(self, ax, what: str) -> None:
    ax.set_title(f"{what}\n{self.run_name}" if self.run_name else what, fontsize=10)

  def plot(self) -> None:
    self.plotted = time.monotonic()
    epochs = [r["epoch"] for r in self.history]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(epochs, [r["acc"] for r in self.history], label="fused (test)", lw=2, color="k")
    if "val_acc" in self.history[0]:
      ax.plot(epochs, [r["val_acc"] for r in self.history], label="fused (validation)", lw=1,
              ls="--", color="k")
    for i, m in enumerate(self.modalities):
      ax.plot(epochs, [r[f"acc_{m}"] for r in self.history], label=f"{m} (test)",
              color=COLORS[i % len(COLORS)])
    ax.set(xlabel="epoch", ylabel="accuracy")
    self._title(ax, "Accuracy")
    ax.legend(fontsize=8)
    self._save(fig, "accuracy.png")

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    top = max((r[f"trace_{m}"] or 0) for r in self.history for m in self.modalities) or 1.0
    for i, m in enumerate(self.modalities):
      color = COLORS[i % len(COLORS)]
      values = [r[f"trace_{m}"] for r in self.history]
      ax.plot(epochs, values, marker="o", ms=4, mfc="white", color=color, label=f"{m}: Tr(F)")
      flags = [r.get(f"window_{m}", r.get("window", 0.0)) > 0.5 for r in self.history]
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

    if self.series:
      fig, ax = plt.subplots(figsize=(6.4, 4.2))
      n = len(next(iter(self.series.values())))
      steps_per_epoch = max(n // max(len(self.history), 1), 1)
      for e in range(1, len(self.history)):
        ax.axvline(e * steps_per_epoch, color="0.85", lw=0.8, zorder=0)
      for i, (k, values) in enumerate(sorted(self.series.items())):
        ax.plot(values, label=k, lw=1.2, color=COLORS[i % len(COLORS)])
      low = min(min(v) for v in self.series.values())
      high = max(max(v) for v in self.series.values())
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
    plt.close(fig)

  def close(self) -> None:
    if not self.write:
      return
    if self.history:
      self.plot()
    if self.history and self.hparams:
      last = self.history[-1]
      self.tb.add_hparams(self.hparams, {f"hparam/{k}": last[k] for k in
                                         ("acc", "val_acc", *(f"acc_{m}" for m in self.modalities))
                                         if isinstance(last.get(k), (int, float))},
                          name=".")
    self.log.close()
    self.tb.close()
