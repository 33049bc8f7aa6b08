"""Bad inputs a user can give, each run as its command, and what must answer it.

Every case builds what it needs in a temporary folder, runs one command (``python -m ...``)
and expects an exit status and one ``error:`` (or notice) line naming the flag or file, with
no traceback. ``tests/test_failure_modes.py`` runs each as a test;
``python -m tests.failure_cases`` runs them all and writes the count to docs/FAILURE_MODES.md.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Callable

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = [sys.executable, "-m", "experiments.run"]
TINY = ["--tiny", "--limit_train=128", "--epochs=2"]


@dataclasses.dataclass
class Case:
  name: str
  build: Callable[[str], list[str]]  # tmp dir -> the command
  rc: int  # expected exit status
  says: str  # expected in stderr (or stdout)
  group: str = "run"


@dataclasses.dataclass
class Outcome:
  rc: int
  out: str
  err: str


def run(cmd: list[str], timeout: float = 600) -> Outcome:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
  return Outcome(p.returncode, p.stdout, p.stderr)


def tiny_run(workdir: str, *extra: str) -> None:
  out = run(RUN + TINY + [f"--workdir={workdir}", *extra])
  assert out.rc == 0, out.err[-2000:]


# ---------------------------------------------------------------- the cases


def used_workdir(tmp):
  tiny_run(f"{tmp}/w")
  return RUN + TINY + [f"--workdir={tmp}/w", "--seed=1"]


def resume_changed_config(tmp):
  tiny_run(f"{tmp}/w")
  return RUN + TINY + [f"--workdir={tmp}/w", "--resume", "--batch_size=8", "--method=agm"]


def resume_fewer_epochs(tmp):
  tiny_run(f"{tmp}/w", "--epochs=3")
  return RUN + TINY + [f"--workdir={tmp}/w", "--resume", "--epochs=1"]


def resume_without_checkpoint(tmp):
  return RUN + TINY + ["--epochs=1", f"--workdir={tmp}/empty", "--resume"]


def corrupt_latest_checkpoint(tmp):
  tiny_run(f"{tmp}/w")
  latest = os.path.join(tmp, "w", "checkpoints", "1")
  for folder, _, files in os.walk(latest):
    for f in files:
      if f != "_CHECKPOINT_METADATA":
        with open(os.path.join(folder, f), "wb") as fh:
          fh.write(b"\x00garbage")
  return RUN + TINY + [f"--workdir={tmp}/w", "--resume", "--epochs=3"]


def all_checkpoints_corrupt(tmp):
  tiny_run(f"{tmp}/w")
  for step in ("0", "1"):
    for folder, _, files in os.walk(os.path.join(tmp, "w", "checkpoints", step)):
      for f in files:
        if f != "_CHECKPOINT_METADATA":
          open(os.path.join(folder, f), "wb").close()
  return RUN + TINY + [f"--workdir={tmp}/w", "--resume", "--epochs=3"]


def diverging_learning_rate(tmp):
  return RUN + TINY + ["--learning_rate=1e9", f"--workdir={tmp}/w"]


def nan_trace_learning_rate(tmp):
  return RUN + TINY + ["--learning_rate=1e3", f"--workdir={tmp}/w"]


def workdir_under_a_file(tmp):
  open(f"{tmp}/file", "w").close()
  return RUN + TINY + [f"--workdir={tmp}/file/run"]


def missing_dataset(tmp):
  return RUN + ["--dataset=cremad", f"--data_dir={tmp}/nothing"]


def bad_flag(flag):
  return lambda tmp: RUN + [flag]


def interrupted(tmp):
  """Ctrl-C mid-run: one line, and the run resumes."""
  tiny_run(f"{tmp}/w", "--epochs=1")
  p, err = started(with_default_sigint(RUN + TINY + [f"--workdir={tmp}/w", "--resume",
                                                     "--epochs=400"]), tmp)
  try:
    # a checkpoint after epoch 0 (pruning may remove 1), then interrupt
    seen = wait_for_checkpoint(p, os.path.join(tmp, "w", "checkpoints"), at_least=1)
    if seen is None:  # say what happened instead of interrupting blind
      return verdict(3, f"no checkpoint after epoch 0 to interrupt (exit {p.poll()}): "
                     f"{read(err)[-2000:]}")
    p.send_signal(signal.SIGINT)
    rc = p.wait(timeout=STOP_WAIT)
  except subprocess.TimeoutExpired:
    return verdict(3, f"still running {STOP_WAIT} s after Ctrl-C: {read(err)[-2000:]}")
  finally:
    stop(p)
  with open(f"{tmp}/interrupt.json", "w") as f:
    json.dump({"rc": rc, "err": read(err)}, f)
  return [sys.executable, "-c", "import json, sys; r = json.load(open(sys.argv[1])); "
          "sys.stderr.write(r['err']); sys.exit(r['rc'])", f"{tmp}/interrupt.json"]


# How long a run in the background may take to get somewhere (seen: under 10 s on 2 idle
# cores; these hold at 2x the cores' load and more), and to stop after a signal (seen: ~1 s).
START_WAIT = 300
STOP_WAIT = 300


def with_default_sigint(cmd: list[str]) -> list[str]:
  """``cmd``, started with Ctrl-C's default disposition. A suite started in the background
  (`make test &`, nohup) ignores SIGINT, a child inherits an ignored signal, and Python then
  never raises KeyboardInterrupt: a Ctrl-C case would wait out its timeout. The reset is done
  by a small Python that then becomes ``cmd`` (same pid), not by a preexec_fn, which runs in
  a fork of this multithreaded process (JAX's threads) and may deadlock there."""
  return [sys.executable, "-c", "import os, signal, sys; "
          "signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])",
          *cmd]


def started(cmd: list[str], tmp: str, **popen) -> tuple[subprocess.Popen, str]:
  """A command started in the background, its stderr going to a file (a pipe nobody reads
  would stop it once full), and the file's path."""
  err = os.path.join(tmp, f"stderr-{len(os.listdir(tmp))}.txt")
  with open(err, "w") as f:
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=f,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"), **popen)
  return p, err


def wait_for_checkpoint(p: subprocess.Popen, ckpts: str, at_least: int) -> list[str] | None:
  """The checkpoint folders once one of epoch ``at_least`` or later is there; None when ``p``
  ends first or START_WAIT passes."""
  deadline = time.monotonic() + START_WAIT
  while time.monotonic() < deadline and p.poll() is None:
    seen = sorted(os.listdir(ckpts)) if os.path.isdir(ckpts) else []
    if any(d.isdigit() and int(d) >= at_least for d in seen):
      return seen
    time.sleep(0.2)
  return None


def stop(p: subprocess.Popen) -> None:
  if p.poll() is None:
    p.kill()
  p.wait()


def read(path: str) -> str:
  with open(path) as f:
    return f.read()


def verdict(rc: int, text: str) -> list[str]:
  """A command that prints ``text`` and exits with ``rc``: for cases that run their commands
  themselves and then check what is left on disk."""
  return [sys.executable, "-c", f"import sys; sys.stderr.write({text!r} + '\\n'); "
          f"sys.exit({rc})"]


def files_of(folder: str) -> dict[str, bytes]:
  """A run folder's files and their bytes (the lock file of whichever run holds it aside)."""
  out = {}
  for root, _, names in os.walk(folder):
    for n in names:
      if n == ".lock":
        continue
      path = os.path.join(root, n)
      with open(path, "rb") as f:
        out[os.path.relpath(path, folder)] = f.read()
  return out


def overwrite_with_missing_data(tmp):
  """--overwrite whose data is missing: refused, and the old run is untouched."""
  tiny_run(f"{tmp}/w")
  before = files_of(f"{tmp}/w")
  out = run(RUN + TINY + [f"--workdir={tmp}/w", "--overwrite", "--dataset=avmnist",
                          f"--data_dir={tmp}/missing"])
  kept = files_of(f"{tmp}/w") == before
  return verdict(out.rc if kept else 99, out.err.strip().splitlines()[-1] +
                 ("" if kept else " BUT THE OLD RUN CHANGED"))


def overwrite_a_users_folder(tmp):
  os.makedirs(f"{tmp}/mine")
  with open(f"{tmp}/mine/thesis.tex", "w") as f:
    f.write("my work")
  return RUN + TINY + [f"--workdir={tmp}/mine", "--overwrite"]


def overwrite_replaces_after_an_epoch(tmp):
  """--overwrite that fails in its program (a method refusing the fusion): the old run is
  back; one that trains: the old run gone."""
  tiny_run(f"{tmp}/w", "--method=joint")
  before = files_of(f"{tmp}/w")
  bad = run(RUN + TINY + [f"--workdir={tmp}/w", "--overwrite", "--method=greedy",
                          "--fusion=sum"])
  if bad.rc != 2 or files_of(f"{tmp}/w") != before:
    return verdict(99, "the old run changed after a refused --overwrite: " + bad.err[-300:])
  good = run(RUN + TINY + [f"--workdir={tmp}/w", "--overwrite", "--method=joint", "--seed=3"])
  with open(f"{tmp}/w/summary.json") as f:
    seed = json.load(f)["seed"]
  left = os.path.exists(f"{tmp}/w/.replaced")
  return verdict(0 if good.rc == 0 and seed == 3 and not left else 99,
                 f"refused: {bad.err.strip().splitlines()[-1]}; then replaced (seed {seed})")


def resume_finished_without_checkpoints(tmp):
  tiny_run(f"{tmp}/w")
  import shutil
  shutil.rmtree(f"{tmp}/w/checkpoints")
  return RUN + TINY + [f"--workdir={tmp}/w", "--resume", "--learning_rate=0.5"]


def resume_on_other_data(tmp):
  data = synthetic_records(f"{tmp}/a")
  other = synthetic_records(f"{tmp}/b", seed=1)
  flags = TINY + ["--dataset=avmnist", "--batch_size=8", f"--workdir={tmp}/w"]
  out = run(RUN + flags + [f"--data_dir={data}"])
  assert out.rc == 0, out.err[-2000:]
  return RUN + flags + [f"--data_dir={other}", "--resume", "--epochs=3"]


def flipped_checkpoint_bytes(tmp):
  """Bytes flipped inside the latest checkpoint's arrays (it still reads): the checksum
  finds it, the run resumes from the one before. The arrays are zstd-compressed and which
  one lies where in orbax's data file follows the order its concurrent writes finished (it
  differs from run to run under load): a fixed offset sometimes lands in a frame's header
  (unreadable: the other cases) or in bytes no array uses (nothing changes). So the 64 bytes
  go where a copy of the checkpoint, flipped there, still reads with changed arrays."""
  tiny_run(f"{tmp}/w", "--epochs=3")
  latest = os.path.join(tmp, "w", "checkpoints", "2")
  biggest = max((os.path.join(r, n) for r, _, ns in os.walk(os.path.join(latest, "state"))
                 for n in ns if "ocdbt" in r or n.startswith("d")), key=os.path.getsize)
  probe = run([sys.executable, "-c", "import sys; from tests.failure_cases import "
               "flip_that_reads; print(flip_that_reads(*sys.argv[1:]))", latest,
               os.path.relpath(biggest, latest)])
  offset = (probe.out.strip().splitlines() or [""])[-1]
  if probe.rc != 0 or not offset.isdigit():
    return verdict(99, f"no 64 flipped bytes of {biggest} leave its checkpoint readable and "
                   f"changed: {probe.out[-300:]}{probe.err[-1500:]}")
  flip(biggest, int(offset))
  return RUN + TINY + [f"--workdir={tmp}/w", "--resume", "--epochs=4"]


def flip(path: str, offset: int, count: int = 64) -> None:
  with open(path, "r+b") as f:
    f.seek(offset)
    data = bytearray(f.read(count))
    f.seek(offset)
    f.write(bytes(b ^ 0xFF for b in data))


def flip_that_reads(checkpoint: str, rel: str) -> int | str:
  """The offset, nearest the middle of ``checkpoint``'s file ``rel``, where 64 flipped bytes
  leave the checkpoint's state readable and different ("none" if there is none)."""
  import shutil
  import jax
  import orbax.checkpoint as ocp

  def leaves(folder):
    state = ocp.PyTreeCheckpointer().restore(os.path.abspath(os.path.join(folder, "state")))
    return [np.asarray(x) for x in jax.tree.leaves(state)]

  before = leaves(checkpoint)
  size = os.path.getsize(os.path.join(checkpoint, rel))
  for frac in sorted(np.linspace(0.05, 0.95, 37), key=lambda f: abs(f - 0.5)):
    with tempfile.TemporaryDirectory() as t:
      copy = os.path.join(t, "copy")  # a fresh path: no reader caches the original's bytes
      shutil.copytree(checkpoint, copy)
      flip(os.path.join(copy, rel), int(size * frac))
      try:
        after = leaves(copy)
      except Exception:  # unreadable there
        continue
      if len(after) == len(before) and any(
          not np.array_equal(a, b, equal_nan=a.dtype.kind == "f") for a, b in zip(after, before)):
        return int(size * frac)
  return "none"


def two_runs_at_once(tmp):
  # the first one trains long enough to be running whatever the second's start-up takes
  p, err = started(RUN + TINY + ["--epochs=400", f"--workdir={tmp}/w"], tmp)
  try:
    deadline = time.monotonic() + START_WAIT
    while not (os.path.exists(f"{tmp}/w/.lock") and os.path.getsize(f"{tmp}/w/.lock")):
      if p.poll() is not None or time.monotonic() > deadline:
        return verdict(99, f"the first run took no lock (exit {p.poll()}): {read(err)[-1500:]}")
      time.sleep(0.2)
    second = run(RUN + TINY + [f"--workdir={tmp}/w", "--resume"])
    if p.poll() is not None:
      return verdict(99, f"the first run ended (exit {p.poll()}) before the second was "
                     f"refused: {read(err)[-1500:]}")
  finally:
    stop(p)
  return verdict(second.rc, second.err.strip().splitlines()[-1] if second.err.strip() else "")


def skipped_everything(tmp):
  return RUN + TINY + ["--learning_rate=1e9", "--skip_nonfinite", f"--workdir={tmp}/w"]


def sigterm_mid_run(tmp):
  p, err = started(RUN + TINY + ["--epochs=400", f"--workdir={tmp}/w"], tmp)
  try:
    if wait_for_checkpoint(p, os.path.join(tmp, "w", "checkpoints"), at_least=0) is None:
      return verdict(3, f"no checkpoint to stop after (exit {p.poll()}): {read(err)[-2000:]}")
    p.send_signal(signal.SIGTERM)
    rc = p.wait(timeout=STOP_WAIT)
  except subprocess.TimeoutExpired:
    return verdict(3, f"still running {STOP_WAIT} s after SIGTERM: {read(err)[-2000:]}")
  finally:
    stop(p)
  return verdict(rc, read(err).strip().splitlines()[-1])


def rereport_keeps_the_time(tmp):
  """A finished run run again (make run twice): re-reported, its training time kept."""
  tiny_run(f"{tmp}/w")
  with open(f"{tmp}/w/summary.json") as f:
    first = json.load(f)["train_seconds"]
  out = run(RUN + TINY + [f"--workdir={tmp}/w", "--resume"])
  with open(f"{tmp}/w/summary.json") as f:
    again = json.load(f)["train_seconds"]
  return verdict(out.rc if again == first else 99,
                 f"re-reported: train_seconds {again} (was {first})")


def population_member_diverges(tmp):
  return RUN + TINY + ["--method=joint", "--learning_rate=0.01,1e9", f"--workdir={tmp}/p"]


def a_list_of_epochs(tmp):
  return RUN + ["--epochs=2,3"]


def flagfile_including_itself(tmp):
  with open(f"{tmp}/flags", "w") as f:
    f.write(f"--epochs=2\n--flagfile={tmp}/flags\n")
  return RUN + [f"--flagfile={tmp}/flags"]


def binary_flagfile(tmp):
  with open(f"{tmp}/flags", "wb") as f:
    f.write(bytes(range(256)))
  return RUN + [f"--flagfile={tmp}/flags"]


def config_file(text: str, *flags: str):
  """A run whose --config file (``{tmp}/cfg.py``) holds ``text``."""
  def build(tmp):
    with open(f"{tmp}/cfg.py", "w") as f:
      f.write(text)
    return RUN + TINY + [f"--config={tmp}/cfg.py", f"--workdir={tmp}/w", *flags]
  return build


def configdict_without_ml_collections(tmp):
  """An ml_collections config file (a dataset preset) where ml_collections is not installed."""
  return [sys.executable, "-c", "import sys, importlib.abc, runpy\n"
          "class Block(importlib.abc.MetaPathFinder):\n"
          "  def find_spec(self, name, path, target=None):\n"
          "    if name.split('.')[0] == 'ml_collections':\n"
          "      raise ModuleNotFoundError('not installed: ' + name, name=name)\n"
          "sys.meta_path.insert(0, Block())\n"
          "sys.argv = ['experiments.run'] + sys.argv[1:]\n"
          "runpy.run_module('experiments.run', run_name='__main__', alter_sys=True)\n",
          "--config=experiments/configs/avmnist.py", f"--workdir={tmp}/w"]


def resume_another_layout(tmp):
  """--resume of a population whose runs lie in <workdir>/learning_rate=0.01/seed<k>, the
  command naming <workdir>/seed<k>: refused, no fresh runs beside the old ones."""
  member = os.path.join(tmp, "w", "learning_rate=0.01", "seed0")
  os.makedirs(member)
  open(os.path.join(member, "metrics.jsonl"), "w").close()
  return RUN + TINY + [f"--workdir={tmp}/w", "--seeds=0,1", "--learning_rate=0.01", "--resume"]


def no_gpu(tmp):
  return [sys.executable, "-c", "import os, sys; os.environ['JAX_PLATFORMS'] = 'cuda'; "
          "from experiments.run import main; sys.exit(main(['--tiny']))"]


def prep_out_dir_is_a_file(tmp):
  open(f"{tmp}/file", "w").close()
  cmd = prep_avmnist(tmp)
  return cmd[:-1] + [f"--out_dir={tmp}/file"]


def two_config_files(tmp):
  with open(f"{tmp}/cfg2.py", "w") as f:
    f.write("config = dict(width=4)\n")
  return config_file("config = dict(epochs=2)")(tmp) + [f"--config={tmp}/cfg2.py"]


def run_inside_a_run(tmp):
  """A fresh run whose --workdir lies inside a (single) run's folder."""
  os.makedirs(f"{tmp}/w")
  with open(f"{tmp}/w/metrics.jsonl", "w") as f:
    f.write('{"epoch": 0}\n')
  return RUN + TINY + [f"--workdir={tmp}/w/seed0"]


def side(module: str, *args: str, setup=None):
  def build(tmp):
    if setup is not None:
      setup(tmp)
    return [sys.executable, "-m", module, *[a.format(tmp=tmp) for a in args]]
  return build


def a_finished_run(tmp):
  tiny_run(f"{tmp}/runs/a")


def out_in_use(tmp):
  """Another experiments.results holding --out's lock (for 60 s)."""
  os.makedirs(f"{tmp}/out", exist_ok=True)
  holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from inforeg_jax.workdir "
                             "import Lock; Lock(sys.argv[1]); print('held', flush=True); "
                             "time.sleep(60)", f"{tmp}/out"], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True)
  assert holder.stdout.readline().strip() == "held"


def damaged_record(tmp):
  os.makedirs(f"{tmp}/docs/synthetic/records")
  with open(f"{tmp}/docs/synthetic/records/all.jsonl", "w") as f:
    f.write('{"fold": null, "key": "{}", "se\n')


RESULTS = ["experiments.results", "--tables=epochs", "--datasets=synthetic", "--out={tmp}/out",
           "--docs={tmp}/docs"]


def two_copies_of_a_seed(tmp):
  tiny_run(f"{tmp}/runs/a")
  import shutil
  shutil.copytree(f"{tmp}/runs/a", f"{tmp}/runs/b")


def truncated_summary(tmp):
  tiny_run(f"{tmp}/runs/a")
  with open(f"{tmp}/runs/a/summary.json", "r+") as f:
    f.truncate(40)


def truncated_metrics(tmp):
  tiny_run(f"{tmp}/runs/a")
  with open(f"{tmp}/runs/a/metrics.jsonl", "r+") as f:
    f.truncate(30)


def gradcos_keeps_a_damaged_checkpoint(tmp):
  tiny_run(f"{tmp}/w")
  latest = os.path.join(tmp, "w", "checkpoints", "1")
  for folder, _, files in os.walk(latest):
    for f in files:
      if f != "_CHECKPOINT_METADATA":
        with open(os.path.join(folder, f), "wb") as fh:
          fh.write(b"\x00garbage")
  before = sorted(os.listdir(f"{tmp}/w/checkpoints"))
  out = run([sys.executable, "-m", "experiments.analyze", "gradcos", f"{tmp}/w",
             "--modality=visual", "--batches=2", f"--out={tmp}/fig"])
  kept = sorted(os.listdir(f"{tmp}/w/checkpoints")) == before
  line = next((l for l in out.err.splitlines() if "checkpoint" in l), out.err[-200:])
  return verdict(out.rc if kept else 99, line + ("" if kept else " AND IT WAS DELETED"))



def synthetic_records(tmp, seed: int = 0, **damage) -> str:
  """A tiny prepared dataset written with data_prep's writer (another seed: other data), then
  damaged."""
  from inforeg_jax.data import records
  rng = np.random.default_rng(seed)
  n = 64
  arrays = {"audio": rng.normal(size=(n, 12, 10)).astype(np.float32),
            "visual": rng.normal(size=(n, 1, 12, 12, 1)).astype(np.float32),
            "label": (np.arange(n) % 10).astype(np.int32)}
  out = f"{tmp}/data"
  os.makedirs(tmp, exist_ok=True)
  records.write_dataset(out, {"train": arrays, "val": arrays, "test": arrays}, {
      "name": "avmnist", "num_classes": 10, "frame_crop": None,
      "kinds": {"audio": "spectrogram", "visual": "frames"}})
  split_dir = os.path.join(out, records.read_manifest(out)["splits"]["train"]["dir"])
  if "labels" in damage:
    np.save(os.path.join(split_dir, "label.npy"), np.full(n, damage["labels"], np.int32))
  if "random_bytes" in damage:
    path = os.path.join(split_dir, "audio.npy")
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
      f.seek(128)
      f.write(rng.integers(0, 256, size - 128, dtype=np.uint8).tobytes())
  if "truncate" in damage:
    path = os.path.join(split_dir, "audio.npy")
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)
  if "manifest" in damage:
    with open(os.path.join(out, "manifest.json"), "w") as f:
      f.write('{"name": "avmn')
  return out


def prepared(**damage):
  def build(tmp):
    data = synthetic_records(tmp, **damage)
    return RUN + TINY + ["--dataset=avmnist", f"--data_dir={data}", "--batch_size=8",
                         f"--workdir={tmp}/w"]
  return build


def prep_avmnist(tmp, *, wav=None, mnist_gz_truncated=False):
  fsdd, mnist = os.path.join(tmp, "fsdd"), os.path.join(tmp, "mnist")
  os.makedirs(fsdd)
  os.makedirs(mnist)
  import soundfile
  rng = np.random.default_rng(0)
  for d in range(10):
    for i in range(12):
      soundfile.write(os.path.join(fsdd, f"{d}_spk_{i}.wav"),
                      (0.3 * rng.normal(size=3000)).astype(np.float32), 8000)
  if wav == "nan":
    soundfile.write(os.path.join(fsdd, "3_spk_40.wav"), np.full(3000, np.nan, np.float32), 8000)
  if wav == "truncated":
    path = os.path.join(fsdd, "4_spk_41.wav")
    soundfile.write(path, (0.3 * rng.normal(size=3000)).astype(np.float32), 8000)
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)
  n = 300
  images = rng.integers(0, 255, size=(n, 28, 28), dtype=np.uint8).tobytes()
  head = (2051).to_bytes(4, "big") + n.to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
  payload = head + images
  if mnist_gz_truncated:
    raw = gzip.compress(payload)
    with open(os.path.join(mnist, "t10k-images-idx3-ubyte.gz"), "wb") as f:
      f.write(raw[:len(raw) // 2])
  else:
    with gzip.open(os.path.join(mnist, "t10k-images-idx3-ubyte.gz"), "wb") as f:
      f.write(payload)
  with gzip.open(os.path.join(mnist, "t10k-labels-idx1-ubyte.gz"), "wb") as f:
    f.write((2049).to_bytes(4, "big") + n.to_bytes(4, "big")
            + (np.arange(n) % 10).astype(np.uint8).tobytes())
  return [sys.executable, "-m", "data_prep.avmnist", f"--fsdd_dir={fsdd}",
          f"--mnist_dir={mnist}", f"--out_dir={tmp}/out"]


CASES: list[Case] = [
    Case("second run into a used workdir", used_workdir, 2, "already holds a run"),
    Case("--resume with a changed config", resume_changed_config, 2,
         "--resume with a different config: --batch_size=16 -> 8"),
    Case("--resume with fewer epochs than done", resume_fewer_epochs, 2,
         "the checkpoint has finished 3 epochs"),
    Case("--resume into a workdir with no checkpoint", resume_without_checkpoint, 0,
         "no checkpoint yet; starting a fresh run"),
    Case("corrupt latest checkpoint", corrupt_latest_checkpoint, 0,
         "could not read checkpoint 1"),
    Case("every checkpoint corrupt", all_checkpoints_corrupt, 2, "no readable checkpoint"),
    Case("--learning_rate=1e9 (NaN loss)", diverging_learning_rate, 2, "non-finite"),
    Case("--learning_rate=1e3 (NaN Tr(F))", nan_trace_learning_rate, 2, "non-finite"),
    Case("unwritable workdir", workdir_under_a_file, 2, "cannot write to --workdir"),
    Case("missing prepared dataset", missing_dataset, 2, "python -m data_prep.cremad"),
    Case("Ctrl-C mid-run", interrupted, 130, "interrupted"),
    Case("--resume=on", bad_flag("--resume=on"), 2, "expected true or false"),
    Case("--ogm_ge.noise=enable", bad_flag("--ogm_ge.noise=enable"), 2, "expected true or false"),
    Case("--epoch=2 (an abbreviation)", bad_flag("--epoch=2"), 2, "unrecognized arguments"),
    Case("--eval_batch_size=0", bad_flag("--eval_batch_size=0"), 2, "--eval_batch_size must be"),
    Case("--width=0", bad_flag("--width=0"), 2, "--width must be >= 1"),
    Case("--seed=-1", bad_flag("--seed=-1"), 2, "--seed must be >= 0"),
    Case("--method=nope", bad_flag("--method=nope"), 2, "--method must be one of"),
    Case("labels out of range (200)", prepared(labels=200), 2, "label", group="data"),
    Case("labels out of range (-3)", prepared(labels=-3), 2, "label", group="data"),
    Case("random bytes in audio.npy", prepared(random_bytes=True), 2, "audio.npy", group="data"),
    Case("truncated audio.npy", prepared(truncate=True), 2, "audio.npy", group="data"),
    Case("damaged manifest.json", prepared(manifest=True), 2, "manifest.json", group="data"),
    Case("a wav of NaN samples", lambda t: prep_avmnist(t, wav="nan"), 0, "skipped",
         group="data"),
    Case("a half-truncated wav", lambda t: prep_avmnist(t, wav="truncated"), 0, "skipped",
         group="data"),
    Case("a truncated MNIST .gz", lambda t: prep_avmnist(t, mnist_gz_truncated=True), 2,
         "t10k-images-idx3-ubyte.gz", group="data"),
    Case("data prep --out_dir that is a file", prep_out_dir_is_a_file, 2, "--out_dir",
         group="data"),
    # runs that could lose or mix data
    Case("--overwrite with missing data (old run untouched)", overwrite_with_missing_data, 2,
         "no prepared avmnist", group="loss"),
    Case("--overwrite of a folder with a user's files", overwrite_a_users_folder, 2,
         "not a run's (thesis.tex)", group="loss"),
    Case("--overwrite refused in its program, then done", overwrite_replaces_after_an_epoch, 0,
         "then replaced (seed 3)", group="loss"),
    Case("--resume of a finished run whose checkpoints are gone",
         resume_finished_without_checkpoints, 2, "no checkpoint to continue it from",
         group="loss"),
    Case("--resume on other data", resume_on_other_data, 2, "--resume on other data",
         group="loss"),
    Case("bytes flipped in the latest checkpoint", flipped_checkpoint_bytes, 0,
         "does not match its checksum", group="loss"),
    Case("two runs into one workdir at once", two_runs_at_once, 2, "in use by another run",
         group="loss"),
    Case("--skip_nonfinite with every step skipped", skipped_everything, 2,
         "non-finite and skipped", group="loss"),
    Case("a finished run re-reported keeps its time", rereport_keeps_the_time, 0,
         "re-reported", group="loss"),
    Case("a population member diverging stops alone", population_member_diverges, 2,
         "1 of 2 members stopped", group="loss"),
    Case("SIGTERM mid-run", sigterm_mid_run, 130, "stopped by SIGTERM"),
    Case("--threshold=nan", bad_flag("--threshold=nan"), 2, "must be a finite number"),
    Case("--learning_rate=inf", bad_flag("--learning_rate=inf"), 2, "must be a finite number"),
    Case("--seed=99999999999", bad_flag("--seed=99999999999"), 2, "--seed must be <="),
    Case("--data_dir with the built-in data", bad_flag("--data_dir=somewhere"), 2,
         "built in"),
    Case("--agm.alpha with --method=joint", bad_flag("--agm.alpha=2"), 2, "another method"),
    Case("--epochs=2,3 (a list of a program setting)", a_list_of_epochs, 2,
         "--epochs takes one value"),
    Case("a flagfile including itself", flagfile_including_itself, 2, "includes itself"),
    Case("a binary flagfile", binary_flagfile, 2, "not a text file"),
    # config files, held to the flags' rules (each line names the file and the setting)
    Case("a config file's string where a number belongs", config_file("config = dict("
                                                                        "epochs='5')"), 2,
         "cfg.py: epochs expects int, got '5'"),
    Case("a config file's 2.5 for epochs", config_file("config = dict(epochs=2.5)"), 2,
         "cfg.py: epochs expects int, got 2.5"),
    Case("a config file's bool as a string", config_file("config = dict(resume='true')"), 2,
         "cfg.py: resume expects true or false (a bool), got 'true'"),
    Case("a config file's bool as an int", config_file("config = dict(resume=1)"), 2,
         "cfg.py: resume expects true or false (a bool), got 1"),
    Case("a config file's empty list", config_file("config = dict(learning_rate=[])"), 2,
         "cfg.py: learning_rate is an empty list"),
    Case("a config file's list of a program setting", config_file("config = dict(epochs=[2, 3])"),
         2, "cfg.py: epochs=[2, 3] is a list: epochs takes one value"),
    Case("a config file's list of one value", config_file("config = dict(seed=[3])"), 2,
         "cfg.py: seed=[3] lists one value"),
    Case("a config file's list with a value twice", config_file("config = dict(seed=[0, 0])"), 2,
         "cfg.py: seed lists a value twice"),
    Case("a config file's unknown setting", config_file("config = dict(nope=1)"), 2,
         "cfg.py: unknown setting(s) nope"),
    Case("a config file's NaN", config_file("config = dict(learning_rate=float('nan'))"), 2,
         "cfg.py: learning_rate must be a finite number"),
    Case("a config file's setting out of range", config_file("config = dict(width=0)"), 2,
         "cfg.py: width must be >= 1"),
    Case("a config file calling sys.exit(0)", config_file("import sys\nsys.exit(0)\n"), 2,
         "called sys.exit(0) while being read"),
    Case("a config file raising", config_file("raise RuntimeError('boom')\n"), 2,
         "cfg.py: RuntimeError: boom"),
    Case("a config file defining neither config nor get_config", config_file("x = 1\n"), 2,
         "defines neither `config = dict(name=value, ...)` nor `get_config()`"),
    Case("a ConfigDict config file without ml_collections", configdict_without_ml_collections, 2,
         "ml_collections is not installed: pip install -e '.[train]'"),
    Case("two --config files", two_config_files, 2,
         "a run reads one config file (they are not merged)"),
    Case("a config file setting one value twice",
         config_file("config = {'agm': {'alpha': 2.0}, 'agm.alpha': 3.0}"), 2,
         "agm.alpha is given twice"),
    Case("--config.epochs=x", config_file("config = dict(epochs=2)", "--config.epochs=x"), 2,
         "--config.epochs expects int, got 'x'"),
    Case("--config.epochs without --config", bad_flag("--config.epochs=3"), 2,
         "no --config is given"),
    # flags that contradict each other or make a population ambiguous
    Case("--seeds=3, (a list of one value)", bad_flag("--seeds=3,"), 2,
         "--seeds=3, lists one value: one run is --seeds=3"),
    Case("--seed and --seeds disagreeing", lambda tmp: RUN + ["--seed=1", "--seeds=2,3"], 2,
         "--seed=1 and --seeds=2,3 contradict each other"),
    Case("--epochs and --config.epochs disagreeing",
         config_file("config = dict(epochs=2)", "--epochs=3", "--config.epochs=4"), 2,
         "--epochs=3 and --config.epochs=4 contradict each other"),
    Case("a run inside another run's folder", run_inside_a_run, 2,
         "would nest with the run in"),
    Case("--resume with --overwrite", lambda tmp: RUN + ["--resume", "--overwrite"], 2,
         "--resume and --overwrite exclude each other"),
    Case("--resume naming another layout of member folders", resume_another_layout, 2,
         "learning_rate=0.01/seed0, but this command names"),
    Case("JAX_PLATFORMS=cuda without a GPU", no_gpu, 2, "no usable backend"),
    # the side commands
    Case("table with two copies of one seed", side("experiments.table", "{tmp}/runs",
                                                   setup=two_copies_of_a_seed), 2, "seed",
         group="side"),
    Case("table over a truncated summary.json", side("experiments.table", "{tmp}/runs",
                                                     setup=truncated_summary), 2,
         "summary.json", group="side"),
    Case("analyze on a truncated metrics.jsonl",
         side("experiments.analyze", "traces", "{tmp}/runs/a", "--out={tmp}/fig",
              setup=truncated_metrics), 2, "metrics.jsonl", group="side"),
    Case("analyze an unknown modality",
         side("experiments.analyze", "gradcos", "{tmp}/runs/a", "--modality=smell",
              "--out={tmp}/fig", setup=a_finished_run), 2, "--modality=smell", group="side"),
    Case("analyze gradcos keeps a damaged checkpoint", gradcos_keeps_a_damaged_checkpoint, 0,
         "could not read checkpoint 1", group="side"),
    Case("sweep with a bad seed list", side("experiments.sweep", "--out={tmp}/s",
                                            "--seeds=0,x"), 2, "--seeds", group="side"),
    Case("bench --steps=0", side("experiments.bench", "--steps=0"), 2, "--steps=0",
         group="side"),
    Case("bench with an unknown method", side("experiments.bench", "--methods=nope"), 2,
         "nope", group="side"),
    Case("results without the data", side("experiments.results", "--datasets=avmnist_hard",
                                          "--data_root={tmp}/nodata", "--out={tmp}/out"), 2,
         "no prepared avmnist_hard", group="side"),
    Case("results --report-only with runs missing", side(*RESULTS, "--report-only"), 2,
         "runs are missing", group="side"),
    Case("results with --run_flags setting the seed", side(*RESULTS, "--run_flags=--seed=3"), 2,
         "the study sets --seed itself", group="side"),
    Case("sweep over one run twice", side("experiments.sweep", "--out={tmp}/s", "--tiny",
                                          "--grid=learning_rate=0.1,0.10"), 2,
         "would be one run", group="side"),
    Case("results while another holds --out", side(*RESULTS, setup=out_in_use), 2,
         "in use by another experiments.results", group="side"),
    Case("results over a damaged record", side(*RESULTS, "--report-only",
                                               setup=damaged_record), 2,
         "is not a run's record", group="side"),
    Case("a vectorised population too large to compile on the CPU",
         lambda tmp: RUN + TINY + ["--execution=vectorised", f"--workdir={tmp}/pop",
                                   "--seeds=" + ",".join(map(str, range(65)))], 2,
         "compiles a convolution per member"),
]


def check(case: Case, tmp: str) -> tuple[bool, Outcome]:
  """Runs the case; it is answered clearly when the status and the line are as expected
  and nothing printed a traceback."""
  out = run(case.build(tmp))
  text = out.err + out.out
  ok = out.rc == case.rc and case.says in text and "Traceback" not in text
  return ok, out


def main() -> int:
  rows, answered = [], 0
  for case in CASES:
    with tempfile.TemporaryDirectory() as tmp:
      ok, out = check(case, tmp)
    answered += ok
    line = next((l for l in (out.err + out.out).splitlines()
                 if case.says and case.says in l), (out.err or out.out).strip()[-200:])
    rows.append(f"| {case.name} | {out.rc} | {'yes' if ok else 'NO'} | `{line.strip()[:150]}` |")
    print(rows[-1], flush=True)
  text = "\n".join([
      "# Failure modes: bad inputs tried and how each is answered",
      "",
      f"Command: `python -m tests.failure_cases` ({time.strftime('%Y-%m-%d')}, the project's "
      "2-core CPU machine). Each case runs one real command; it counts as answered clearly "
      "when the exit status is the expected one, the expected line is printed and no "
      "traceback is. The same cases run in `make test` (tests/test_failure_modes.py).",
      "",
      f"**{answered} of {len(CASES)} answered clearly.**",
      "",
      "| case | exit status | answered clearly | the line |",
      "| --- | ---: | --- | --- |",
      *rows, ""])
  with open(os.path.join(ROOT, "docs", "FAILURE_MODES.md"), "w") as f:
    f.write(text)
  return 0 if answered == len(CASES) else 1


if __name__ == "__main__":
  sys.exit(main())
