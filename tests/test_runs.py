"""experiments.runs, the one reader of run folders, and experiments.table on top of it: fake
run folders in the formats `inforeg_jax.members` writes (no training, no JAX)."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from experiments import runs, table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AVMNIST = {"version": "v-20261201-120000-a1b2c3", "sha256": "ab" * 32, "name": "avmnist",
           "variant": "hard", "fold": 0}


def write_run(folder, seed=0, acc=0.7, epochs=3, data=None, stopped=None, summary=True,
              rows=None, method="joint", **config):
  """A run's folder as a (single or member) run leaves it: metrics.jsonl (``rows`` epochs,
  all by default), test_predictions.npy, and summary.json (``summary=False``: none yet)."""
  os.makedirs(folder, exist_ok=True)
  cfg = {"dataset": "avmnist" if data else "synthetic", "method": method, "seed": seed,
         "epochs": epochs, "modalities": "", "fusion": "concat", "window": "auto",
         "workdir": str(folder), "resume": False, "overwrite": False, "eval_batch_size": 256,
         "data_dir": "", "skip_nonfinite": False, "checkpoint_every": 1, "plots": True,
         "learning_rate": 0.01, **config}
  history = [{"epoch": e, "train_loss": 1.0 / (e + 1), "acc": acc - 0.01 * (epochs - 1 - e),
              "acc_audio": acc - 0.1, "acc_visual": acc - 0.2, "trace_audio": 1.0 + e,
              "trace_visual": 2.0 + e, "window": 1.0, "time_s": float(e)}
             for e in range(epochs if rows is None else rows)]
  with open(os.path.join(folder, "metrics.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in history)
  predictions = np.arange(20, dtype=np.int16) % 10
  np.save(os.path.join(folder, "test_predictions.npy"), predictions)
  if not summary:
    return folder
  pick = lambda r: {k: v for k, v in r.items() if k == "acc" or k.startswith("acc_")}
  s = {"dataset": cfg["dataset"], "method": method, "seed": seed, "epochs": epochs,
       "window": "prime", "workdir": str(folder), "population": 1, "accuracy_unit": "fraction",
       "final": pick(history[-1]), "selected": {"by": "acc", "epoch": epochs - 1,
                                                **pick(history[-1])},
       "best": {"acc": history[-1]["acc"], "epoch": epochs - 1}, "skipped_steps": 0,
       "train_seconds": 3.0, "config": cfg, "data": data,
       "sessions": [{"first_epoch": 0, "population": 1, "execution": "vectorised",
                     "backend": "cpu", "num_devices": 1, "jax": "0.5.0", "xla_flags": "",
                     "commit": "0" * 40, "dirty": False, "wall_s": {"train": 1.0}}],
       "predictions_sha256": hashlib.sha256(predictions.tobytes()).hexdigest()}
  if stopped:
    s["stopped"] = stopped
  with open(os.path.join(folder, "summary.json"), "w") as f:
    json.dump(s, f, indent=2)
  return folder


def write_stopped_in_first_epoch(folder, seed):
  """A member stopped in its first epoch: its summary says why, and little else."""
  os.makedirs(folder)
  with open(os.path.join(folder, "summary.json"), "w") as f:
    json.dump({"workdir": str(folder), "stopped": "non-finite loss at step 3 (epoch 0)",
               "config": {"dataset": "synthetic", "method": "joint", "seed": seed,
                          "epochs": 3}}, f)


def rows_of(text):
  return [line for line in text.splitlines() if line.startswith("|")][2:]


def command(*args):
  """``python -m experiments.table ARGS``: (exit status, stdout, stderr)."""
  proc = subprocess.run([sys.executable, "-m", "experiments.table", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)
  return proc.returncode, proc.stdout, proc.stderr


def one_error_line(stderr: str) -> str:
  assert "Traceback" not in stderr, stderr
  assert stderr.startswith("error: ") and stderr.strip().count("\n") == 0, stderr
  return stderr


# ---------------------------------------------------------------- what a row pools


@pytest.mark.parametrize("field,other", [("version", "v-20261224-090000-d4e5f6"),
                                         ("fold", 1), ("variant", "easy"),
                                         ("sha256", "cd" * 32)])
def test_two_datasets_are_never_one_row(tmp_path, field, other):
  write_run(tmp_path / "a" / "seed0", seed=0, acc=0.6, data=AVMNIST)
  write_run(tmp_path / "a" / "seed1", seed=1, acc=0.7, data=AVMNIST)
  write_run(tmp_path / "b" / "seed2", seed=2, acc=0.9, data={**AVMNIST, field: other})
  text = table.render([str(tmp_path)])
  rows = rows_of(text)
  assert len(rows) == 2, text
  assert "| data |" in text
  assert sorted(r.rstrip().rsplit("| ", 1)[1] for r in rows) == ["1 |", "2 |"]
  labels = [r.split(" | ")[1] for r in rows]
  assert len(set(labels)) == 2 and all(lab.startswith("avmnist ") for lab in labels), labels
  assert "avmnist hard fold 0 v-20261201-120000-a1b2c3" in labels[0] + labels[1]
  if field == "sha256":  # the same name, variant, fold and version: told apart by checksum
    assert sorted(lab.rsplit(" ", 1)[1] for lab in labels) == ["ab" * 6, "cd" * 6]
  setting_a = runs.read(str(tmp_path / "a" / "seed0")).setting()
  assert setting_a["data"] == AVMNIST and "seed" not in setting_a


def test_the_built_in_data_and_an_unrecorded_one_are_named(tmp_path):
  write_run(tmp_path / "new", seed=0, acc=0.6)  # data: null (synthetic)
  old = write_run(tmp_path / "old", seed=0, acc=0.7)
  s = json.loads((old / "summary.json").read_text())
  del s["data"]  # a summary from before the data was recorded
  (old / "summary.json").write_text(json.dumps(s))
  labels = sorted(r.split(" | ")[1] for r in rows_of(table.render([str(tmp_path)])))
  assert labels == ["built in", "not recorded"]


def test_settings_that_do_not_change_a_number_pool(tmp_path):
  write_run(tmp_path / "a", seed=0, acc=0.6)
  write_run(tmp_path / "b", seed=1, acc=0.8, checkpoint_every=5, plots=False, resume=True,
            eval_batch_size=64)
  write_run(tmp_path / "c", seed=2, acc=0.9, learning_rate=0.02)
  rows = rows_of(table.render([str(tmp_path)]))
  assert len(rows) == 2
  assert "0.700 ± 0.141" in rows[0] and rows[0].endswith("| 2 |"), rows


def test_a_stopped_member_is_left_out_of_its_row_and_said(tmp_path):
  write_run(tmp_path / "seed0", seed=0, acc=0.6)
  write_run(tmp_path / "seed1", seed=1, acc=0.9, stopped="non-finite loss at step 7 (epoch 2)")
  write_stopped_in_first_epoch(tmp_path / "seed2", seed=2)
  said = []
  rows = rows_of(table.render([str(tmp_path)], warn=said.append))
  assert len(rows) == 1 and "| 0.600 |" in rows[0] and rows[0].endswith("| 1 |"), rows
  assert said == [f"left out: {tmp_path}/seed1: stopped: non-finite loss at step 7 (epoch 2)",
                  f"left out: {tmp_path}/seed2: stopped: non-finite loss at step 3 (epoch 0)"]
  assert [r.status for r in runs.find([str(tmp_path)])] == ["finished", "stopped", "stopped"]


def test_a_diverged_final_accuracy_is_left_out(tmp_path):
  write_run(tmp_path / "seed0", seed=0, acc=0.6)
  bad = write_run(tmp_path / "seed1", seed=1, acc=0.9)
  (bad / "summary.json").write_text((bad / "summary.json").read_text().replace(
      '"final": {\n    "acc": 0.9', '"final": {\n    "acc": NaN'))
  run = runs.read(str(bad))
  assert run.status == "stopped" and "diverged" in run.why
  said = []
  rows = rows_of(table.render([str(tmp_path)], warn=said.append))
  assert rows[0].endswith("| 1 |") and len(said) == 1


def test_unfinished_runs_are_left_out_on_stderr(tmp_path):
  write_run(tmp_path / "done", seed=0, acc=0.6)
  write_run(tmp_path / "training", seed=1, rows=1, summary=False)  # no summary yet
  stale = write_run(tmp_path / "resumed", seed=2, acc=0.9, epochs=3)
  write_run(tmp_path / "later", seed=2, acc=0.95, epochs=5, rows=4, summary=False)
  shutil.copy(tmp_path / "later" / "metrics.jsonl", stale / "metrics.jsonl")  # a 2nd session
  shutil.rmtree(tmp_path / "later")
  assert runs.read(str(stale)).status == "unfinished"
  assert "summary.json is of 3 epochs, its metrics.jsonl of 4" in runs.read(str(stale)).why
  code, out, err = command(str(tmp_path))
  assert code == 0 and len(rows_of(out)) == 1 and rows_of(out)[0].endswith("| 1 |")
  assert err.splitlines() == [
      f"left out: {tmp_path}/resumed: its summary.json is of 3 epochs, its metrics.jsonl of 4: "
      "a later session has not finished",
      f"left out: {tmp_path}/training: no summary.json yet (training, killed, or stopped: see "
      "its log.txt)"]
  shutil.rmtree(tmp_path / "done")
  code, out, err = command(str(tmp_path))
  assert code == 2 and err.splitlines()[-1] == f"error: no finished run under {tmp_path} (2 " \
                                               "left out)"


def test_a_second_copy_of_a_seed_is_refused_naming_both(tmp_path):
  first = write_run(tmp_path / "old" / "seed0", seed=0, acc=0.6)
  shutil.copytree(first, tmp_path / "new" / "seed0")  # its summary names the old folder
  found = runs.find([str(tmp_path)])
  with pytest.raises(SystemExit) as e:
    runs.group(found)
  assert str(e.value) == (f"error: {tmp_path}/new/seed0 and {tmp_path}/old/seed0 are both seed 0 "
                          "of one setting: keep one of them (or pass only one of the folders)")
  # a stopped copy is left out, not counted twice
  write_run(tmp_path / "new" / "seed0", seed=0, acc=0.6, stopped="non-finite loss")
  groups, left_out = runs.group(runs.find([str(tmp_path)]))
  assert [len(g) for g in groups.values()] == [1] and len(left_out) == 1


def test_a_set_aside_run_and_checkpoints_are_not_runs(tmp_path):
  run = write_run(tmp_path / "seed0", seed=0, acc=0.6)
  write_run(run / ".replaced", seed=0, acc=0.1)  # the run --overwrite replaced
  write_run(run / "checkpoints" / "2", seed=0, acc=0.2)
  assert [r.path for r in runs.find([str(tmp_path)])] == [str(run)]
  assert rows_of(table.render([str(tmp_path)]))[0].endswith("| 1 |")
  # one folder given twice, and as its summary.json: read once
  assert len(runs.find([str(tmp_path), str(run), str(run / "summary.json")])) == 1


# ---------------------------------------------------------------- damaged files


def truncate(path, keep):
  with open(path, "r+b") as f:
    f.truncate(keep)


@pytest.mark.parametrize("name,damage,says", [
    ("summary.json", lambda p: truncate(p, 40), "summary.json is not valid JSON"),
    ("summary.json", lambda p: p.write_text("[1, 2]"), "summary.json is not a run's summary"),
    ("summary.json", lambda p: p.write_bytes(b"\xff\xfe{"), "summary.json is not valid JSON"),
    ("summary.json", lambda p: p.write_text(p.read_text().replace('"seed": 0', '"seed": "x"')),
     "summary.json is not a run's summary"),
    ("metrics.jsonl", lambda p: truncate(p, os.path.getsize(p) - 20),
     "metrics.jsonl: line 3 is not an epoch's JSON"),
    ("metrics.jsonl", lambda p: p.write_text("[]\n"), "metrics.jsonl: line 1 is not"),
])
def test_a_damaged_file_is_one_line_naming_it(tmp_path, name, damage, says):
  write_run(tmp_path / "good", seed=1)
  bad = write_run(tmp_path / "bad", seed=0)
  damage(bad / name)
  with pytest.raises(SystemExit) as e:
    runs.read(str(bad))
  assert str(e.value).startswith(f"error: {bad}/{says}") and "\n" not in str(e.value)
  assert str(e.value).endswith("rerun it with --resume, or remove the folder")
  code, out, err = command(str(tmp_path))
  assert code == 2 and out == ""
  assert one_error_line(err).startswith(f"error: {bad}/{says}")


def test_predictions_are_checked_against_their_checksum(tmp_path):
  run = runs.read(str(write_run(tmp_path / "a")))
  np.testing.assert_array_equal(run.predictions(), np.arange(20) % 10)
  path = tmp_path / "a" / "test_predictions.npy"
  values = np.load(path)
  values[3] += 1  # one prediction flipped
  np.save(path, values)
  with pytest.raises(SystemExit) as e:
    run.predictions()
  assert str(e.value) == (f"error: {path} does not match its summary's predictions_sha256 "
                          "(damaged, or written by another session): rerun it with --resume, "
                          "or remove the folder")
  truncate(path, os.path.getsize(path) - 7)
  with pytest.raises(SystemExit) as e:
    run.predictions()
  assert str(e.value).startswith(f"error: cannot read {path} (") and "\n" not in str(e.value)
  path.unlink()
  with pytest.raises(SystemExit, match="cannot read"):
    run.predictions()


def test_predictions_of_an_older_summary_load_unchecked_and_unfinished_ones_not(tmp_path):
  folder = write_run(tmp_path / "a")
  s = json.loads((folder / "summary.json").read_text())
  del s["predictions_sha256"]
  (folder / "summary.json").write_text(json.dumps(s))
  np.save(folder / "test_predictions.npy", np.zeros(20, np.int16))
  assert runs.read(str(folder)).predictions().sum() == 0
  (folder / "summary.json").unlink()
  with pytest.raises(SystemExit, match="is not finished"):
    runs.read(str(folder)).predictions()


def test_rows_and_a_folder_without_a_run(tmp_path):
  folder = write_run(tmp_path / "a", epochs=3)
  assert [r["epoch"] for r in runs.rows(str(folder))] == [0, 1, 2]
  (folder / "metrics.jsonl").write_text("")
  with pytest.raises(SystemExit, match="holds no epoch yet"):
    runs.rows(str(folder))
  (folder / "metrics.jsonl").unlink()
  with pytest.raises(SystemExit, match=r"cannot read .*metrics.jsonl: no such file"):
    runs.rows(str(folder))
  with pytest.raises(SystemExit, match="holds no run"):
    runs.read(str(tmp_path))
  with pytest.raises(SystemExit, match="no such folder"):
    runs.find([str(tmp_path / "nothing")])
  with pytest.raises(SystemExit, match="not a folder"):
    runs.find([str(folder / "test_predictions.npy")])


# ---------------------------------------------------------------- paths


def test_a_moved_run_still_reads_and_reports_relative_paths(tmp_path):
  trained = write_run(tmp_path / "cluster" / "runs" / "seed0", data=AVMNIST)
  moved = tmp_path / "laptop" / "study" / "seed0"
  os.makedirs(moved.parent)
  shutil.move(trained, moved)
  shutil.rmtree(tmp_path / "cluster")  # the summary's workdir is gone
  (run,) = runs.find([str(tmp_path / "laptop")])
  assert run.summary["workdir"] == str(trained) and run.status == "finished"
  assert run.name(relative_to=str(tmp_path / "laptop")) == os.path.join("study", "seed0")
  assert run.predictions().shape == (20,)
  assert runs.rows(run)[-1]["epoch"] == 2
  assert rows_of(table.render([str(tmp_path / "laptop")]))[0].endswith("| 1 |")
  assert run.final["acc"] == 0.7 and run.seed == 0 and run.data == AVMNIST
  assert run.sessions[0]["backend"] == "cpu" and run.config["method"] == "joint"


def test_setting_keys_are_json_and_stable(tmp_path):
  a = runs.read(str(write_run(tmp_path / "a", seed=0, agm={"alpha": 1.0}, method="agm")))
  b = runs.read(str(write_run(tmp_path / "b", seed=1, agm={"alpha": 1.0}, method="agm")))
  assert a.key == b.key and json.loads(a.key)["agm.alpha"] == 1.0
  assert json.loads(a.key)["window"] == "prime"  # resolved, as the summary says


def test_runs_imports_no_jax():
  code = ("import sys; import experiments.runs, experiments.table; "
          "assert not [m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', 'optax')]")
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 0, proc.stderr


def test_an_edited_summary_is_refused_by_its_own_checksum(tmp_path):
  from inforeg_jax.reporting import with_digest
  folder = write_run(tmp_path / "a")
  path = folder / "summary.json"
  path.write_text(json.dumps(with_digest(json.loads(path.read_text()))))
  assert runs.read(str(folder)).summary["final"]["acc"] == 0.7  # as written: read
  s = json.loads(path.read_text())
  s["final"]["acc"] = 0.9  # a number in a table changed by hand
  path.write_text(json.dumps(s))
  with pytest.raises(SystemExit, match="does not match its summary_sha256"):
    runs.read(str(folder))
