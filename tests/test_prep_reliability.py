"""Every preparation's output folder under stress: a file or an unwritable folder as --out_dir,
two preparations at once, Ctrl-C (SIGINT) and SIGTERM mid-write, progress in a log file. Each
case is one ``error:`` line and a nonzero exit, the previous dataset untouched."""

import io
import json
import os
import select
import signal
import subprocess
import sys

import pytest

from data_prep import common
from inforeg_jax.data import records
from tests.failure_cases import with_default_sigint
from tests.test_prep_avmnist import make_fixture

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs data_prep.avmnist as `python -m` does, pausing after the first split is written (the new
# version folder half full) until the file argv[1] exists.
PAUSER = r"""
import os, runpy, sys, time
from inforeg_jax.data import records

release, write, paused = sys.argv[1], records.Preparation.write_split, []
def write_split(self, split, arrays):
  write(self, split, arrays)
  if not paused:
    paused.append(1)
    print("PAUSED", self.path, flush=True)
    while not os.path.exists(release):
      time.sleep(0.02)
records.Preparation.write_split = write_split
sys.argv = ["data_prep.avmnist", *sys.argv[2:]]
runpy.run_module("data_prep.avmnist", run_name="__main__", alter_sys=True)
"""


@pytest.fixture
def inputs(tmp_path):
  fsdd, mnist = make_fixture(tmp_path, per_digit=12, images=100)
  return [f"--fsdd_dir={fsdd}", f"--mnist_dir={mnist}"]


# How long a preparation may take to get somewhere or to end (seen: 2-3 s on 2 idle cores;
# these hold at 2x the cores' load and more).
WAIT = 120


def prep(*flags):
  return subprocess.run([sys.executable, "-m", "data_prep.avmnist", *map(str, flags)], cwd=ROOT,
                        capture_output=True, text=True, timeout=600)


@pytest.fixture
def paused(tmp_path):
  """paused(*flags): a preparation stopped half-way through writing, as (process, its version
  folder); every one still running at the end of the test is killed (it would wait for its
  release for ever)."""
  procs = []

  def start(*flags):
    # with Ctrl-C's default disposition, whether or not this suite runs in the background
    proc = subprocess.Popen(with_default_sigint([sys.executable, "-c", PAUSER,
                                                 str(tmp_path / "release"), *map(str, flags)]),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs.append(proc)
    ready, _, _ = select.select([proc.stdout], [], [], WAIT)
    line = proc.stdout.readline() if ready else ""
    if not line.startswith("PAUSED "):
      proc.kill()
      raise AssertionError(f"not paused after {WAIT} s: {line!r} {proc.communicate()}")
    return proc, line.split(" ", 1)[1].strip()

  yield start
  for proc in procs:
    if proc.poll() is None:
      proc.kill()
    proc.communicate()


def one_error_line(stderr):
  errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1 and stderr.rstrip("\n").endswith(errors[0]), stderr
  assert "Traceback" not in stderr
  return errors[0]


def version(out):
  return json.loads((out / "manifest.json").read_text())["version"]


@pytest.mark.parametrize("sig, status, says", [(signal.SIGINT, 130, "Ctrl-C"),
                                               (signal.SIGTERM, 143, "SIGTERM")])
def test_an_interrupt_is_one_line_and_leaves_the_previous_dataset(tmp_path, inputs, paused, sig,
                                                                    status, says):
  out = tmp_path / "out"
  assert prep(*inputs, f"--out_dir={out}").returncode == 0
  before = version(out)
  proc, partial = paused(*inputs, f"--out_dir={out}", "--seed=1")
  assert os.path.isdir(partial) and os.listdir(os.path.join(partial, "train"))
  proc.send_signal(sig)
  _, err = proc.communicate(timeout=WAIT)
  assert proc.returncode == status, err
  line = one_error_line(err)
  assert line == (f"error: interrupted ({says}): {out} keeps its previous dataset, nothing "
                  "partial left behind; run the command again to prepare it")
  assert not os.path.exists(partial)  # the partial version removed
  assert version(out) == before and [p.name for p in out.glob("v-*")] == [before]
  assert records.load_prepared("avmnist", str(out)).train["label"].shape == (80,)


def test_a_second_preparation_into_the_same_folder_is_refused(tmp_path, inputs, paused):
  out = tmp_path / "out"
  first, _ = paused(*inputs, f"--out_dir={out}")
  second = prep(*inputs, f"--out_dir={out}")
  assert second.returncode == 2
  assert one_error_line(second.stderr) == (
      f"error: --out_dir={out} is being prepared by another data_prep (pid {first.pid}); wait "
      "for it to end or choose another --out_dir")
  (tmp_path / "release").touch()
  _, err = first.communicate(timeout=WAIT)  # read as it goes: a full pipe would stop it
  assert first.returncode == 0, err
  again = prep(*inputs, f"--out_dir={out}")  # the lock went with the first one
  assert again.returncode == 0 and "nothing to do" in again.stdout


def test_out_dir_that_cannot_take_a_dataset(tmp_path, inputs):
  out = tmp_path / "out"
  assert prep(*inputs, f"--out_dir={out}").returncode == 0
  before = version(out)
  (tmp_path / "a_file").write_text("keep me")
  cases = [(tmp_path / "a_file", "is a file, not a folder"),
           (tmp_path / "a_file" / "sub", "cannot be created (Not a directory)")]
  if os.geteuid() == 0:  # root writes through permissions; sysfs refuses new files
    if os.path.isdir("/sys/kernel"):
      cases.append(("/sys/kernel", "is not writable (Permission denied)"))
  else:
    os.chmod(out, 0o555)
    cases.append((out, "is not writable (Permission denied)"))
  try:
    for path, says in cases:
      proc = prep(*inputs, f"--out_dir={path}")
      assert proc.returncode == 2, proc.stderr
      line = one_error_line(proc.stderr)
      assert line.startswith(f"error: --out_dir={path} {says}"), line
  finally:
    os.chmod(out, 0o755)
  assert (tmp_path / "a_file").read_text() == "keep me"
  assert version(out) == before and records.load_prepared("avmnist", str(out))


def test_versions_left_by_a_killed_preparation_are_removed_under_the_lock(tmp_path, inputs):
  out = tmp_path / "out"
  assert prep(*inputs, f"--out_dir={out}").returncode == 0
  (out / "v-20260101-000000-dead00" / "train").mkdir(parents=True)  # as a SIGKILL leaves it
  proc = prep(*inputs, f"--out_dir={out}")
  assert proc.returncode == 0 and "nothing to do" in proc.stdout
  assert [p.name for p in out.glob("v-*")] == [version(out)]


def test_progress_off_a_terminal_is_a_line_per_tenth(tmp_path, inputs):
  proc = prep(*inputs, f"--out_dir={tmp_path / 'out'}")  # stderr is a pipe here, not a TTY
  assert proc.returncode == 0 and "\r" not in proc.stderr
  lines = [line for line in proc.stderr.splitlines() if line.startswith("FSDD: ")]
  assert [line.split("%")[0] for line in lines] == [f"FSDD: {p}" for p in range(10, 101, 10)]
  assert lines[-1].startswith("FSDD: 100% (120/120 clip, ")
  stream = io.StringIO()
  assert list(common.progress(range(3), "few", stream=stream)) == [0, 1, 2]
  assert stream.getvalue().splitlines()[-1].startswith("few: 100% (3/3 it, ")
  assert [line.split("%")[0] for line in stream.getvalue().splitlines()] == [
      "few: 30", "few: 60", "few: 100"]

  class Terminal(io.StringIO):
    def isatty(self):
      return True

  tty = Terminal()
  assert list(common.progress(range(5), "bar", stream=tty)) == list(range(5))
  assert "\r" in tty.getvalue()  # tqdm's bar on a terminal
