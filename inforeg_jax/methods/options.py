"""Each method's options, one frozen dataclass a method (``--<group>.<name>=value`` flags).

Kept free of JAX so that the CLI (``--help``) starts at once; the registry
(`inforeg_jax.methods`) names each method's options class beside the method. Defaults are the
method's paper or official code unless a dataset preset (`inforeg_jax.datasets`) says otherwise;
every field says where its default comes from. ``member=True`` marks a hyperparameter that a
population may vary across its members (a list-valued flag): it is a traced value inside the
step, never a shape or a branch of the program.

An options class may also say what the config derives from it, so that the config names no
method: ``dataset_defaults`` (a dataset's own values for these options, over the class's),
``default_threshold()`` (K of Eq. 11 when --threshold is not given) and ``check(cfg)`` (a
ValueError for a setting the method does not support).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar


def option(default: Any, help: str, choices: tuple | None = None, minimum: float | None = None,
           maximum: float | None = None, member: bool = False):
  """A dataclass field with the help text, choices and bounds the CLI shows and checks;
  ``member``: a population may give it a list of values."""
  return dataclasses.field(default=default, metadata={
      "help": help, "choices": choices, "minimum": minimum, "maximum": maximum,
      "member": member})


@dataclasses.dataclass(frozen=True)
class InfoRegOptions:
  beta: float = option(0.9, "beta of Eq. 16, alpha = exp(beta tanh(Delta)) (paper Sec. 4.7)",
                       minimum=0, member=True)
  variant: str = option("paper", "paper: Algorithm 1 (sign erratum applied); official: the "
                        "released code's rules (score, audio moving-average criterion, K 0.05, "
                        "no warm-up, unimodal losses)", choices=("paper", "official"))
  warmup_epochs: int | None = option(None, "epochs of plain training first (default 2, "
                                     "official variant 0)", minimum=0)
  criterion: str = option("eq11", "the window rule: eq11 (the paper's), bounded (Eq. 11 closed "
                          "after max_window_epochs open epochs in a row), trend (3-epoch means) "
                          "or noise_aware (the rise must clear K by 2 standard errors of "
                          "Tr(F)'s epoch estimates); the last three are our options",
                          choices=("eq11", "bounded", "trend", "noise_aware"))
  max_window_epochs: int = option(3, "the bound of criterion=bounded", minimum=1)

  def default_threshold(self) -> float:
    from inforeg_jax.regulation import default_threshold  # JAX: not at import
    return default_threshold(self.variant)

  def check(self, cfg) -> None:
    if self.variant == "official" and (cfg.modalities or cfg.dataset == "mosi"):
      raise ValueError("--inforeg.variant=official is defined for two modalities (audio, "
                       "visual)")


@dataclasses.dataclass(frozen=True)
class OGMGEOptions:
  dataset_defaults: ClassVar[dict] = {"cremad": {"alpha": 0.8}}  # its README's CREMA-D command
  alpha: float = option(0.1, "alpha of the coefficient 1 - tanh(alpha * ratio) (OGM-GE main.py "
                        "default; its README uses 0.8 for CREMA-D, the cremad default)",
                        minimum=0, member=True)
  noise: bool = option(True, "GE: add Gaussian noise with the gradient's std")
  start_epoch: int = option(0, "first epoch modulated", minimum=0)
  end_epoch: int = option(50, "last epoch modulated (inclusive, official default 50)",
                          minimum=0)


@dataclasses.dataclass(frozen=True)
class AGMOptions:
  # the AV-MNIST script's rule has no min(., 10) (run/AVMNIST_main.py:116)
  dataset_defaults: ClassVar[dict] = {"avmnist": {"clamp": False}}
  alpha: float = option(1.0, "alpha of the coefficient exp(alpha * min(r_bar - r, 10)) (official "
                        "default, utils/config.py:76; its README's one AV-MNIST command uses "
                        "2.5)", minimum=0, member=True)
  start_epoch: int = option(0, "first epoch modulated (0-based; official --modulation_starts 0)",
                            minimum=0)
  end_epoch: int = option(19, "last epoch modulated, inclusive (0-based; official "
                          "--modulation_ends 20 of its 1-based epochs: the first 20); after it "
                          "the last coefficient stays, as in the official hooks", minimum=0)
  clamp: bool = option(True, "clamp the ratio gap at 10 (7 for three modalities) as "
                       "CREMAD_main.py:151 / URFunny_main.py:128; the AV-MNIST script has none "
                       "(the avmnist default: false)")


@dataclasses.dataclass(frozen=True)
class PMROptions:
  alpha: float = option(1.0, "weight of the weaker modality's prototypical CE term (official "
                        "default; its CREMA-D commands use 2-5)", minimum=0, member=True)
  momentum: float = option(0.0, "EMA momentum of the prototypes (0: a fresh mean each epoch, "
                           "as every official CREMA-D command)", minimum=0, maximum=1,
                           member=True)
  start_epoch: int = option(0, "first epoch modulated", minimum=0)
  end_epoch: int = option(100, "last epoch modulated (inclusive, official default 100)",
                          minimum=0)
  prototype_fraction: float = option(0.1, "fraction of the training batches the prototypes "
                                     "are computed from (official: len(loader) // 10, "
                                     "main_Prototype_grad.py:429)", minimum=0, maximum=1)


@dataclasses.dataclass(frozen=True)
class GreedyOptions:
  threshold: float = option(0.01, "re-balance when |BDR_0 - BDR_1| exceeds this", minimum=0,
                            member=True)
  phase_steps: int = option(5, "steps of a re-balancing phase", minimum=1)
  start_epoch: int = option(1, "first epoch (0-based) that may re-balance: one warm-up epoch, "
                            "as the official starting_epoch 2 of its 1-based epochs", minimum=0)
  official_running_average: bool = option(True, "both MMTM running averages from modality "
                                          "0's scale, as the official code; false: each "
                                          "modality's own (BalanceBenchmark)")


@dataclasses.dataclass(frozen=True)
class GBlendingOptions:
  dataset_defaults: ClassVar[dict] = {"tiny": {"super_epoch": 2}}
  super_epoch: int = option(10, "epochs between weight recomputes, and the length of each "
                            "head's trial (BalanceBenchmark: 10, trainer_config.yaml:38)",
                            minimum=2)
  weight_scale: str = option("official", "official: the weights sum to 1 "
                             "(GBlending_trainer.py:371-373); heads: they sum to the number of "
                             "heads, the loss scale of joint training* (ours, removes the "
                             "scale confound)", choices=("official", "heads"))


@dataclasses.dataclass(frozen=True)
class MMParetoOptions:
  gamma: float = option(1.5, "scale of the combined encoder gradient (MMPareto.py)", minimum=0,
                        member=True)
