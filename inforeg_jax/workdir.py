"""A run's folder: what it may hold, a lock while a run writes it, and --overwrite's safety.

A workdir holds only a run's own files (`RUN_FILES`). ``--overwrite`` refuses a folder that
holds anything else (``--workdir=.``, a folder of the user's), and does not delete the old run
at once: `set_aside` moves it into ``.replaced/`` inside the workdir, `drop_aside` deletes it
once the new run has saved its first epoch, and `restore_aside` puts it back if the new run
stops before that. `Lock` keeps two runs from writing one workdir at once (an exclusive
``flock`` on ``.lock``, released by the OS when a process dies). A population's members lie in
``<workdir>/[<setting>/]seed<k>``: `check_resume_layout` refuses a --resume that names another
layout than the one on disk.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import uuid
from typing import Any

LOCK = ".lock"
ASIDE = ".replaced"
RUN_FILES = frozenset({"metrics.jsonl", "summary.json", "checkpoints", "tensorboard",
                       "accuracy.png", "trace.png", "alpha.png", "log.txt", "config.py",
                       "test_predictions.npy", LOCK,
                       ASIDE, ".process0-token"})
MARKERS = ("metrics.jsonl", "summary.json", "checkpoints")  # a folder with any holds a run


class RunError(Exception):
  """A run that cannot start or go on; the message is one line for the user."""


def used(workdir: str) -> bool:
  """Whether ``workdir`` holds a run (or the start of one)."""
  return any(os.path.exists(os.path.join(workdir, f)) for f in MARKERS)


def nested_run(workdir: str) -> str | None:
  """A run that a new run in ``workdir`` would nest with: one in the folder just above it (a
  population's ``<workdir>/seed<k>`` inside a single run's folder), or one in a folder below
  it (a single run written over a population's members); None when there is none. Only a
  run's own files mark a run here (a folder named checkpoints/ beside a project is not one)."""
  run_files = ("metrics.jsonl", "summary.json")
  is_run = lambda folder: any(os.path.isfile(os.path.join(folder, f)) for f in run_files)
  parent = os.path.dirname(os.path.abspath(workdir))
  if is_run(parent):
    return parent
  top = os.path.normpath(workdir).count(os.sep)
  for folder, subfolders, _ in os.walk(workdir):
    if folder != workdir and is_run(folder):
      return folder
    deep = os.path.normpath(folder).count(os.sep) - top >= 4  # (runs lie 1 to 4 folders down)
    subfolders[:] = [] if deep else sorted(d for d in subfolders if d not in RUN_FILES)
  return None


def foreign(workdir: str) -> list[str]:
  """The entries of ``workdir`` that are not a run's own files."""
  try:
    names = os.listdir(workdir)
  except OSError:
    return []
  return sorted(n for n in names if n not in RUN_FILES and not n.startswith(".write-test-"))


def check_writable(workdir: str, flag: str = "--workdir") -> None:
  """``workdir`` made if missing and written to (RunError naming ``flag`` when it cannot be:
  a file there, a read-only or full disk)."""
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write-test-{uuid.uuid4().hex}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    why = "it is a file, not a folder" if os.path.isfile(workdir) else e.strerror
    raise RunError(f"cannot write to {flag}={workdir}: {why}") from None


class Lock:
  """An exclusive lock on a workdir for as long as this run writes it."""

  def __init__(self, workdir: str, flag: str = "--workdir", holder: str = "another run"):
    self.path = os.path.join(workdir, LOCK)
    self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      pid = os.read(self.fd, 64).decode(errors="replace").strip() or "?"
      os.close(self.fd)
      raise RunError(f"{flag}={workdir} is in use by {holder} (pid {pid}): wait for it, or "
                     f"choose another {flag}") from None
    os.ftruncate(self.fd, 0)
    os.write(self.fd, str(os.getpid()).encode())

  def release(self) -> None:
    if self.fd is not None:
      fcntl.flock(self.fd, fcntl.LOCK_UN)
      os.close(self.fd)
      self.fd = None


def missing_folders(workdirs: list[str]) -> list[str]:
  """The folders of ``workdirs`` (and their parents) that do not exist yet, deepest first."""
  out = set()
  for w in workdirs:
    path = os.path.abspath(w)
    while not os.path.exists(path):
      out.add(path)
      path = os.path.dirname(path)
  return sorted(out, key=lambda p: -p.count(os.sep))


def remove_unused(folders: list[str]) -> None:
  """Removes those of ``folders`` (deepest first, as `missing_folders`) that hold nothing,
  or only a lock (this run's: removed while held, which POSIX allows): what a refused run made
  before it was refused."""
  for folder in folders:
    try:
      if set(os.listdir(folder)) <= {LOCK}:
        if os.path.exists(os.path.join(folder, LOCK)):
          os.remove(os.path.join(folder, LOCK))
        os.rmdir(folder)
    except OSError:
      pass


def check_replaceable(workdir: str) -> None:
  """--overwrite only replaces a run: a folder with other files is refused."""
  other = foreign(workdir)
  if other:
    shown = ", ".join(other[:5]) + (f" and {len(other) - 5} more" if len(other) > 5 else "")
    raise RunError(f"--overwrite: --workdir={workdir} holds files that are not a run's "
                   f"({shown}); refusing to replace it: choose another --workdir")


def set_aside(workdir: str) -> bool:
  """Moves the run in ``workdir`` into ``.replaced/`` (an older one there is dropped first);
  whether there was a run to move."""
  aside = os.path.join(workdir, ASIDE)
  names = [n for n in os.listdir(workdir) if n in RUN_FILES and n not in (LOCK, ASIDE)]
  if not names:
    return False
  shutil.rmtree(aside, ignore_errors=True)
  os.makedirs(aside)
  for n in names:
    os.replace(os.path.join(workdir, n), os.path.join(aside, n))
  return True


def restore_aside(workdir: str) -> None:
  """Puts a set-aside run back (the new run stopped before saving an epoch)."""
  aside = os.path.join(workdir, ASIDE)
  if not os.path.isdir(aside):
    return
  for n in os.listdir(aside):
    target = os.path.join(workdir, n)
    if os.path.isdir(target) and not os.path.islink(target):
      shutil.rmtree(target)
    elif os.path.exists(target):
      os.remove(target)
    os.replace(os.path.join(aside, n), target)
  os.rmdir(aside)


def drop_aside(workdir: str) -> None:
  shutil.rmtree(os.path.join(workdir, ASIDE), ignore_errors=True)


# ---------------------------------------------------------------- a population's member folders

SEED_FOLDER = re.compile(r"seed\d+")


def _setting_keys(folder: str) -> tuple[str, ...] | None:
  """The setting names of a member folder (``learning_rate=0.01,agm.alpha=2``), None when it
  is not one."""
  keys = []
  for part in folder.split(","):
    key, eq, value = part.partition("=")
    if not (key and eq and value):
      return None
    keys.append(key)
  return tuple(sorted(keys))


def runs_by_layout(base: str) -> dict[Any, list[str]]:
  """The runs under ``base`` by the layout of their folders: ``"itself"`` (a run in
  ``base``), ``()`` (``base/seed<k>``) or the names of the settings a population varied
  (``base/<setting>/seed<k>``, `config.setting_name`)."""
  found: dict[Any, list[str]] = {}
  if used(base):
    found["itself"] = [base]
  try:
    names = sorted(os.listdir(base))
  except OSError:
    return found
  for name in names:
    path = os.path.join(base, name)
    keys = () if SEED_FOLDER.fullmatch(name) else _setting_keys(name)
    if keys == ():
      if used(path):
        found.setdefault((), []).append(path)
    elif keys is not None and os.path.isdir(path):
      for sub in sorted(os.listdir(path)):
        if SEED_FOLDER.fullmatch(sub) and used(os.path.join(path, sub)):
          found.setdefault(keys, []).append(os.path.join(path, sub))
  return found


def check_resume_layout(workdirs: list[str], base: str, layout) -> None:
  """A --resume whose members' folders (``workdirs``, laid out under ``base`` as ``layout``,
  see `runs_by_layout`) hold no run while ``base`` holds runs laid out otherwise
  (``learning_rate=0.01/seed0`` while the command names ``seed0``): RunError naming what is on
  disk, instead of fresh runs beside the old ones. A new member in a layout that is on disk
  (another seed) starts fresh, as a --resume into an empty workdir does."""
  if any(used(w) for w in workdirs):
    return
  found = runs_by_layout(base)
  if not found or layout in found:
    return
  held = [p for paths in found.values() for p in paths]
  more = f" (and {len(held) - 2} more)" if len(held) > 2 else ""
  named = workdirs[0] + (f" (and {len(workdirs) - 1} more)" if len(workdirs) > 1 else "")
  raise RunError(f"--resume: the runs under {base} are {', '.join(held[:2])}{more}, but this "
                 f"command names {named}, where there is none: give the list flags those runs "
                 "were started with, or another --workdir for new runs")
