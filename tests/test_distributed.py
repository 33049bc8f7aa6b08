"""Data parallelism: 1 and 4 (CPU) devices give the same run, and a checkpoint written on 4
devices restores on 1. Each configuration runs in its own process, since the device count
is fixed when JAX starts."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ["--tiny", "--method=inforeg", "--inforeg.warmup_epochs=0", "--window=whole",
         "--limit_train=128", "--batch_size=16", "--eval_batch_size=64"]


def run(devices, workdir, *extra):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  proc = subprocess.run([sys.executable, "-m", "experiments.run", *FLAGS, *extra,
                         f"--workdir={workdir}"], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return summary, rows


def test_one_and_four_devices_agree_and_checkpoints_move(tmp_path):
  one, rows1 = run(1, tmp_path / "one", "--epochs=2")
  four, rows4 = run(4, tmp_path / "four", "--epochs=2")
  assert one["num_devices"] == 1 and four["num_devices"] == 4
  for key in ("train_loss", "test_loss", "trace_audio", "trace_visual", "alpha_audio",
              "alpha_visual"):
    np.testing.assert_allclose([r[key] for r in rows4], [r[key] for r in rows1],
                               rtol=2e-4, atol=1e-6, err_msg=key)
  assert any(r["alpha_audio"] + r["alpha_visual"] > 0 for r in rows1)  # regulation ran

  # The 4-device checkpoint of epoch 1 resumes on 1 device, as the 1-device run would.
  moved = tmp_path / "moved"
  shutil.copytree(tmp_path / "four", moved)
  _, resumed = run(1, moved, "--epochs=3", "--resume")
  _, straight = run(1, tmp_path / "straight", "--epochs=3")
  assert [r["epoch"] for r in resumed] == [0, 1, 2]
  np.testing.assert_allclose(resumed[-1]["train_loss"], straight[-1]["train_loss"], rtol=2e-4)


def two_processes(workdirs, port):
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")
  procs = [subprocess.Popen([sys.executable, "-m", "experiments.run", *FLAGS, "--epochs=2",
                             f"--workdir={w}", f"--coordinator_address=127.0.0.1:{port}",
                             "--num_processes=2", f"--process_id={i}"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for i, w in enumerate(workdirs)]
  return [(p.wait(timeout=600), p.stderr.read()) for p in procs]


def free_port():
  import socket
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_one_and_refuse_unshared_workdirs(tmp_path):
  """Multi-host on one machine: two processes (gloo collectives) sharing a workdir train to
  the same losses as one process; with a workdir each, both stop with one line."""
  out = two_processes([tmp_path / "two", tmp_path / "two"], free_port())
  assert [rc for rc, _ in out] == [0, 0], out[0][1][-2000:] + out[1][1][-2000:]
  _, one = run(1, tmp_path / "one", "--epochs=2")
  with open(tmp_path / "two" / "metrics.jsonl") as f:
    two = [json.loads(line) for line in f]
  for key in ("train_loss", "test_loss", "trace_audio", "alpha_audio"):
    np.testing.assert_allclose([r[key] for r in two], [r[key] for r in one], rtol=1e-5,
                               atol=1e-6, err_msg=key)
  out = two_processes([tmp_path / "a", tmp_path / "b"], free_port())
  for rc, err in out:
    assert rc == 2 and "is not shared by all 2 processes" in err and "Traceback" not in err
