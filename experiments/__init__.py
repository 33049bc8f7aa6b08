"""The commands: ``run`` trains, the others (sweep, results, table, analyze, bench) drive
or read its runs."""

from __future__ import annotations

import errno
import os
import sys
from typing import Callable


def os_error_line(e: OSError) -> str:
  """An OS error (a full disk, an unwritable folder, a file where a folder belongs) as one
  ``error:`` line naming the path."""
  if e.errno in (errno.EEXIST, errno.ENOTDIR) and e.filename:
    path = os.path.abspath(e.filename)  # the file standing where a folder is wanted
    while path != os.path.dirname(path) and not os.path.isfile(path):
      path = os.path.dirname(path)
    if os.path.isfile(path):
      wanted = "" if path == os.path.abspath(e.filename) else f" (for {e.filename})"
      return (f"error: {path} is a file where a folder is wanted{wanted}: move it aside, or "
              "choose another path")
  where = f": {e.filename}" if e.filename else ""
  return f"error: {e.strerror or e}{where}"


def cli(main: Callable[[], int | None]) -> None:
  """Runs a side command's ``main``: an ``error:`` line it raises (``SystemExit(str)``) is
  printed alone and ends with exit status 2, as ``experiments.run`` ends for bad input; so
  is an OS error that reaches it (its output folder unwritable, a full disk, ...)."""
  try:
    code = main()
  except SystemExit as e:
    if not isinstance(e.code, str):
      raise
    print(e.code, file=sys.stderr)
    code = 2
  except OSError as e:
    print(os_error_line(e), file=sys.stderr)
    code = 2
  sys.exit(code)
