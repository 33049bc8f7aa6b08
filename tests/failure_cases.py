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
  p = subprocess.Popen(RUN + TINY + [f"--workdir={tmp}/w", "--resume", "--epochs=400"],
                       cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  ckpts = os.path.join(tmp, "w", "checkpoints")
  for _ in range(600):  # wait for a checkpoint after epoch 0 (pruning may remove 1), interrupt
    time.sleep(0.5)
    if any(d.isdigit() and int(d) >= 1 for d in os.listdir(ckpts)):
      break
  p.send_signal(signal.SIGINT)
  out, err = p.communicate(timeout=300)
  with open(f"{tmp}/interrupt.json", "w") as f:
    json.dump({"rc": p.returncode, "err": err}, f)
  return [sys.executable, "-c", "import json, sys; r = json.load(open(sys.argv[1])); "
          "sys.stderr.write(r['err']); sys.exit(r['rc'])", f"{tmp}/interrupt.json"]


def synthetic_records(tmp, **damage) -> str:
  """A tiny prepared dataset written with data_prep's writer, then damaged."""
  from inforeg_jax.data import records
  rng = np.random.default_rng(0)
  n = 64
  arrays = {"audio": rng.normal(size=(n, 12, 10)).astype(np.float32),
            "visual": rng.normal(size=(n, 1, 12, 12, 1)).astype(np.float32),
            "label": (np.arange(n) % 10).astype(np.int32)}
  out = f"{tmp}/data"
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
