"""orbax checkpoints behind three functions: ``manager``, ``save``, ``restore_latest``.

A checkpoint holds the train state and a JSON of the loop (history, plot series, the run's
config); the data iterator's position is the epoch (``pipeline`` orders batches by (seed,
epoch)), so restoring it resumes the same data order. Kept: the last three and the best by
``rank`` (validation accuracy); we prune ourselves after each save, because orbax's
preservation policies never delete the checkpoints that existed when a manager was opened (so
a resumed run kept them all). A checkpoint that cannot be read, or whose state does not match
the sha256 recorded beside it when it was saved (flipped bytes that the array format reads
without complaint), is skipped for the one before it, and the caller is told.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import sys
import tempfile
import time
import warnings
from typing import Callable

import jax
import numpy as np
import orbax.checkpoint as ocp

KEEP_LAST = 3


class CheckpointError(RuntimeError):
  """Checkpoints exist but none can be read."""


def manager(workdir: str) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(enable_async_checkpointing=False)
  return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")),
                               options=options, item_names=("state", "loop"))


def digest(state) -> str:
  """sha256 over the state's arrays (their bytes, shapes and dtypes, in tree order)."""
  h = hashlib.sha256()
  plain = jax.tree.map(lambda x: jax.random.key_data(x) if jax.dtypes.issubdtype(
      getattr(x, "dtype", None), jax.dtypes.prng_key) else x, state)
  for leaf in jax.tree.leaves(jax.device_get(plain)):
    a = np.ascontiguousarray(leaf)
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
  return h.hexdigest()


def save(mngr: ocp.CheckpointManager, epoch: int, state, loop: dict, best_epoch: int,
         keep_last: int | None = None) -> None:
  """Saves after ``epoch`` (``loop`` is JSON; the state's `digest` is added to it), then
  deletes every checkpoint but the last ``keep_last`` and ``best_epoch``'s."""
  loop = {**loop, "state_sha256": digest(state)}
  loop["loop_sha256"] = loop_digest(loop)
  try:
    with _thread_errors_held():
      mngr.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               loop=ocp.args.JsonSave(loop)), force=True)
      mngr.wait_until_finished()
  except Exception as e:  # a full disk, a read-only folder: an OSError naming the folder
    error = os_error(e, str(mngr.directory))
    if error is None:
      raise
    # the failed save's other writes, abandoned: asyncio would say so at exit
    logging.getLogger("asyncio").addFilter(_unretrieved_os_error)
    warnings.filterwarnings("ignore", "coroutine .* was never awaited", RuntimeWarning)
    raise error from None
  steps = sorted(mngr.all_steps())
  for step in steps[:-(keep_last or KEEP_LAST)]:
    if step != best_epoch:
      mngr.delete(step)


def os_error(e: Exception, where: str) -> OSError | None:
  """The OS error behind an orbax/tensorstore failure (they raise ValueError with
  ``[os_error_code='28']``, or an OSError without a path), naming ``where``; None when it
  is not one."""
  if isinstance(e, OSError):
    return OSError(e.errno, e.strerror or str(e), e.filename or where)
  code = re.search(r"os_error_code='?(\d+)", str(e))
  return OSError(int(code.group(1)), os.strerror(int(code.group(1))), where) if code else None


def _unretrieved_os_error(record: logging.LogRecord) -> bool:
  """False for asyncio's "exception was never retrieved" of an OS error: the futures of a
  failed save's other writes, collected later, whose error the saver has told."""
  error = record.exc_info[1] if record.exc_info else None
  return not (record.getMessage().split("\n")[0].endswith("exception was never retrieved")
              and isinstance(error, Exception) and os_error(error, "") is not None)


@contextlib.contextmanager
def _thread_errors_held():
  """What orbax's and tensorstore's threads write to stderr while a save runs (an exception
  logged with its traceback through absl before it reaches the saver; tensorstore's callbacks
  into an event loop orbax closed on the first failure): held, dropped when the save fails
  (the caller says why in one line), written out after it when it succeeds."""
  sys.stderr.flush()
  saved = os.dup(2)
  held = tempfile.TemporaryFile()
  os.dup2(held.fileno(), 2)
  failed = True
  try:
    yield
    failed = False
  finally:
    if failed:  # the writes still under way when the first one failed end (and print) here
      time.sleep(0.2)
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)
    if not failed:
      held.seek(0)
      os.write(2, held.read())
    held.close()


def loop_digest(loop: dict) -> str:
  """sha256 of a checkpoint's loop JSON (all but this checksum): its history, config and data
  identity are what a resumed run reports from, so they are checked as the arrays are."""
  fields = {k: v for k, v in loop.items() if k != "loop_sha256"}
  return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def _checked_loop(loop: dict) -> dict:
  if loop.get("loop_sha256") not in (None, loop_digest(loop)):
    raise ValueError("its loop JSON does not match its checksum")
  return loop


def latest_loop(mngr: ocp.CheckpointManager) -> dict | None:
  """The loop JSON of the latest checkpoint whose JSON can be read (None when none can):
  cheap, no state is read, so a run can be checked before it builds anything."""
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      return _checked_loop(mngr.restore(step, args=ocp.args.Composite(
          loop=ocp.args.JsonRestore()))["loop"])
    except Exception:  # damaged: restore_latest reports it
      continue
  return None


def restore_latest(mngr: ocp.CheckpointManager, abstract_state,
                   log: Callable[[str], None] = print,
                   check: Callable[[dict], None] | None = None, prune: bool = True,
                   at_most: int | None = None):
  """(state, loop) of the latest readable checkpoint, laid out like ``abstract_state``
  (whose shardings may come from another device count), or None when there is none; a
  `CheckpointError` when there are some and none can be read. ``check(loop)`` sees a
  checkpoint's loop JSON before its state is read (and may raise to refuse it). With
  ``prune`` (a run that goes on from here) the unreadable later checkpoints are deleted;
  without it (an analysis) nothing is. ``at_most``: the latest checkpoint of that epoch or
  an earlier one (the members of a population resume from one epoch)."""
  target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
  skipped = []
  for step in sorted(mngr.all_steps(), reverse=True):
    if at_most is not None and step > at_most:
      continue
    try:
      loop = mngr.restore(step, args=ocp.args.Composite(loop=ocp.args.JsonRestore()))["loop"]
    except Exception as e:  # a damaged checkpoint: orbax/tensorstore raise many kinds
      skipped.append(f"checkpoint {step} ({type(e).__name__})")
      continue
    if loop.get("loop_sha256") not in (None, loop_digest(loop)):
      skipped.append(f"checkpoint {step} (its loop JSON does not match its checksum)")
      continue
    if check is not None:
      check(loop)
    try:
      state = mngr.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target)))["state"]
    except Exception as e:
      skipped.append(f"checkpoint {step} ({type(e).__name__})")
      continue
    if loop.get("state_sha256") not in (None, digest(state)):
      skipped.append(f"checkpoint {step} (its state does not match its checksum)")
      continue
    if prune:  # the run continues from ``step``: later ones (unreadable, or ahead) go
      for later in mngr.all_steps():
        if later > step:
          mngr.delete(later)
    if skipped:
      log(f"could not read {', '.join(skipped)}{' (removed)' if prune else ''}; "
          f"{'resuming from' if prune else 'using'} checkpoint {step}")
    return state, loop
  if skipped:
    raise CheckpointError(f"could not read {', '.join(skipped)}: no readable checkpoint in "
                          f"{mngr.directory}")
  return None
