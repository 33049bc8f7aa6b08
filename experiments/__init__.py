"""The commands: ``run`` trains, the others (sweep, results, table, analyze, bench) drive
or read its runs."""

from __future__ import annotations

import sys
from typing import Callable


def cli(main: Callable[[], int | None]) -> None:
  """Runs a side command's ``main``: an ``error:`` line it raises (``SystemExit(str)``) is
  printed alone and ends with exit status 2, as ``experiments.run`` ends for bad input."""
  try:
    code = main()
  except SystemExit as e:
    if not isinstance(e.code, str):
      raise
    print(e.code, file=sys.stderr)
    code = 2
  sys.exit(code)
