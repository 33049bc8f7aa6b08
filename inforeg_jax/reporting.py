"""Per-epoch outputs of a run: metrics.jsonl, TensorBoard event files, PNG plots.

Plots, refreshed each epoch in the workdir:
- ``accuracy.png``: test accuracy, fused and of each modality through the head;
- ``trace.png``: Tr(F_m) per epoch (Eq. 7), epochs inside the prime learning window shaded;
- ``alpha.png``: the rule's per-step coefficient per modality (InfoReg's alpha, Eq. 16, or
  the baseline's coefficient), when the method has one.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


class _NoWriter:
  """Stands in for TensorBoard when tensorboardX is not installed (e.g. a bare GPU image)."""

  def add_scalar(self, *args):
    pass

  flush = close = add_scalar


def _summary_writer(logdir: str):
  try:
    from tensorboardX import SummaryWriter
  except ImportError:
    print("tensorboardX is not installed: no TensorBoard events (pip install tensorboardX)")
    return _NoWriter()
  return SummaryWriter(logdir)


class Reporter:
  """Writes one run's outputs; ``history`` rows are the metrics.jsonl lines."""

  def __init__(self, workdir: str, modalities: Sequence[str], history: list[dict],
               coefficient_series: dict[str, list[float]] | None = None):
    self.workdir, self.modalities = workdir, list(modalities)
    self.history = history
    self.series = coefficient_series or {}
    self.log = open(os.path.join(workdir, "metrics.jsonl"), "w")
    for row in history:
      self.log.write(json.dumps(row) + "\n")
    self.tb = _summary_writer(os.path.join(workdir, "tensorboard"))

  def epoch(self, row: dict, step_series: dict[str, list[float]]) -> None:
    self.history.append(row)
    self.log.write(json.dumps(row) + "\n")
    self.log.flush()
    for k, v in row.items():
      if k != "epoch" and isinstance(v, (int, float)):
        self.tb.add_scalar(k, v, row["epoch"])
    for k, values in step_series.items():
      start = len(self.series.get(k, []))
      self.series.setdefault(k, []).extend(values)
      for i, v in enumerate(values):
        self.tb.add_scalar(f"step/{k}", v, start + i)
    self.tb.flush()
    self.plot()

  def plot(self) -> None:
    epochs = [r["epoch"] for r in self.history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [r["acc"] for r in self.history], label="fused", lw=2)
    for m in self.modalities:
      ax.plot(epochs, [r[f"acc_{m}"] for r in self.history], label=m)
    ax.set(xlabel="epoch", ylabel="test accuracy", title="Accuracy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(self.workdir, "accuracy.png"), dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for m in self.modalities:
      ax.plot(epochs, [r[f"trace_{m}"] for r in self.history], marker="o", ms=3, label=m)
    for r in self.history:
      flags = [r.get(f"window_{m}", r.get("window", 0.0)) for m in self.modalities]
      if max(flags) > 0.5:
        ax.axvspan(r["epoch"] - 0.5, r["epoch"] + 0.5, color="gold", alpha=0.25, lw=0)
    ax.set(xlabel="epoch", ylabel="Tr(F)  (mean squared gradient norm)",
           title="Information acquisition (shaded: prime learning window)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(self.workdir, "trace.png"), dpi=100)
    plt.close(fig)

    if self.series:
      fig, ax = plt.subplots(figsize=(6, 4))
      for k, values in sorted(self.series.items()):
        ax.plot(values, label=k, lw=1)
      ax.set(xlabel="step", ylabel="coefficient", title="Regulation coefficient per step")
      ax.legend()
      fig.tight_layout()
      fig.savefig(os.path.join(self.workdir, "alpha.png"), dpi=100)
      plt.close(fig)

  def close(self) -> None:
    self.log.close()
    self.tb.close()
