"""The GPU machine's image has jax, flax, optax, orbax, matplotlib, scikit-learn, tqdm, but not
grain, tensorboardX, soundfile or PyAV: the runner and the step benchmark must start there."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path, target=None):
    if name.split('.')[0] in ('grain', 'tensorboardX', 'soundfile', 'av'):
      raise ImportError('not on the GPU image: ' + name)
sys.meta_path.insert(0, Block())
from experiments import bench
sys.exit(bench.main(['--mode=step', '--tiny', '--steps=1', '--warmup=1', '--methods=inforeg',
                     '--dtypes=float32']))
"""


def test_step_bench_runs_without_the_packages_the_gpu_image_lacks():
  proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert '"method": "inforeg"' in proc.stdout and '"regulated": true' in proc.stdout
