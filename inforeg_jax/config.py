"""Experiment configuration: one frozen dataclass, per-dataset presets, members.

``Config`` holds one run's settings; the run's method's options are ``cfg.options`` (flags
``--<group>.<name>``, e.g. ``--agm.alpha``), their dataclass registered with the method
(`inforeg_jax.methods`), so groups, flags and ``--help`` follow the registry. Values resolve as
defaults < dataset preset < ``--tiny`` < overrides (`make_config`); every plain value is
checked (choices, bounds, finiteness: `check_value`) when a Config is made, and an option of
another method than the one run is refused. The command line that fills the overrides is
`inforeg_jax.flags`.

A population: the hyperparameters marked ``member`` (the seed, the optimizer's numbers, K,
each method's key coefficient, `member_fields`) may vary across its members, each one exactly
the run it names. This module imports no JAX, so ``--help`` is immediate.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from typing import Any

from inforeg_jax import datasets, methods
from inforeg_jax.methods.options import option

WINDOWS = ("auto", "prime", "whole", "other")
MAX_SEED = 2**31 - 1  # the seed becomes an int32 PRNG key inside the step


@dataclasses.dataclass(frozen=True)
class Config:
  """One run. Help texts are the CLI's (``python -m experiments.run --help``)."""

  dataset: str = option("synthetic", "the data (inforeg_jax/datasets): synthetic is built in; "
                        "the others are read from --data_dir, prepared by python -m "
                        "data_prep.<dataset>")
  method: str = option(methods.DEFAULT, "the balancing method (README, Methods)")
  epochs: int = option(30, "training epochs", minimum=1)
  seed: int = option(0, "seed of the initialisation, data order and augmentation (a list: one "
                     "member per seed; --seeds is the same flag)", minimum=0, maximum=MAX_SEED,
                     member=True)
  batch_size: int = option(64, "global training batch size", minimum=1)
  eval_batch_size: int = option(256, "global evaluation batch size", minimum=1)
  learning_rate: float = option(0.002, "SGD learning rate (released code: 0.002)", minimum=0,
                                member=True)
  momentum: float = option(0.9, "SGD momentum", minimum=0, member=True)
  weight_decay: float = option(1e-4, "weight decay, added to the gradient", minimum=0,
                               member=True)
  lr_step_epochs: int = option(30, "StepLR: the rate is multiplied by --lr_decay every this "
                               "many epochs (released code: 30)", minimum=1)
  lr_decay: float = option(0.1, "StepLR factor", minimum=0)
  window: str = option("auto", "when a modulating method adjusts (Table 4): inside the prime "
                       "learning window (Eq. 11), over the whole run, or only in the other "
                       "periods; auto: prime for InfoReg, whole for the baselines",
                       choices=WINDOWS)
  threshold: float | None = option(None, "K of Eq. 11, the prime-learning-window threshold "
                                   "(default 0.04, paper Sec. 4.7; 0.05 for --inforeg.variant="
                                   "official)", minimum=0, member=True)
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
                        "seed<seed>; a population's members go to <workdir>/[<setting>/]"
                        "seed<seed>)")
  limit_train: int = option(0, "train on the first N examples only (0: all)", minimum=0)
  resume: bool = option(False, "continue the run in --workdir from its latest checkpoint")
  overwrite: bool = option(False, "replace the run in --workdir (kept aside until the new run "
                           "has saved its first epoch)")
  checkpoint_every: int = option(1, "save a checkpoint after every this many epochs (and the "
                                 "last); a resumed run repeats at most this many, exactly",
                                 minimum=1)
  steps_per_call: int = option(4, "training steps in one compiled call (an unrolled loop): "
                               "fewer host round trips, a compile that many times longer; at "
                               "most 32 MB of batches a call", minimum=1)
  plots: bool = option(True, "write accuracy.png, trace.png and alpha.png into the workdir (at "
                       "the end, and at most every 30 s while training)")
  execution: str = option("auto", "how a population's members run: sequential (one after "
                          "another, each member bit for bit its single run) or vectorised "
                          "(jax.vmap over the members, faster on accelerators); auto: "
                          "sequential on the CPU, vectorised elsewhere",
                          choices=("auto", "sequential", "vectorised"))
  skip_nonfinite: bool = option(False, "skip (and count) steps with a non-finite loss or Tr(F) "
                                "instead of stopping the run (it stops all the same when more "
                                "than a tenth of an epoch's steps are skipped)")
  options: Any = None  # the method's options (`methods.Entry.options`), flags --<group>.<name>

  def __post_init__(self):
    datasets.get(self.dataset)  # a registered dataset (ValueError naming them)
    if self.method not in methods.REGISTRY:
      raise ValueError(f"--method must be one of {', '.join(methods.names())}; got "
                       f"{self.method!r}")
    entry = methods.REGISTRY[self.method]
    if entry.options is None:
      if self.options is not None:
        raise ValueError(f"--method={self.method} has no options")
    elif self.options is None:
      object.__setattr__(self, "options", entry.options())
    elif not isinstance(self.options, entry.options):
      raise ValueError(f"--method={self.method} takes {entry.options.__name__}, got "
                       f"{type(self.options).__name__}")
    _check_fields(self, "")
    if self.options is not None:
      _check_fields(self.options, entry.group + ".")
    if self.dataset == "synthetic" and self.data_dir:
      raise ValueError("--data_dir: the synthetic dataset is built in and reads no data "
                       "(leave --data_dir out, or choose a prepared --dataset)")
    if hasattr(self.options, "check"):
      self.options.check(self)

  def __getattr__(self, name: str):
    """``cfg.<group>``: the run's method's options under its flag prefix (``cfg.agm.alpha``)."""
    if name.startswith("_") or "method" not in self.__dict__:
      raise AttributeError(name)
    if name == self.group:
      return self.options
    if name in methods.groups():
      raise AttributeError(f"--{name}.* are options of another method than "
                           f"--method={self.method}")
    raise AttributeError(name)

  @property
  def group(self) -> str | None:
    """The flag prefix of the method's options (None for a method without any)."""
    return methods.REGISTRY[self.method].group

  @property
  def resolved_window(self) -> str:
    return methods.REGISTRY[self.method].default_window if self.window == "auto" else self.window

  @property
  def resolved_threshold(self):
    """K of Eq. 11: --threshold, else the method's default (`regulation.default_threshold`,
    the one place K's default is decided: 0.04, or 0.05 for --inforeg.variant=official)."""
    if self.threshold is not None:
      return self.threshold
    if hasattr(self.options, "default_threshold"):
      return self.options.default_threshold()
    from inforeg_jax.regulation import default_threshold  # JAX: not at import
    return default_threshold()

  @property
  def resolved_data_dir(self) -> str:
    return self.data_dir or os.path.join("data", self.dataset)

  @property
  def resolved_workdir(self) -> str:
    if self.workdir:
      return self.workdir
    name = self.method + (f"-{self.modalities.replace(',', '+')}" if self.modalities else "")
    return os.path.join("runs", self.dataset, name, f"seed{self.seed}")

  def to_dict(self) -> dict:
    """The settings as JSON: the method's options under its group (``{"agm": {...}}``)."""
    out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "options"}
    if self.options is not None:
      out[self.group] = dataclasses.asdict(self.options)
    return out


def _plain(value) -> bool:
  return value is None or isinstance(value, (bool, int, float, str))


def check_value(meta, flag: str, value) -> None:
  """A plain value against its field's metadata (``option``'s choices and bounds) and
  finiteness; ValueError naming ``flag`` (``--epochs``, or a config file's setting)."""
  if meta.get("choices") and value not in meta["choices"]:
    raise ValueError(f"{flag} must be one of {', '.join(map(str, meta['choices']))}; got "
                     f"{value!r}")
  if isinstance(value, float) and not math.isfinite(value):
    raise ValueError(f"{flag} must be a finite number; got {value!r}")
  if meta.get("minimum") is not None and value < meta["minimum"]:
    raise ValueError(f"{flag} must be >= {meta['minimum']}; got {value!r}")
  if meta.get("maximum") is not None and value > meta["maximum"]:
    raise ValueError(f"{flag} must be <= {meta['maximum']}; got {value!r}")


def _check_fields(obj, prefix: str) -> None:
  """`check_value` on each plain value (a traced member value inside the step was checked as
  a plain value when the population was made)."""
  for f in dataclasses.fields(obj):
    value = getattr(obj, f.name)
    if f.name == "options" or not _plain(value) or value is None:
      continue
    check_value(f.metadata, f"--{prefix}{f.name}", value)


# Tiny shapes for tests and CPU smoke runs (--tiny); a method's own: ``dataset_defaults["tiny"]``.
TINY: dict[str, Any] = {"epochs": 3, "width": 4, "batch_size": 16, "eval_batch_size": 64,
                        "steps_per_call": 1}

# What --resume may change: everything else must match the checkpointed run.
RESUMABLE_CHANGES = ("epochs", "resume", "overwrite", "workdir", "eval_batch_size",
                     "skip_nonfinite", "data_dir", "checkpoint_every", "plots")


def preset_values(dataset: str, tiny: bool = False) -> dict[str, Any]:
  """The flat ("group.name" for options) values a dataset preset (and --tiny) set, the
  methods' own per-dataset defaults included."""
  values = dict(datasets.REGISTRY[dataset].preset) if dataset in datasets.REGISTRY else {}
  for group, cls in methods.groups().items():
    for key in (dataset, "tiny") if tiny else (dataset,):
      for name, value in getattr(cls, "dataset_defaults", {}).get(key, {}).items():
        values[f"{group}.{name}"] = value
  if tiny:
    values.update(TINY)
  return values


def _split_groups(values: dict[str, Any]) -> tuple[dict, dict[str, dict]]:
  top, grouped = {}, {}
  for key, value in values.items():
    group, _, name = key.rpartition(".")
    if group:
      grouped.setdefault(group, {})[name] = value
    elif key in methods.groups() and isinstance(value, dict):
      grouped.setdefault(key, {}).update(value)
    else:
      top[key] = value
  return top, grouped


def make_config(dataset: str = "synthetic", tiny: bool = False, **overrides) -> Config:
  """Config = defaults < dataset preset < (tiny) < overrides. The method's options are given
  as ``agm={"alpha": 2.0}`` or, flat, ``**{"agm.alpha": 2.0}``; an option of another method
  is refused (a preset's are dropped)."""
  method = overrides.get("method", Config.method)
  group = methods.REGISTRY[method].group if method in methods.REGISTRY else None
  preset_top, preset_groups = _split_groups(preset_values(dataset, tiny))
  top, grouped = _split_groups(overrides)
  for g, values in grouped.items():
    if g not in methods.groups():
      raise ValueError(f"unknown option group {g!r} in "
                       + ", ".join(f"--{g}.{k}" for k in values))
    if g != group:
      raise ValueError(f"--{g}.{next(iter(values))} is an option of another method than "
                       f"--method={method}: leave it out, or choose that method")
  known = {f.name for f in dataclasses.fields(Config)} - {"options"}
  unknown = sorted(set(top) - known)
  if unknown:
    raise ValueError(f"unknown setting(s): {', '.join(unknown)}")
  options = None
  if group is not None:
    cls = methods.REGISTRY[method].options
    values = {**preset_groups.get(group, {}), **grouped.get(group, {})}
    names = {f.name for f in dataclasses.fields(cls)}
    bad = sorted(set(values) - names)
    if bad:
      raise ValueError(f"unknown option(s) {', '.join(f'--{group}.{b}' for b in bad)}")
    options = cls(**values)
  return Config(dataset=dataset, **{**preset_top, **top}, options=options)


def from_dict(values: dict) -> Config:
  """The Config a ``to_dict`` (a summary's or checkpoint's ``config``) was made from; keys this
  version does not know are refused, option groups of other methods dropped."""
  values = dict(values)
  dataset = values.pop("dataset", "synthetic")
  method = values.get("method", Config.method)
  group = methods.REGISTRY[method].group if method in methods.REGISTRY else None
  for g in list(values):
    if isinstance(values[g], dict) and g != group:
      del values[g]
  return make_config(dataset, **values)


def config_differences(old: Config, new: Config, allowed=RESUMABLE_CHANGES) -> list[str]:
  """Flag names whose values differ between two configs, outside ``allowed`` (of another
  method, only --method: the option groups are each method's own)."""
  a, b = flatten(old.to_dict()), flatten(new.to_dict())
  if old.method != new.method:
    a = {k: v for k, v in a.items() if "." not in k}
    b = {k: v for k, v in b.items() if "." not in k}
  return [f"--{k}={a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
          if a.get(k) != b.get(k) and k not in allowed]


def flatten(d: dict, prefix: str = "") -> dict:
  """A config dict's values by flag name (``{'agm': {'alpha': 1}}`` -> ``{'agm.alpha': 1}``)."""
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flatten(v, f"{prefix}{k}."))
    else:
      out[prefix + k] = v
  return out


# ---------------------------------------------------------------- members of a population


def member_fields() -> list[str]:
  """Flag names (``learning_rate``, ``agm.alpha``, ...) a population may vary."""
  names = [f.name for f in dataclasses.fields(Config) if f.metadata.get("member")]
  for group, cls in methods.groups().items():
    names += [f"{group}.{f.name}" for f in dataclasses.fields(cls) if f.metadata.get("member")]
  return names


def setting_fields() -> dict[str, dataclasses.Field]:
  """Every setting by its flag name (``epochs``, ``agm.alpha``): the Config's fields and each
  method's options."""
  out = {f.name: f for f in dataclasses.fields(Config) if f.name != "options"}
  for group, cls in methods.groups().items():
    out.update({f"{group}.{f.name}": f for f in dataclasses.fields(cls)})
  return out


def value_type(field: dataclasses.Field) -> type:
  """int/float/str/bool of a setting, from its annotation (``int | None`` -> int)."""
  hint = field.type if not isinstance(field.type, str) else eval(
      field.type, {"float": float, "int": int, "str": str, "bool": bool, "None": None,
                   "Any": str})
  if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
    hint = next(a for a in typing.get_args(hint) if a is not type(None))
  return hint


def member_values(cfg: Config) -> dict[str, Any]:
  """The member-wise values of ``cfg`` (its method's), flat names; K resolved."""
  out = {}
  for name in member_fields():
    group, _, field = name.rpartition(".")
    if group and group != cfg.group:
      continue
    out[name] = cfg.resolved_threshold if name == "threshold" else getattr(
        cfg.options if group else cfg, field)
  return out


def with_member_values(cfg: Config, values: dict[str, Any]) -> Config:
  """``cfg`` with the member-wise ``values`` put in (traced arrays inside the step: they were
  checked as plain values when the members were made)."""
  top = {k: v for k, v in values.items() if "." not in k}
  grouped = {k.split(".", 1)[1]: v for k, v in values.items() if "." in k}
  options = dataclasses.replace(cfg.options, **grouped) if grouped else cfg.options
  return dataclasses.replace(cfg, **top, options=options)


def setting_name(values: dict[str, Any]) -> str:
  """A folder name for the member-wise values that vary (``learning_rate=0.01,agm.alpha=2``)."""
  return ",".join(f"{k}={v}" for k, v in values.items()) or "default"
