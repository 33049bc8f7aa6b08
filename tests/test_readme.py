"""Runs the README's own-loop example, so that the documented use keeps working."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_own_loop_example(capsys):
  with open(os.path.join(ROOT, "README.md")) as f:
    text = f.read()
  match = re.search(r"<!-- example: own-loop.*?-->\n```python\n(.*?)```", text, re.S)
  assert match, "the README lost its own-loop example"
  exec(compile(match.group(1), "README.md", "exec"), {})
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 4
  alphas = [float(line.split()[2]) for line in lines]
  assert alphas[0] == alphas[1] == 0.0  # two warm-up epochs
