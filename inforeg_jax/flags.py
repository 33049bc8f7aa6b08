"""The command line: strict flags, flagfiles and config files into one run's or a population's
Configs.

The flags are strict: no abbreviations, booleans only as true/false (1/0, yes/no), finite
numbers, every value checked before anything is built, every error one ``error:`` line (exit
status 2). ``--flagfile=FILE`` reads flags from a file; ``--config=FILE`` a Python config file
(`inforeg_jax.config_file`: ``config = dict(...)`` or ``get_config()`` returning an
``ml_collections.ConfigDict``; the dataset presets are ``experiments/configs/<dataset>.py``),
held to the flags' rules, whose settings ``--config.<name>=value`` overrides. Values resolve
as defaults < dataset preset < ``--tiny`` < the config file < flags. Refused at once, each with
one line: two flags for one setting that disagree (``--seed`` and ``--seeds``, ``--epochs`` and
``--config.epochs``), ``--resume`` with ``--overwrite``, and a ``--resume`` whose members'
folders are laid out otherwise than the runs on disk (`workdir.check_resume_layout`).

A population: the settings marked ``member`` (`config.member_fields`) take lists of two or
more distinct values (``--seeds=0,1,2``, ``--learning_rate=0.003,0.01``, or a list in a config
file); the product of the lists is the members, each one exactly the run it names, in
``<workdir>/[<setting>/]seed<k>`` (`parse_members`). JAX-free, so ``--help`` is immediate.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import os
import sys
from typing import Any, Sequence

from inforeg_jax import methods, workdir as workdir_lib
from inforeg_jax import datasets
from inforeg_jax.config import (Config, check_value, make_config, member_fields, preset_values,
                                setting_fields, setting_name, value_type)
from inforeg_jax.config_file import read_config_file


def parse_bool(text: str) -> bool:
  t = text.strip().lower()
  if t in ("true", "1", "yes"):
    return True
  if t in ("false", "0", "no"):
    return False
  raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _listed(flag: str) -> str:
  return (f"{flag} takes one value: it changes the program (only "
          + ", ".join("--" + n for n in member_fields()) + " take lists)")


def _typed(kind, flag: str, member: bool = False):
  def one(text: str):
    if kind is bool:
      return parse_bool(text)
    try:
      value = kind(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"{flag} expects {kind.__name__}, got {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
      raise argparse.ArgumentTypeError(f"{flag} must be a finite number, got {text!r}")
    return value

  def convert(text: str):
    if member and "," in text:
      parts = [t for t in text.split(",") if t.strip()]
      if len(parts) == 1:
        raise argparse.ArgumentTypeError(
            f"{flag}={text} lists one value: one run is {flag}={parts[0].strip()}, a "
            "population lists two or more")
      if len(parts) < len(text.split(",")):
        raise argparse.ArgumentTypeError(f"{flag}={text} has an empty value in its list")
      values = [one(t) for t in parts]
      if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"{flag} lists a value twice: {text!r}")
      return values
    if "," in text and kind is not str:
      raise argparse.ArgumentTypeError(_listed(flag))
    return one(text)

  convert.__name__ = kind.__name__
  return convert


def _add_fields(parser, cls, prefix: str, shown: dict[str, Any], dest_prefix: str = "",
                hidden: bool = False):
  for f in dataclasses.fields(cls):
    if f.name == "options":
      continue
    name = prefix + f.name
    kind = value_type(f)
    default = shown.get(name, f.default)
    meta = f.metadata
    text = meta.get("help", "")
    if name == "method":
      text += f" {{{', '.join(methods.names())}}}"
    if name == "dataset":
      text += f" {{{', '.join(datasets.names())}}}"
    if meta.get("choices"):
      text += f" {{{', '.join(map(str, meta['choices']))}}}"
    if meta.get("member"):
      text += " [list: one member each]"
    text += f" (default: {default})" if default not in ("", None) else ""
    flag = f"--{dest_prefix}{name}"
    kwargs = dict(dest=dest_prefix + name, type=_typed(kind, flag, meta.get("member", False)),
                  default=None, help=argparse.SUPPRESS if hidden else text,
                  metavar=kind.__name__.upper())
    if kind is bool:  # --flag alone means true; --flag=false
      kwargs.update(nargs="?", const=True, metavar="true|false")
    parser.add_argument(flag, **kwargs)


def _peek(argv: Sequence[str], name: str) -> str | None:
  for a in argv:
    if a.startswith(f"--{name}="):
      return a.split("=", 1)[1]
  return None


def make_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
  """The strict parser; its help shows the defaults resolved for ``--dataset`` in ``argv``."""
  dataset = _peek(argv, "dataset") or "synthetic"
  shown = preset_values(dataset if dataset in datasets.REGISTRY else "synthetic",
                        "--tiny" in argv)
  shown["dataset"] = dataset
  parser = argparse.ArgumentParser(
      prog="python -m experiments.run", allow_abbrev=False,
      usage="python -m experiments.run [--name=value ...]   (--help lists them)",
      description="Train a multimodal model with InfoReg or a baseline; writes metrics.jsonl, "
      "summary.json, plots, TensorBoard events, log.txt and checkpoints into --workdir. "
      "Flags marked [list] take comma-separated values: the product of the lists is a "
      "population trained in one program, each member into its own workdir. Defaults shown "
      f"for --dataset={dataset}.",
      epilog="Methods: " + "; ".join(f"{n}: {e.doc}" for n, e in methods.REGISTRY.items()))
  _add_fields(parser, Config, "", shown)
  parser.add_argument("--seeds", dest="seeds", type=_typed(int, "--seeds", True), default=None,
                      metavar="INT,INT,...", help="the same as --seed (a list of seeds)")
  parser.add_argument("--tiny", action="store_true", help="tiny shapes for a CPU smoke run")
  parser.add_argument("--flagfile", metavar="FILE",
                      help="read flags from FILE, one --name=value a line (# comments)")
  parser.add_argument("--config", metavar="FILE",
                      help="a Python config file: `config = dict(name=value, ...)` (flat names, "
                      "e.g. 'agm.alpha'), or `get_config()` returning an ml_collections "
                      "ConfigDict (the [train] extra; the dataset presets are "
                      "experiments/configs/<dataset>.py); --config.<name>=value overrides one "
                      "of its settings, flags override it; checked as flags are; stored in "
                      "the workdir as config.py")
  for group, cls in methods.groups().items():
    docs = [n for n, e in methods.REGISTRY.items() if e.group == group]
    g = parser.add_argument_group(f"{group} options (--method={'|'.join(docs)})")
    _add_fields(g, cls, group + ".", shown)
  _add_fields(parser, Config, "", shown, dest_prefix="config.", hidden=True)
  for group, cls in methods.groups().items():
    _add_fields(parser, cls, group + ".", shown, dest_prefix="config.", hidden=True)
  dist = parser.add_argument_group("multi-host (jax.distributed.initialize)")
  dist.add_argument("--distributed", action="store_true",
                    help="initialise jax.distributed (auto-detects SLURM, TPU, ... when the "
                    "three flags below are not given)")
  dist.add_argument("--coordinator_address", default=None, help="host:port of process 0")
  dist.add_argument("--num_processes", type=_typed(int, "--num_processes"), default=None)
  dist.add_argument("--process_id", type=_typed(int, "--process_id"), default=None)
  return parser


def _expand_flagfiles(argv: list[str], parser, seen: tuple[str, ...] = ()) -> list[str]:
  out = []
  for a in argv:
    if a.startswith("--flagfile="):
      path = a.split("=", 1)[1]
      real = os.path.realpath(path)
      if real in seen:
        parser.error(f"--flagfile={path} includes itself (through {' -> '.join(seen)})")
      try:
        with open(path, "rb") as f:
          text = f.read().decode("utf-8")
      except OSError as e:
        parser.error(f"--flagfile={path}: {e.strerror}")
      except UnicodeDecodeError:
        parser.error(f"--flagfile={path} is not a text file of flags")
      lines = [line.split("#", 1)[0].strip() for line in text.splitlines()]
      out += _expand_flagfiles([line for line in lines if line], parser, seen + (real,))
    else:
      out.append(a)
  return out


# ---------------------------------------------------------------- from argv to values


def _show(value) -> str:
  if isinstance(value, list):
    return ",".join(map(_show, value))
  return str(value).lower() if isinstance(value, bool) else str(value)


def _flag_values(parser, args) -> dict[str, Any]:
  """The settings the command line gives: ``--name``, ``--config.name`` and ``--seeds``, two
  of them for one setting only when they agree; each checked as `config.check_value` does."""
  known = setting_fields()
  out = {}
  for name, field in known.items():
    given = [(f"--{name}", getattr(args, name)),
             (f"--config.{name}", getattr(args, f"config.{name}"))]
    if name == "seed":
      given.insert(1, ("--seeds", args.seeds))
    given = [(flag, v) for flag, v in given if v is not None]
    for (flag, v), (other, w) in zip(given, given[1:]):
      if v != w:
        parser.error(f"{flag}={_show(v)} and {other}={_show(w)} contradict each other: give one")
    if not given:
      continue
    flag, value = given[0]
    if flag.startswith("--config.") and not args.config:
      parser.error(f"{flag} overrides a setting of --config=FILE, and no --config is given: "
                   f"give --config, or --{name}")
    try:
      for v in value if isinstance(value, list) else [value]:
        if name == "method" and v not in methods.REGISTRY:
          raise ValueError(f"{flag} must be one of {', '.join(methods.names())}; got {v!r}")
        if name == "dataset" and v not in datasets.REGISTRY:
          raise ValueError(f"{flag} must be one of {', '.join(datasets.names())}; got {v!r}")
        check_value(field.metadata, flag, v)
    except ValueError as e:
      parser.error(str(e))
    out[name] = value
  return out


def _arguments(argv: Sequence[str] | None):
  argv = list(sys.argv[1:] if argv is None else argv)
  parser = make_parser(argv)
  argv = _expand_flagfiles(argv, parser)
  parser = make_parser(argv)
  args = parser.parse_args(argv)
  configs = [a.split("=", 1)[1] if a.startswith("--config=") else b
             for a, b in zip(argv, argv[1:] + [""]) if a.startswith("--config=") or a == "--config"]
  if len({os.path.realpath(c) for c in configs}) > 1:  # argparse would keep the last alone
    parser.error(f"--config is given {len(configs)} times ({', '.join(configs)}): a run reads "
                 "one config file (they are not merged): give one")
  if args.config == "":
    parser.error("--config= names no file: give --config=FILE, or leave --config out")
  flagged = _flag_values(parser, args)
  values = {}
  if args.config:
    try:
      values = read_config_file(args.config)
    except ValueError as e:
      parser.error(str(e))
  values.update(flagged)
  group = methods.REGISTRY[values.get("method", Config.method)].group
  for name in values:
    if args.config and name not in flagged and "." in name and name.split(".")[0] != group:
      parser.error(f"--config={args.config}: {name} is an option of another method than "
                   f"--method={values.get('method', Config.method)}: leave it out, or choose "
                   "that method")
  if values.get("resume") and values.get("overwrite"):
    parser.error("--resume and --overwrite exclude each other: --resume continues the run in "
                 "--workdir, --overwrite replaces it")
  dataset = values.pop("dataset", None) or "synthetic"
  return parser, args, dataset, values


# ---------------------------------------------------------------- members of a population


def parse_members(argv: Sequence[str] | None = None) -> tuple[list[Config], argparse.Namespace]:
  """The members a command line names: one Config per combination of the list-valued flags
  (the seeds last), each in its own workdir; one Config when no flag is a list."""
  parser, args, dataset, values = _arguments(argv)
  lists = {k: v for k, v in values.items() if isinstance(v, list) and k != "seed"}
  varying = list(lists)
  if isinstance(values.get("seed"), list):
    lists["seed"] = values["seed"]  # the seeds vary fastest
  base = values.get("workdir") or ""
  if not base:
    mods = values.get("modalities") or ""
    base = os.path.join("runs", dataset, values.get("method", Config.method)
                        + (f"-{mods.replace(',', '+')}" if mods else ""))
  members = []
  for combo in itertools.product(*lists.values()):
    member = {**values, **dict(zip(lists, combo))}
    if lists:
      setting = setting_name({k: member[k] for k in varying}) if varying else ""
      member["workdir"] = os.path.join(base, setting, f"seed{member.get('seed', 0)}")
    try:
      members.append(make_config(dataset, tiny=args.tiny, **member))
    except ValueError as e:
      parser.error(str(e))
  if values.get("resume"):  # the layout of the members' folders against the one on disk
    layout = tuple(sorted(varying)) if lists or not values.get("workdir") else "itself"
    try:
      workdir_lib.check_resume_layout([c.resolved_workdir for c in members], base, layout)
    except workdir_lib.RunError as e:
      parser.error(str(e))
  return members, args


def parse_flags(argv: Sequence[str] | None = None) -> tuple[Config, argparse.Namespace]:
  """Config from ``--name=value`` flags (plus ``--tiny``, ``--config`` and the multi-host
  flags); a list-valued flag is refused (`parse_members` takes them)."""
  parser, args, dataset, values = _arguments(argv)
  lists = [k for k, v in values.items() if isinstance(v, list)]
  if lists:
    parser.error(f"--{lists[0]} is a list here: one run takes one value (python -m "
                 "experiments.run trains a list as a population)")
  try:
    cfg = make_config(dataset, tiny=args.tiny, **values)
  except ValueError as e:
    parser.error(str(e))
  return cfg, args
