"""The study as data: the tables, their rows, the comparisons each makes, and how a method is
tuned. `experiments.results` plans, runs and reports from these specs and nothing else;
adding a table is one `Table` here, adding a dataset one study entry in its
`inforeg_jax.datasets` module.

A row is a set of run flags on each (fold, seed); a *tuned* row starts from its method's
setting chosen on that fold's validation split (`Search`). A table's *families* are the
comparisons decided together (Holm's correction within each, `experiments.claims`): every
row of a family against its reference, paired by (fold, seed). *Descriptive* pairs are shown
with their intervals and decide nothing.

Protocol v2 (docs/RESULTS.md, written before its numbers): per fold, each method's learning
rate and key hyperparameter chosen on that fold's validation speaker by a search on ladders
(`Search`) over tuning seeds never reported; the choice interior to what was tried; then
its chosen setting and its defaults on the reported seeds.
"""

from __future__ import annotations

import dataclasses
from typing import Any

SEEDS = (0, 1, 2, 3, 4)  # reported
TUNING_SEEDS = (100, 101, 102)  # never reported
# The learning-rate ladder every method's search walks (the avmnist preset's 0.01 in it);
# the key hyperparameters' ladders are each method's (`SEARCHES`), its official default in it.
LR_LADDER = (0.00125, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16)
LR_START = 0.01
PAST_END = 3  # rungs a search may step past either end of a ladder (continued at its end's ratio)


def rung(ladder: tuple, i: int):
  """The ladder's i-th value; past either end (i < 0 or i >= len), the ladder continued at its
  end's ratio, up to `PAST_END` rungs: 3 significant digits, or for an integer ladder an
  integer >= 1. None where there is no such rung (past the limit, or no new integer)."""
  if 0 <= i < len(ladder):
    return ladder[i]
  low = i < 0
  steps = -i if low else i - len(ladder) + 1
  if steps > PAST_END or len(ladder) < 2:
    return None
  end, inner = (ladder[0], ladder[1]) if low else (ladder[-1], ladder[-2])
  value = end * (end / inner) ** steps
  if isinstance(end, int):
    value, before = int(round(value)), rung(ladder, i + 1 if low else i - 1)
    return value if value >= 1 and before is not None and value != before else None
  return float(f"{value:.3g}")


@dataclasses.dataclass(frozen=True)
class Search:
  """How one method is tuned on a fold: a hill climb on its ladders. Start at (LR_START, the
  key's official default); try every untried neighbour (one rung up and down each ladder,
  past a ladder's end too: `rung`) of the best setting so far, on every tuning seed; stop
  when the best setting's neighbours have all been tried: the choice is then interior to
  what was tried (unless it sits `PAST_END` rungs past a ladder's end, which the report
  says). A point is a tuple of rung indices (negative: below the ladder)."""

  name: str  # the search's (and its rows') name
  flags: tuple[str, ...]  # the method and what it fixes (e.g. InfoReg's noise-aware window)
  key: str | None = None  # the key hyperparameter's flag name (e.g. "inforeg.beta")
  ladder: tuple = ()  # its values, ascending
  start: Any = None  # its official default (on the ladder)

  def setting(self, lr: float, key=None) -> tuple[str, ...]:
    """The flags of the setting (lr, key)."""
    out = self.flags + (f"--learning_rate={lr}",)
    return out + ((f"--{self.key}={key}",) if self.key else ())

  def start_point(self) -> tuple:
    return (LR_LADDER.index(LR_START),) + ((self.ladder.index(self.start),) if self.key else ())

  def ladders(self) -> tuple[tuple, ...]:
    return (LR_LADDER,) + ((self.ladder,) if self.key else ())

  def neighbours(self, point: tuple) -> list[tuple]:
    """The points one rung away on each ladder (past its ends too, where `rung` has one)."""
    out = []
    for axis, ladder in enumerate(self.ladders()):
      for step in (-1, 1):
        p = list(point)
        p[axis] += step
        if rung(ladder, p[axis]) is not None:
          out.append(tuple(p))
    return out

  def at_ladder_end(self, point: tuple) -> list[str]:
    """The ladders ``point`` has no rung beyond (its choice cannot be shown interior)."""
    names = ("learning_rate",) + ((self.key,) if self.key else ())
    return [n for n, i, ladder in zip(names, point, self.ladders())
            if rung(ladder, i - 1) is None or rung(ladder, i + 1) is None]

  def flags_of(self, point: tuple) -> tuple[str, ...]:
    return self.setting(*(rung(ladder, i) for ladder, i in zip(self.ladders(), point)))


def _search(name, flags, key=None, ladder=(), start=None) -> Search:
  return Search(name, tuple(flags), key, tuple(ladder), start)


# Each method's key hyperparameter (its official default first in the comment), on a ladder
# wide enough that a choice at its end is unlikely (a search steps past an end: `rung`).
SEARCHES = {s.name: s for s in (
    _search("joint", ["--method=joint"]),
    _search("ogm_ge", ["--method=ogm_ge"], "ogm_ge.alpha", (0.03, 0.1, 0.3, 0.8, 2.0, 5.0),
            0.1),  # main.py 0.1; README CREMA-D 0.8
    _search("agm", ["--method=agm"], "agm.alpha", (0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            1.0),  # utils/config.py 1.0; README AV-MNIST 2.5
    _search("pmr", ["--method=pmr"], "pmr.alpha", (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0),
            1.0),  # official 1.0; CREMA-D commands 2-5
    _search("greedy", ["--method=greedy"]),
    _search("inforeg", ["--method=inforeg"], "inforeg.beta", (0.1, 0.3, 0.9, 2.0, 4.0, 8.0),
            0.9),  # paper Sec. 4.7
    _search("inforeg_noise", ["--method=inforeg", "--inforeg.criterion=noise_aware"],
            "inforeg.beta", (0.1, 0.3, 0.9, 2.0, 4.0, 8.0), 0.9),  # ours
    _search("joint_uni", ["--method=joint_uni"]),
    _search("gblending", ["--method=gblending"], "gblending.super_epoch", (2, 3, 5, 10, 20),
            10),  # BalanceBenchmark 10
    _search("mmpareto", ["--method=mmpareto"]),
    _search("inforeg_uni", ["--method=inforeg_uni"], "inforeg.beta",
            (0.1, 0.3, 0.9, 2.0, 4.0, 8.0), 0.9),
)}


@dataclasses.dataclass(frozen=True)
class Row:
  """One row: its flags on every (fold, seed); ``tuned``: the search whose chosen setting on
  each fold the flags are added to."""

  name: str
  flags: tuple[str, ...] = ()
  tuned: str | None = None


@dataclasses.dataclass(frozen=True)
class Family:
  """Comparisons decided together: each row against ``reference`` (Holm within)."""

  name: str
  reference: str
  rows: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Table:
  name: str
  title: str
  rows: tuple[Row, ...]
  families: tuple[Family, ...] = ()
  descriptive: tuple[tuple[str, str], ...] = ()  # (row, reference): shown, not claimed
  seeds: tuple[int, ...] = SEEDS

  def row(self, name: str) -> Row:
    return next(r for r in self.rows if r.name == name)

  def searches(self) -> list[str]:
    return list(dict.fromkeys(r.tuned for r in self.rows if r.tuned))


TABLE2 = ("ogm_ge", "agm", "pmr", "greedy", "inforeg", "inforeg_noise")  # vs joint
TABLE3 = ("gblending", "mmpareto", "inforeg_uni")  # with unimodal losses: vs joint_uni
WINDOWED = ("ogm_ge", "agm", "pmr", "inforeg")  # Table 4


def _tuned_and_default(name: str) -> list[Row]:
  s = SEARCHES[name]
  return [Row(f"{name} tuned", tuned=name), Row(f"{name} default", s.flags)]


TABLES = {t.name: t for t in (
    Table("tuned", "Tables 2 and 3: every method tuned per fold on its validation speaker, "
          "and at its defaults",
          rows=tuple(r for m in ("joint",) + TABLE2 + ("joint_uni",) + TABLE3
                     for r in _tuned_and_default(m)) + (
              Row("audio alone", ("--method=joint", "--modalities=audio")),
              Row("visual alone", ("--method=joint", "--modalities=visual"))),
          families=(Family("Table 2", "joint tuned", tuple(f"{m} tuned" for m in TABLE2)),
                    Family("Table 3", "joint_uni tuned", tuple(f"{m} tuned" for m in TABLE3))),
          descriptive=tuple((f"{m} tuned", f"{m} default") for m in
                            ("joint",) + TABLE2 + ("joint_uni",) + TABLE3)
          + (("inforeg_uni tuned", "mmpareto tuned"), ("inforeg tuned", "inforeg_noise tuned"),
             ("joint_uni tuned", "joint tuned"))),
    Table("window", "Table 4: when each method adjusts (its tuned setting): over the whole run, "
          "inside the prime learning window, or outside it",
          rows=tuple(Row(f"{m} {w}", (f"--window={w}",), tuned=m)
                     for m in WINDOWED for w in ("whole", "prime", "other"))
          + (Row("inforeg_noise prime", ("--window=prime",), tuned="inforeg_noise"),),
          families=tuple(Family(f"Table 4 {m}", f"{m} whole", (f"{m} prime", f"{m} other")
                                + (("inforeg_noise prime",) if m == "inforeg" else ()))
                         for m in WINDOWED)),
    # The paper's other tables, at each method's defaults (not in protocol v2's run)
    Table("epochs", "Table 1: joint training for E and 2E epochs against InfoReg for E",
          rows=(Row("joint E", ("--method=joint",)),
                Row("joint 2E", ("--method=joint", "EPOCHS2")),
                Row("inforeg E", ("--method=inforeg",))),
          families=(Family("Table 1", "joint E", ("joint 2E", "inforeg E")),)),
    Table("fusion", "Table 5: joint training and InfoReg under the four fusions",
          rows=tuple(Row(f"{m} {f}", (f"--method={m}", f"--fusion={f}"))
                     for f in ("concat", "sum", "film", "gated") for m in ("joint", "inforeg")),
          families=tuple(Family(f"Table 5 {f}", f"joint {f}", (f"inforeg {f}",))
                         for f in ("concat", "sum", "film", "gated"))),
    Table("beta", "Fig. 7: InfoReg's beta",
          rows=tuple(Row(f"inforeg beta={b}", ("--method=inforeg", f"--inforeg.beta={b}"))
                     for b in (0.1, 0.3, 0.5, 0.7, 0.9, 1.0)),
          descriptive=tuple((f"inforeg beta={b}", "inforeg beta=0.9")
                            for b in (0.1, 0.3, 0.5, 0.7, 1.0))),
    Table("threshold", "Fig. 8: InfoReg's K",
          rows=tuple(Row(f"inforeg K={k}", ("--method=inforeg", f"--threshold={k}"))
                     for k in (0.01, 0.02, 0.04, 0.06, 0.08, 0.1)),
          descriptive=tuple((f"inforeg K={k}", "inforeg K=0.04")
                            for k in (0.01, 0.02, 0.06, 0.08, 0.1))),
)}
