"""Runs the README's own-loop example, so that the documented use keeps working, also with
only the core dependencies (jax, flax, optax, numpy) importable."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Everything that is not in the core install (pyproject's train/prep/tfds extras).
EXTRAS = ("orbax", "grain", "tqdm", "matplotlib", "sklearn", "tensorboardX", "scipy", "soundfile",
          "av", "tensorflow_datasets", "PIL")


def example() -> str:
  with open(os.path.join(ROOT, "README.md")) as f:
    text = f.read()
  match = re.search(r"<!-- example: own-loop.*?-->\n```python\n(.*?)```", text, re.S)
  assert match, "the README lost its own-loop example"
  return match.group(1)


def test_readme_own_loop_example(capsys):
  exec(compile(example(), "README.md", "exec"), {})
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 4
  alphas = [float(line.split()[2]) for line in lines]
  assert alphas[0] == alphas[1] == 0.0  # two warm-up epochs


def test_core_install_runs_the_example_without_the_extras():
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
  assert len(proc.stdout.strip().splitlines()) == 4
