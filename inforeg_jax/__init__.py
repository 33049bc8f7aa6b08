"""inforeg-jax: InfoReg (CVPR 2025) and balanced multimodal learning in JAX/Flax.

The public API is imported on first use, so that the CLI's ``--help`` starts without JAX.
"""

import importlib

__version__ = "0.2.0"

_PUBLIC = {
    "inforeg_transform": "inforeg_jax.regulation",
    "inforeg_diagnostics": "inforeg_jax.regulation",
    "find_inforeg_state": "inforeg_jax.regulation",
    "InfoRegState": "inforeg_jax.regulation",
    "track_window": "inforeg_jax.window",
    "TraceWindow": "inforeg_jax.window",
}
__all__ = list(_PUBLIC)


def __getattr__(name):
  if name in _PUBLIC:
    return getattr(importlib.import_module(_PUBLIC[name]), name)
  raise AttributeError(f"module 'inforeg_jax' has no attribute {name!r}")


def __dir__():
  return sorted(set(globals()) | set(_PUBLIC))
