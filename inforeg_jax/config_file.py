"""A Python config file (``--config=FILE``), read and held to the flags' rules.

The file defines ``config = dict(name=value, ...)`` (flat names, ``'agm.alpha'``), or, as the
Flax examples write theirs, ``get_config()`` returning an ``ml_collections.ConfigDict`` (a
method's options nested: ``config.agm.alpha``; ml_collections is in the [train] extra) or a
dict. Every value is checked as its flag would be: the same names, types (a bool only as a
bool, an int only as an int), bounds and finiteness, and lists only for the member-wise
settings, two or more distinct values, one member each. A file that raises, exits or defines
neither is an error; each error is one line naming the file and the setting. JAX-free.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
from typing import Any

from inforeg_jax import methods
from inforeg_jax.config import check_value, member_fields, setting_fields, value_type


def _scalar(label: str, field: dataclasses.Field, value):
  """A config file's value of one setting as its flag would give it: bools only as bools,
  ints as ints, floats as numbers (finite), strings as strings; None only where the setting's
  default is None. Then its choices and bounds (`config.check_value`)."""
  kind = value_type(field)
  if value is None and field.default is None:
    return None
  if kind is bool:
    ok = isinstance(value, bool)
  elif kind is int:
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    value = int(value) if ok else value
  elif kind is float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    try:
      value = float(value) if ok else value
    except OverflowError:  # an int past a float's range (10**400)
      raise ValueError(f"{label} must be a finite number; got {value}") from None
  else:
    ok = isinstance(value, str)
  if not ok:
    want = "true or false (a bool)" if kind is bool else kind.__name__
    raise ValueError(f"{label} expects {want}, got {value!r}")
  check_value(field.metadata, label, value)
  return value


def _checked(label: str, name: str, field: dataclasses.Field, value):
  """One setting of a config file held to its flag's rules (lists: member settings only,
  two or more distinct values)."""
  if isinstance(value, (list, tuple)):
    if not field.metadata.get("member"):
      raise ValueError(f"{label}={list(value)!r} is a list: {name} takes one value, it changes "
                       "the program (only " + ", ".join(member_fields()) + " take lists)")
    if len(value) == 0:
      raise ValueError(f"{label} is an empty list")
    if len(value) == 1:
      raise ValueError(f"{label}={list(value)!r} lists one value: one run is {name}="
                       f"{value[0]!r}, a population lists two or more")
    values = [_scalar(label, field, v) for v in value]
    if len(set(values)) != len(values):
      raise ValueError(f"{label} lists a value twice: {list(value)!r}")
    return values
  if name == "method" and value not in methods.REGISTRY:
    raise ValueError(f"{label} must be one of {', '.join(methods.names())}; got {value!r}")
  return _scalar(label, field, value)


def _as_dict(obj, path: str, what: str) -> dict:
  """A plain dict of a config file's ``config``/``get_config()`` (a ConfigDict: its to_dict)."""
  if type(obj).__module__.split(".")[0] == "ml_collections" and hasattr(obj, "to_dict"):
    obj = obj.to_dict()
  if not isinstance(obj, dict):
    raise ValueError(f"--config={path} must define {what} as a dict or an "
                     f"ml_collections.ConfigDict; got {type(obj).__name__}")
  return obj


def _flat(values: dict, path: str, prefix: str = "") -> dict:
  """A config's values by flag name (``{'agm': {'alpha': 1}}`` -> ``{'agm.alpha': 1}``)."""
  out = {}
  for k, v in values.items():
    if not isinstance(k, str):
      raise ValueError(f"--config={path}: setting names are strings; got {prefix}{k!r}")
    inner = _flat(v, path, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v}
    for name in inner.keys() & out.keys():  # 'agm.alpha' and {'agm': {'alpha': ...}}
      raise ValueError(f"--config={path}: {name} is given twice ({out[name]!r} and "
                       f"{inner[name]!r}): give it once")
    out.update(inner)
  return out


def _run_config_code(path: str, call):
  """``call()`` (the file's code, or its get_config), its failures as one ValueError line: an
  exception, a ``sys.exit``, a missing ml_collections."""
  try:
    return call()
  except SystemExit as e:
    raise ValueError(f"--config={path} called sys.exit({e.code!r}) while being read: a config "
                     "file only defines `config = dict(...)` or `get_config()`") from None
  except ModuleNotFoundError as e:
    if (e.name or "").split(".")[0] == "ml_collections":
      raise ValueError(f"--config={path} is an ml_collections config and ml_collections is not "
                       "installed: pip install -e '.[train]' (or write `config = dict(name="
                       "value, ...)`)") from None
    raise ValueError(f"--config={path}: ModuleNotFoundError: {e}") from None
  except SyntaxError as e:
    raise ValueError(f"--config={path}: SyntaxError: {e.msg} (line {e.lineno})") from None
  except Exception as e:
    first = (str(e).strip().splitlines() or [""])[0]
    raise ValueError(f"--config={path}: {type(e).__name__}: {first}") from None


def read_config_file(path: str) -> dict[str, Any]:
  """The settings a Python config file gives, by flag name ('agm.alpha'), each checked as its
  flag would be (a list: the member-wise values); ValueError with one line naming the file
  (and the setting) when it cannot. The file defines ``config = dict(...)`` or
  ``get_config()`` returning a dict or an ``ml_collections.ConfigDict`` (nested for a method's
  options: ``config.agm.alpha``)."""
  try:
    with open(path) as f:
      source = f.read()
  except OSError as e:
    raise ValueError(f"--config={path}: {e.strerror}") from None
  except UnicodeDecodeError:
    raise ValueError(f"--config={path} is not a Python file") from None
  scope: dict[str, Any] = {"__name__": "__config__", "__file__": os.path.abspath(path)}
  _run_config_code(path, lambda: exec(compile(source, path, "exec"), scope))
  given = scope.get("config")
  plain = isinstance(given, dict) or type(given).__module__.split(".")[0] == "ml_collections"
  if "get_config" in scope:
    if plain:
      raise ValueError(f"--config={path} defines both `config` and `get_config()`: keep one")
    if not callable(scope["get_config"]):
      raise ValueError(f"--config={path}: get_config is not a function")
    result = _run_config_code(path, scope["get_config"])
    values = _as_dict(result, path, "`get_config()`'s result")
  elif "config" in scope:
    values = _as_dict(given, path, "`config`")
  else:
    raise ValueError(f"--config={path} defines neither `config = dict(name=value, ...)` nor "
                     "`get_config()`")
  values = _flat(values, path)
  known = setting_fields()
  unknown = sorted(set(values) - set(known))
  if unknown:
    raise ValueError(f"--config={path}: unknown setting(s) {', '.join(unknown)}")
  return {k: _checked(f"--config={path}: {k}", k, known[k], v) for k, v in values.items()}
