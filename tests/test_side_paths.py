"""The side commands' user errors end to end: one `error:` line, nonzero exit, no traceback
(the in-process checks of each are in test_table, test_analyses and test_bench)."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("args,says", [
    (["experiments.sweep", "--out={tmp}", "--seeds=0,x"], "error: --seeds=0,x: 'x' is not a seed"),
    (["experiments.bench", "--steps=0"], "error: --steps=0 must be >= 1"),
])
@pytest.mark.slow
def test_side_command_error_is_one_line(tmp_path, args, says):
  cmd = [sys.executable, "-m"] + [a.format(tmp=tmp_path) for a in args]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  errors = [line for line in proc.stderr.splitlines() if "error:" in line]
  assert len(errors) == 1 and says in errors[0], proc.stderr[-2000:]


def test_an_os_error_reaching_a_side_command_is_one_line(capsys):
  from experiments import cli

  def main():
    raise OSError(28, "No space left on device", "/data/out/table.md")

  with pytest.raises(SystemExit) as e:
    cli(main)
  assert e.value.code == 2
  assert capsys.readouterr().err == "error: No space left on device: /data/out/table.md\n"
