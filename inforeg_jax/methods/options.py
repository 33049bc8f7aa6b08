"""Each method's options, one frozen dataclass a method (``--<group>.<name>=value`` flags).

Kept free of JAX so that the CLI (``--help``) starts at once. Defaults are the method's paper
or official code for CREMA-D unless a dataset preset (``config.PRESETS``) says otherwise; every
field says where its default comes from.
"""

from __future__ import annotations

import dataclasses
from typing import Any


def option(default: Any, help: str, choices: tuple | None = None, minimum: float | None = None):
  """A dataclass field with the help text, choices and lower bound the CLI shows and checks."""
  return dataclasses.field(default=default,
                           metadata={"help": help, "choices": choices, "minimum": minimum})


@dataclasses.dataclass(frozen=True)
class InfoRegOptions:
  beta: float = option(0.9, "beta of Eq. 16, alpha = exp(beta tanh(Delta)) (paper Sec. 4.7)",
                       minimum=0)
  variant: str = option("paper", "paper: Algorithm 1 (sign erratum applied); official: the "
                        "released code's rules (score, audio moving-average criterion, K 0.05, "
                        "no warm-up, unimodal losses)", choices=("paper", "official"))
  warmup_epochs: int | None = option(None, "epochs of plain training first (default 2, "
                                     "official variant 0)", minimum=0)
  criterion: str = option("eq11", "the window rule: eq11 (the paper's), bounded (Eq. 11 closed "
                          "after max_window_epochs open epochs in a row) or trend (3-epoch "
                          "means); the last two are our options", choices=("eq11", "bounded",
                                                                            "trend"))
  max_window_epochs: int = option(3, "the bound of criterion=bounded", minimum=1)


@dataclasses.dataclass(frozen=True)
class OGMGEOptions:
  alpha: float = option(0.1, "alpha of the coefficient 1 - tanh(alpha * ratio) (OGM-GE main.py "
                        "default; its README uses 0.8 for CREMA-D, the cremad preset)", minimum=0)
  noise: bool = option(True, "GE: add Gaussian noise with the gradient's std")
  start_epoch: int = option(0, "first epoch modulated", minimum=0)
  end_epoch: int = option(50, "last epoch modulated (inclusive, official default 50)",
                          minimum=0)


@dataclasses.dataclass(frozen=True)
class AGMOptions:
  alpha: float = option(1.5, "alpha of the coefficient exp(alpha * min(r_bar - r, 10)) (the "
                        "authors: 1.5 for CREMA-D, 2.5 for AV-MNIST)", minimum=0)


@dataclasses.dataclass(frozen=True)
class PMROptions:
  alpha: float = option(1.0, "weight of the weaker modality's prototypical CE term (official "
                        "default; its CREMA-D commands use 2-5)", minimum=0)
  momentum: float = option(0.0, "EMA momentum of the prototypes (0: a fresh mean each epoch, "
                           "as every official CREMA-D command)", minimum=0)
  start_epoch: int = option(0, "first epoch modulated", minimum=0)
  end_epoch: int = option(100, "last epoch modulated (inclusive, official default 100)",
                          minimum=0)
  prototype_fraction: float = option(0.1, "fraction of the training batches the prototypes "
                                     "are computed from", minimum=0)


@dataclasses.dataclass(frozen=True)
class GreedyOptions:
  threshold: float = option(0.01, "re-balance when |BDR_0 - BDR_1| exceeds this", minimum=0)
  phase_steps: int = option(5, "steps of a re-balancing phase", minimum=1)
  start_epoch: int = option(1, "first epoch (0-based) that may re-balance: one warm-up epoch, "
                            "as the official starting_epoch 2 of its 1-based epochs", minimum=0)
  official_running_average: bool = option(True, "both MMTM running averages from modality "
                                          "0's scale, as the official code; false: each "
                                          "modality's own (BalanceBenchmark)")


@dataclasses.dataclass(frozen=True)
class GBlendingOptions:
  super_epoch: int = option(10, "epochs between weight recomputes (BalanceBenchmark: 10)",
                            minimum=1)
  trial_epochs: int = option(10, "epochs each head's trial copy trains to measure its OGR "
                             "(BalanceBenchmark: the super-epoch)", minimum=1)
  holdout: float = option(0.1, "fraction of the training set held out when the dataset has "
                          "no validation split", minimum=0)


@dataclasses.dataclass(frozen=True)
class MMParetoOptions:
  gamma: float = option(1.5, "scale of the combined encoder gradient (MMPareto.py)", minimum=0)
