"""Runs the README's own-loop example with only the core dependencies (jax, flax, optax, numpy)
importable, so that the documented use keeps working and keeps showing the regulation act."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Everything that is not in the core install (pyproject's extras).
EXTRAS = ("orbax", "grain", "tqdm", "matplotlib", "sklearn", "tensorboardX", "scipy", "soundfile",
          "av", "tensorflow_datasets", "PIL")
LINE = re.compile(r"epoch (\d+) loss ([\d.]+) \| audio Tr ([\d.]+) window ([01]) alpha ([\d.]+) "
                  r"\| visual Tr ([\d.]+) window ([01]) alpha ([\d.]+)$")


def example() -> str:
  with open(os.path.join(ROOT, "README.md")) as f:
    text = f.read()
  match = re.search(r"<!-- example: own-loop.*?-->\n```python\n(.*?)```", text, re.S)
  assert match, "the README lost its own-loop example"
  return match.group(1)


@pytest.mark.slow
def test_readme_example_runs_on_the_core_install_and_regulates():
  block = (
      "import sys, importlib.abc\n"
      "class Block(importlib.abc.MetaPathFinder):\n"
      "  def find_spec(self, name, path, target=None):\n"
      f"    if name.split('.')[0] in {EXTRAS!r}:\n"
      "      raise ImportError('not in the core install: ' + name)\n"
      "sys.meta_path.insert(0, Block())\n")
  proc = subprocess.run([sys.executable, "-c", block + example()], cwd=ROOT,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = proc.stdout.strip().splitlines()
  rows = [LINE.match(line) for line in lines]
  assert len(rows) == 10 and all(rows), lines
  epochs = [[float(x) for x in r.groups()] for r in rows]
  alphas = [(e[4], e[7]) for e in epochs]
  assert alphas[0] == alphas[1] == (0.0, 0.0)  # the two warm-up epochs
  assert any(a > 0 for pair in alphas for a in pair), lines  # the regulation acts
  for e in epochs:  # alpha only inside the window (prime, the default)
    assert (e[4] == 0 or e[3] == 1) and (e[7] == 0 or e[6] == 1), e
  # the output the README shows is what it prints (up to the last digit: another CPU)
  with open(os.path.join(ROOT, "README.md")) as f:
    shown = re.search(r"among them:\n\n```\n(.*?)```", f.read(), re.S).group(1).splitlines()
  for line in shown:
    want = [float(x) for x in LINE.match(line).groups()]
    got = epochs[int(want[0])]
    assert [got[i] for i in (3, 6)] == [want[i] for i in (3, 6)], (line, got)
    assert max(abs(g - w) for g, w in zip(got, want)) < 0.0025, (line, got)
