"""Experiment configuration: one frozen dataclass, per-dataset presets, strict flags.

``Config`` holds the run's settings; each method's options are a group of their own
(``cfg.agm.alpha``, flag ``--agm.alpha``; `inforeg_jax.methods.options`). Values resolve as
defaults < dataset preset < ``--tiny`` < flags. The flags are strict: no abbreviations,
booleans only as true/false (1/0, yes/no), every value checked before anything is built, and
every error one line. This module imports no JAX, so ``--help`` is immediate.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import types
import typing
from typing import Any, Sequence

from inforeg_jax.methods import NAMES as METHOD_NAMES
from inforeg_jax.methods import REGISTRY
from inforeg_jax.methods.options import (AGMOptions, GBlendingOptions, GreedyOptions,
                                         InfoRegOptions, MMParetoOptions, OGMGEOptions,
                                         PMROptions, option)

DATASETS = ("synthetic", "avmnist", "cremad", "kinetics_sounds", "mosi")
WINDOWS = ("auto", "prime", "whole", "other")


def _group(cls):
  return dataclasses.field(default_factory=cls, metadata={"group": True})


@dataclasses.dataclass(frozen=True)
class Config:
  """One run. Help texts are the CLI's (``python -m experiments.run --help``)."""

  dataset: str = option("synthetic", "the data: synthetic is built in; the others are read "
                        "from --data_dir, prepared by python -m data_prep.<dataset>",
                        choices=DATASETS)
  method: str = option("inforeg", "the balancing method (README, Methods)", choices=METHOD_NAMES)
  epochs: int = option(30, "training epochs", minimum=1)
  seed: int = option(0, "seed of the initialisation, data order and augmentation", minimum=0)
  batch_size: int = option(64, "global training batch size", minimum=1)
  eval_batch_size: int = option(256, "global evaluation batch size", minimum=1)
  learning_rate: float = option(0.002, "SGD learning rate (released code: 0.002)", minimum=0)
  momentum: float = option(0.9, "SGD momentum", minimum=0)
  weight_decay: float = option(1e-4, "weight decay, added to the gradient", minimum=0)
  lr_step_epochs: int = option(30, "StepLR: the rate is multiplied by --lr_decay every this "
                               "many epochs (released code: 30)", minimum=1)
  lr_decay: float = option(0.1, "StepLR factor", minimum=0)
  window: str = option("auto", "when a modulating method adjusts (Table 4): inside the prime "
                       "learning window (Eq. 11), over the whole run, or only in the other "
                       "periods; auto: prime for InfoReg, whole for the baselines",
                       choices=WINDOWS)
  threshold: float | None = option(None, "K of Eq. 11, the prime-learning-window threshold "
                                   "(default 0.04, paper Sec. 4.7; 0.05 for --inforeg.variant="
                                   "official)", minimum=0)
  fusion: str = option("concat", "fusion head (Table 5): the released fusion_modules.py",
                       choices=("concat", "sum", "film", "gated"))
  encoder: str = option("small_cnn", "encoder network (paper: resnet18; transformer for "
                        "feature sequences)", choices=("small_cnn", "resnet18", "transformer"))
  width: int = option(16, "small_cnn first width / resnet18 stem width (paper 64) / "
                      "transformer dim", minimum=1)
  stem_stride: int = option(1, "small_cnn: stride of the first convolution (2 quarters the "
                            "cost; the AV-MNIST preset)", minimum=1)
  compute_dtype: str = option("float32", "bfloat16 computes in bf16 with fp32 parameters",
                              choices=("float32", "bfloat16"))
  modalities: str = option("", "comma-separated subset to train on, e.g. visual (a unimodal "
                           "baseline); empty: all")
  data_dir: str = option("", "the prepared dataset (default data/<dataset>, where data_prep "
                         "writes)")
  workdir: str = option("", "where the run's outputs go (default runs/<dataset>/<method>/"
                        "seed<seed>)")
  limit_train: int = option(0, "train on the first N examples only (0: all)", minimum=0)
  resume: bool = option(False, "continue the run in --workdir from its latest checkpoint")
  overwrite: bool = option(False, "delete what --workdir holds and start afresh")
  skip_nonfinite: bool = option(False, "skip (and count) steps with a non-finite loss or Tr(F) "
                                "instead of stopping the run")
  inforeg: InfoRegOptions = _group(InfoRegOptions)
  ogm_ge: OGMGEOptions = _group(OGMGEOptions)
  agm: AGMOptions = _group(AGMOptions)
  pmr: PMROptions = _group(PMROptions)
  greedy: GreedyOptions = _group(GreedyOptions)
  gblending: GBlendingOptions = _group(GBlendingOptions)
  mmpareto: MMParetoOptions = _group(MMParetoOptions)

  def __post_init__(self):
    for obj, prefix in [(self, "")] + [(getattr(self, g), g + ".") for g in GROUPS]:
      for f in dataclasses.fields(obj):
        if f.metadata.get("group"):
          continue
        value, meta = getattr(obj, f.name), f.metadata
        if meta.get("choices") and value not in meta["choices"]:
          raise ValueError(f"--{prefix}{f.name} must be one of {', '.join(meta['choices'])}; "
                           f"got {value!r}")
        if meta.get("minimum") is not None and value is not None and value < meta["minimum"]:
          raise ValueError(f"--{prefix}{f.name} must be >= {meta['minimum']}; got {value!r}")
    if self.method.startswith("inforeg") and self.inforeg.variant == "official" and (
        self.modalities or self.dataset == "mosi"):
      raise ValueError("--inforeg.variant=official is defined for two modalities (audio, "
                       "visual)")

  @property
  def resolved_window(self) -> str:
    return REGISTRY[self.method].default_window if self.window == "auto" else self.window

  @property
  def resolved_threshold(self) -> float:
    """K of Eq. 11: --threshold, else the paper's 0.04 (0.05 for --inforeg.variant=official)."""
    from inforeg_jax.regulation import OFFICIAL_THRESHOLD, PAPER_THRESHOLD  # JAX: not at import
    if self.threshold is not None:
      return self.threshold
    official = self.method.startswith("inforeg") and self.inforeg.variant == "official"
    return OFFICIAL_THRESHOLD if official else PAPER_THRESHOLD

  @property
  def resolved_data_dir(self) -> str:
    return self.data_dir or os.path.join("data", self.dataset)

  @property
  def resolved_workdir(self) -> str:
    if self.workdir:
      return self.workdir
    name = self.method + (f"-{self.modalities.replace(',', '+')}" if self.modalities else "")
    return os.path.join("runs", self.dataset, name, f"seed{self.seed}")

  @property
  def options(self):
    """This run's method options (None for a method without any)."""
    group = REGISTRY[self.method].group
    return getattr(self, group) if group else None

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


GROUPS = tuple(f.name for f in dataclasses.fields(Config) if f.metadata.get("group"))

# Per-dataset defaults: the paper's settings where the paper has them ("group.name" keys set a
# method's option).
PRESETS: dict[str, dict[str, Any]] = {
    # our data: chosen on the validation split (docs/RESULTS.md), sized for a 2-core CPU
    "synthetic": {"epochs": 20, "learning_rate": 0.01, "lr_step_epochs": 15,
                  "encoder": "small_cnn", "width": 12, "gblending.super_epoch": 5,
                  "gblending.trial_epochs": 2},
    "avmnist": {"epochs": 20, "learning_rate": 0.01, "lr_step_epochs": 15,
                "encoder": "small_cnn", "width": 8, "stem_stride": 2, "agm.alpha": 2.5,
                "gblending.super_epoch": 5, "gblending.trial_epochs": 2},
    "cremad": {"epochs": 50, "learning_rate": 0.002, "encoder": "resnet18", "width": 64,
               "ogm_ge.alpha": 0.8},
    "kinetics_sounds": {"epochs": 50, "learning_rate": 0.002, "encoder": "resnet18", "width": 64},
    "mosi": {"epochs": 30, "learning_rate": 1e-3, "encoder": "transformer", "width": 64,
             "batch_size": 32},
}
# Tiny shapes for tests and CPU smoke runs (--tiny).
TINY: dict[str, Any] = {"epochs": 3, "width": 4, "batch_size": 16, "eval_batch_size": 64,
                        "gblending.super_epoch": 2, "gblending.trial_epochs": 1}

# What --resume may change: everything else must match the checkpointed run.
RESUMABLE_CHANGES = ("epochs", "resume", "overwrite", "workdir", "eval_batch_size",
                     "skip_nonfinite", "data_dir")


def _split_overrides(values: dict[str, Any]) -> tuple[dict, dict[str, dict]]:
  top, groups = {}, {}
  for key, value in values.items():
    group, _, name = key.rpartition(".")
    if group:
      if group not in GROUPS:
        raise ValueError(f"unknown option group {group!r} in {key!r}")
      groups.setdefault(group, {})[name] = value
    elif key in GROUPS and isinstance(value, dict):
      groups.setdefault(key, {}).update(value)
    else:
      top[key] = value
  return top, groups


def preset_values(dataset: str, tiny: bool = False) -> dict[str, Any]:
  """The flat ("group.name" for options) values a dataset preset (and --tiny) set."""
  values = dict(PRESETS.get(dataset, {}))
  if tiny:
    values.update(TINY)
  return values


def make_config(dataset: str = "synthetic", tiny: bool = False, **overrides) -> Config:
  """Config = defaults < dataset preset < (tiny) < overrides. Option-group values are given
  as ``agm={"alpha": 2.0}`` or, flat, ``**{"agm.alpha": 2.0}``."""
  top, groups = _split_overrides({**preset_values(dataset, tiny), **overrides})
  known = {f.name for f in dataclasses.fields(Config)}
  unknown = sorted(set(top) - known)
  if unknown:
    raise ValueError(f"unknown setting(s): {', '.join(unknown)}")
  options = {}
  for g, values in groups.items():
    cls = type(getattr(Config, "__dataclass_fields__")[g].default_factory())
    names = {f.name for f in dataclasses.fields(cls)}
    bad = sorted(set(values) - names)
    if bad:
      raise ValueError(f"unknown option(s) {', '.join(f'{g}.{b}' for b in bad)}")
    options[g] = cls(**values)
  return Config(dataset=dataset, **top, **options)


def from_dict(values: dict) -> Config:
  """The Config a ``to_dict`` (a summary's or checkpoint's ``config``) was made from; keys this
  version does not know are refused."""
  values = dict(values)
  dataset = values.pop("dataset", "synthetic")
  groups = {g: values.pop(g) for g in GROUPS if isinstance(values.get(g), dict)}
  return make_config(dataset, **values, **groups)


def config_differences(old: Config, new: Config, allowed=RESUMABLE_CHANGES) -> list[str]:
  """Flag names whose values differ between two configs, outside ``allowed``."""
  a, b = _flatten(old.to_dict()), _flatten(new.to_dict())
  return [f"--{k}={a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
          if a.get(k) != b.get(k) and k not in allowed]


def _flatten(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[prefix + k] = v
  return out


# ---------------------------------------------------------------- the command line


def parse_bool(text: str) -> bool:
  t = text.strip().lower()
  if t in ("true", "1", "yes"):
    return True
  if t in ("false", "0", "no"):
    return False
  raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _value_type(annotation):
  """int/float/str/bool from a field's annotation (``int | None`` -> int)."""
  hint = annotation if not isinstance(annotation, str) else eval(  # noqa: S307
      annotation, {"float": float, "int": int, "str": str, "bool": bool, "None": None})
  if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
    hint = next(a for a in typing.get_args(hint) if a is not type(None))
  return hint


def _typed(kind, flag: str):
  def convert(text: str):
    if kind is bool:
      return parse_bool(text)
    try:
      return kind(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"{flag} expects {kind.__name__}, got {text!r}") from None
  convert.__name__ = kind.__name__
  return convert


def _add_fields(parser, cls, prefix: str, shown: dict[str, Any]):
  for f in dataclasses.fields(cls):
    if f.metadata.get("group"):
      continue
    name = prefix + f.name
    kind = _value_type(f.type)
    default = shown.get(name, f.default)
    meta = f.metadata
    text = meta.get("help", "")
    if meta.get("choices"):
      text += f" {{{', '.join(map(str, meta['choices']))}}}"
    text += f" (default: {default})" if default not in ("", None) else ""
    kwargs = dict(dest=name, type=_typed(kind, "--" + name), default=None, help=text,
                  metavar=kind.__name__.upper())
    if kind is bool:  # --flag alone means true; --flag=false
      kwargs.update(nargs="?", const=True, metavar="true|false")
    parser.add_argument(f"--{name}", **kwargs)


def _peek(argv: Sequence[str], name: str) -> str | None:
  for a in argv:
    if a.startswith(f"--{name}="):
      return a.split("=", 1)[1]
  return None


def make_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
  """The strict parser; its help shows the defaults resolved for ``--dataset`` in ``argv``."""
  dataset = _peek(argv, "dataset") or "synthetic"
  shown = preset_values(dataset if dataset in DATASETS else "synthetic", "--tiny" in argv)
  shown["dataset"] = dataset
  parser = argparse.ArgumentParser(
      prog="python -m experiments.run", allow_abbrev=False,
      usage="python -m experiments.run [--name=value ...]   (--help lists them)",
      description="Train a multimodal model with InfoReg or a baseline; writes metrics.jsonl, "
      "summary.json, plots, TensorBoard events and checkpoints into --workdir. Defaults shown "
      f"for --dataset={dataset}.",
      epilog="Methods: " + "; ".join(f"{n}: {e.doc}" for n, e in REGISTRY.items()))
  _add_fields(parser, Config, "", shown)
  parser.add_argument("--tiny", action="store_true", help="tiny shapes for a CPU smoke run")
  parser.add_argument("--flagfile", metavar="FILE",
                      help="read flags from FILE, one --name=value a line (# comments)")
  for group in GROUPS:
    cls = type(Config.__dataclass_fields__[group].default_factory())
    g = parser.add_argument_group(f"{group} options ({REGISTRY[group].doc if group in REGISTRY else group})")
    _add_fields(g, cls, group + ".", shown)
  dist = parser.add_argument_group("multi-host (jax.distributed.initialize)")
  dist.add_argument("--distributed", action="store_true",
                    help="initialise jax.distributed (auto-detects SLURM, TPU, ... when the "
                    "three flags below are not given)")
  dist.add_argument("--coordinator_address", default=None, help="host:port of process 0")
  dist.add_argument("--num_processes", type=_typed(int, "--num_processes"), default=None)
  dist.add_argument("--process_id", type=_typed(int, "--process_id"), default=None)
  return parser


def _expand_flagfiles(argv: list[str], parser) -> list[str]:
  out = []
  for a in argv:
    if a.startswith("--flagfile="):
      path = a.split("=", 1)[1]
      try:
        with open(path) as f:
          lines = [l.split("#", 1)[0].strip() for l in f]
      except OSError as e:
        parser.error(f"--flagfile={path}: {e.strerror}")
      out += _expand_flagfiles([l for l in lines if l], parser)
    else:
      out.append(a)
  return out


def parse_flags(argv: Sequence[str] | None = None) -> tuple[Config, argparse.Namespace]:
  """Config from ``--name=value`` flags (plus ``--tiny`` and the multi-host flags)."""
  argv = list(sys.argv[1:] if argv is None else argv)
  parser = make_parser(argv)
  argv = _expand_flagfiles(argv, parser)
  parser = make_parser(argv)
  args = parser.parse_args(argv)
  names = [f.name for f in dataclasses.fields(Config) if not f.metadata.get("group")]
  names += [f"{g}.{f.name}" for g in GROUPS
            for f in dataclasses.fields(type(getattr(Config(), g)))]
  overrides = {n: getattr(args, n) for n in names
               if getattr(args, n) is not None and n != "dataset"}
  try:
    cfg = make_config(args.dataset or "synthetic", tiny=args.tiny, **overrides)
  except ValueError as e:
    parser.error(str(e))
  return cfg, args
