"""Data parallelism: 1 and 4 (CPU) devices give the same run, and a checkpoint written on 4
devices restores on 1. Each configuration runs in its own process, since the device count
is fixed when JAX starts. 4 CPU devices on 2 cores need the thread pool that experiments.run
sizes (`experiments.run.size_cpu_thread_pool`); the last test holds it to that."""

import json
import os
import shutil
import subprocess
import sys
import time

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


PORT_TAKEN = "Failed to start RPC server"  # the coordinator's port was taken meanwhile


def two_processes(workdirs, logs):
  """[(exit status, stderr)] of the two processes. Their output goes to files under ``logs``
  (a pipe nobody reads while we wait would stop a process that writes 64 KiB), and neither
  outlives the call. A coordinator port taken between `free_port` and the coordinator's bind
  (by another test's process) is retried on another one."""
  for attempt in range(3):
    out = start_two(workdirs, free_port(), os.path.join(logs, f"try{attempt}"))
    if not any(PORT_TAKEN in err for _, err in out):
      break
  return out


def start_two(workdirs, port, logs):
  os.makedirs(logs)
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")
  procs, paths = [], [os.path.join(logs, f"{i}.err") for i in range(len(workdirs))]
  try:
    for i, (w, path) in enumerate(zip(workdirs, paths)):
      with open(path, "w") as err:
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "experiments.run", *FLAGS, "--epochs=2", f"--workdir={w}",
             f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
             f"--process_id={i}"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err))
    deadline = time.monotonic() + 600  # seen: 30 s on 2 idle cores
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
      if any(p.poll() is not None and PORT_TAKEN in read(f) for p, f in zip(procs, paths)):
        break  # the other one would wait minutes for a coordinator that is not there
      time.sleep(0.5)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
      p.wait()
  return [(p.returncode, read(f)) for p, f in zip(procs, paths)]


def read(path):
  with open(path) as f:
    return f.read()


def free_port():
  import socket
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_one_and_refuse_unshared_workdirs(tmp_path):
  """Multi-host on one machine: two processes (gloo collectives) sharing a workdir train to
  the same losses as one process; with a workdir each, both stop with one line."""
  out = two_processes([tmp_path / "two", tmp_path / "two"], str(tmp_path / "logs_shared"))
  assert [rc for rc, _ in out] == [0, 0], out[0][1][-2000:] + out[1][1][-2000:]
  _, one = run(1, tmp_path / "one", "--epochs=2")
  with open(tmp_path / "two" / "metrics.jsonl") as f:
    two = [json.loads(line) for line in f]
  for key in ("train_loss", "test_loss", "trace_audio", "alpha_audio"):
    np.testing.assert_allclose([r[key] for r in two], [r[key] for r in one], rtol=1e-5,
                               atol=1e-6, err_msg=key)
  out = two_processes([tmp_path / "a", tmp_path / "b"], str(tmp_path / "logs_apart"))
  for rc, err in out:
    assert rc == 2 and "is not shared by all 2 processes" in err and "Traceback" not in err


# Many steps over 4 CPU devices dispatched ahead of them (more than the 32 computations a device
# queues before a launch blocks): on 2 cores, with XLA's default pool of max(cores, 4) threads,
# this deadlocks and XLA aborts after 40 s with "Termination timeout for all reduce ... only 3
# of them arrived"; with the pool experiments.run sizes it takes a second.
FAR_AHEAD = """
from experiments.run import size_cpu_thread_pool
size_cpu_thread_pool()
import jax, jax.numpy as jnp
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
mesh = jax.make_mesh((4,), ("d",), axis_types=(AxisType.Auto,))
w = jax.device_put(jnp.eye(16), NamedSharding(mesh, P()))
x = jax.device_put(jnp.ones((64, 16)), NamedSharding(mesh, P("d")))
step = jax.jit(lambda w, x: w - 0.01 * x.T @ jnp.tanh(x @ w) / x.shape[0])  # an all-reduce
for _ in range(200):
  w = step(w, x)
print("done", float(w.sum()))
"""


def test_four_cpu_devices_dispatched_far_ahead_do_not_deadlock():
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=4")
  env.pop("PJRT_NPROC", None)
  proc = subprocess.run([sys.executable, "-c", FAR_AHEAD], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0 and "done" in proc.stdout, proc.stderr[-3000:]
