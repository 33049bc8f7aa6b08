"""experiments.results: plan -> run -> report over the study's specs. Training is faked (a
`populations.train_units` that writes run folders as the trainer does) on three folds of the
built-in data, but for one real tiny run through the whole path whose recorded command,
rerun alone, gives its recorded numbers exactly."""

import base64
import hashlib
import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

from experiments import populations, results, study
from inforeg_jax.data import load_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LABELS = np.asarray(load_dataset("synthetic").test["label"])
PEAK = {"lr": 0.04, "beta": 2.0}  # where the fake validation accuracy peaks


def value(flags, name, default):
  return float(next((f.split("=")[1] for f in flags if f.startswith(f"--{name}=")), default))


def fake_numbers(flags, seed, fold):
  """(validation, test) accuracy of a fake run: validation peaks at PEAK; test accuracy
  per method, fold and seed (inforeg 0.02 above joint on every fold)."""
  method = value([f.replace("--method=", "--m=").replace("joint", "0").replace("inforeg", "1")
                  for f in flags], "m", 0)
  lr, beta = value(flags, "learning_rate", 0.01), value(flags, "inforeg.beta", 0.9)
  val = 0.8 - abs(np.log2(lr / PEAK["lr"])) * 0.01 - abs(np.log2(beta / PEAK["beta"])) * 0.005
  test = 0.5 + 0.02 * method + 0.01 * fold + 0.003 * (seed % 3)
  return val + 0.0001 * (seed % 7), test


def write_run(unit, fold):
  """A run folder as the trainer leaves it: summary.json (final, best, config, data,
  sessions, predictions' checksum) and test_predictions.npy."""
  val, test = fake_numbers(unit.flags, unit.seed, fold)
  wrong = int(round((1 - test) * len(LABELS)))
  pred = LABELS.copy()
  pred[:wrong] = (pred[:wrong] + 1) % 6
  pred = pred.astype(np.int16)
  os.makedirs(unit.workdir, exist_ok=True)
  np.save(os.path.join(unit.workdir, "test_predictions.npy"), pred)
  acc = float(np.mean(pred == LABELS))
  summary = {"dataset": "synthetic", "method": "x", "seed": unit.seed, "epochs": 2,
             "final": {"acc": acc, "val_acc": val, "acc_audio": acc - 0.1,
                       "acc_visual": acc - 0.2},
             "best": {"acc": acc, "epoch": 1}, "selected": {"acc": acc, "epoch": 1},
             "train_seconds": 1.0, "config": {"seed": unit.seed}, "data": None,
             "sessions": [{"population": 7, "execution": "sequential", "xla_flags": "X",
                           "commit": "abc", "dirty": False}],
             "predictions_sha256": hashlib.sha256(pred.tobytes()).hexdigest()}
  with open(os.path.join(unit.workdir, "summary.json"), "w") as f:
    json.dump(summary, f)


def fold_of(unit) -> int:
  """The fold a unit trains on (its folder: <out>/<dataset>/fold<k>/...)."""
  return int(re.search(r"[/\\]fold(\d+)[/\\]", unit.workdir).group(1))


@pytest.fixture
def fake(monkeypatch, tmp_path):
  """Three folds of the built-in data, a two-method table, fake training; the units each
  call trained."""
  calls = []
  table = study.Table("t", "a test table", rows=(
      study.Row("joint tuned", tuned="joint"), study.Row("joint default", ("--method=joint",)),
      study.Row("inforeg tuned", tuned="inforeg"),
      study.Row("inforeg default", ("--method=inforeg",))),
      families=(study.Family("F", "joint tuned", ("inforeg tuned",)),),
      descriptive=(("inforeg tuned", "inforeg default"),), seeds=(0, 1, 2))
  monkeypatch.setitem(study.TABLES, "t", table)
  folds = [results.Fold("synthetic", "synthetic", k, None, None) for k in range(3)]
  monkeypatch.setattr(results, "folds_of", lambda name, root, only: [
      f for f in folds if only is None or f.fold in only])

  def train_units(units, jobs, logs, done, progress):
    calls.append(list(units))
    for u in units:
      write_run(u, fold_of(u))
    done(list(units))

  monkeypatch.setattr(populations, "train_units", train_units)
  argv = ["--tables=t", "--datasets=synthetic", "--jobs=1", f"--out={tmp_path}/runs",
          f"--docs={tmp_path}/docs"]
  return calls, argv, tmp_path / "docs"


def test_plan_run_report_tunes_per_fold_then_reports_every_fold_and_seed(fake):
  calls, argv, docs = fake
  assert results.main(argv) == 0
  doc = json.loads((docs / "synthetic.json").read_text())
  rows = {r["name"]: r for r in doc["tables"]["t"]["rows"]}
  # every row over 3 folds x 3 seeds, each run with the command that reruns it alone
  for r in rows.values():
    assert sorted((x["fold"], x["seed"]) for x in r["runs"]) == [(f, s) for f in range(3)
                                                                 for s in range(3)]
    for x in r["runs"]:
      assert x["command"].startswith(f"XLA_FLAGS='{populations.SINGLE_THREAD}' python -m "
                                     "experiments.run --dataset=synthetic")
      assert x["command"].endswith(f"--seed={x['seed']}")
      assert (x["population"], x["threads"], x["commit"]) == (7, "X", "abc")
  # the search found the peak on every fold, interior, every neighbour of it tried
  tuning = rows["inforeg tuned"]["tuning"]
  assert set(tuning) == {"fold0", "fold1", "fold2"}
  for t in tuning.values():
    assert t["chosen"] == "--learning_rate=0.04 --inforeg.beta=2.0" and t["interior"]
    tried = {x["setting"] for x in t["tried"]}
    assert {"--learning_rate=0.02 --inforeg.beta=2.0", "--learning_rate=0.08 --inforeg.beta=2.0",
            "--learning_rate=0.04 --inforeg.beta=0.9",
            "--learning_rate=0.04 --inforeg.beta=4.0"} <= tried
    assert t["seeds"] == [100, 101, 102]
  assert rows["joint tuned"]["tuning"]["fold1"]["chosen"] == "--learning_rate=0.04"
  # tuning seeds are never reported, reported seeds never tune
  trained = [u for c in calls for u in c]
  assert {u.seed for u in trained} == {0, 1, 2, 100, 101, 102}
  assert all("--learning_rate=" in " ".join(u.flags) for u in trained if u.seed >= 100)
  # the comparison: inforeg +0.02 on every fold and seed: a win after correction
  [comp] = rows["inforeg tuned"]["comparisons"]
  assert comp["reference"] == "joint tuned" and comp["verdict"] == "wins"
  assert comp["mean"] == pytest.approx(0.02, abs=1e-3)
  assert (docs / "synthetic_t.md").read_text().count("|") > 20
  assert doc["tuning_seeds"] == [100, 101, 102] and "fold means" in doc["claim_rule"]


def test_a_rerun_continues_from_the_records_alone(fake, tmp_path):
  """Where --out is not kept (another machine), the committed records are enough: nothing
  is trained again and the report is the same."""
  calls, argv, docs = fake
  results.main(argv)
  first = (docs / "synthetic.json").read_text()
  n = len(calls)
  import shutil
  shutil.rmtree(tmp_path / "runs")
  results.main(argv)
  assert len(calls) == n
  later = json.loads((docs / "synthetic.json").read_text())
  assert later["tables"] == json.loads(first)["tables"]


def test_report_only_never_replaces_a_table_with_a_smaller_one(fake):
  calls, argv, docs = fake
  with pytest.raises(SystemExit, match="runs are missing .*nothing written"):
    results.main(argv + ["--report-only"])
  assert not calls and not (docs / "synthetic.json").exists()


def records_file(docs):
  return docs / "synthetic" / "records" / "fold1.jsonl"


@pytest.mark.parametrize("damage,message", [
    ("truncate", "line .* is not a run's record"),
    ("predictions", "does not match its checksum"),
    ("accuracy", "is not its predictions'"),
    ("twice", "two records of one run"),
    ("nan", "line .* is not a run's record"),  # (NaN passed the accuracy cross-check)
])
def test_damaged_records_are_one_line(fake, damage, message):
  calls, argv, docs = fake
  results.main(argv)
  path = records_file(docs)
  lines = path.read_text().splitlines()
  i = next(k for k, line in enumerate(lines) if "predictions" in json.loads(line))
  r = json.loads(lines[i])
  if damage == "truncate":
    lines[i] = lines[i][:40]
  elif damage == "predictions":
    p = bytearray(base64.b64decode(r["predictions"]))
    p[5] = (p[5] + 1) % 6
    r["predictions"] = base64.b64encode(bytes(p)).decode()
    lines[i] = json.dumps(r)
  elif damage == "accuracy":
    r["final"]["acc"] += 0.01
    lines[i] = json.dumps(r)
  elif damage == "nan":
    r["final"]["acc"] = float("nan")
    lines[i] = json.dumps(r)
  else:
    r["final"]["acc"] += 0.01
    lines.append(json.dumps(r))
  path.write_text("\n".join(lines) + "\n")
  with pytest.raises(SystemExit, match=message):
    results.main(argv + ["--report-only"])


def test_one_invocation_at_a_time(fake, tmp_path):
  from inforeg_jax.workdir import Lock
  calls, argv, docs = fake
  os.makedirs(tmp_path / "runs")
  held = Lock(str(tmp_path / "runs"))
  try:
    with pytest.raises(SystemExit, match="in use by another experiments.results"):
      results.main(argv)
  finally:
    held.release()


def test_bad_arguments_are_one_line(fake):
  _, argv, _ = fake
  for bad, message in (("--tables=nope", "unknown"), ("--datasets=nope", "unknown"),
                       ("--jobs=0", "must be >= 1"), ("--folds=a", "not a list")):
    with pytest.raises(SystemExit, match=message):
      results.main(argv + [bad])


@pytest.mark.parametrize("peak, chosen, interior", [
    (0.3, 0.32, True),  # one rung past the ladder's top (0.16): found, and 0.64 tried
    (10.0, 1.28, False),  # past the last rung a search may take: said so
])
def test_a_search_steps_past_a_ladders_end_until_its_choice_is_interior(fake, monkeypatch,
                                                                        peak, chosen, interior):
  calls, argv, docs = fake
  monkeypatch.setitem(PEAK, "lr", peak)
  results.main(argv + ["--folds=0"])
  doc = json.loads((docs / "synthetic.json").read_text())
  rows = {r["name"]: r for r in doc["tables"]["t"]["rows"]}
  t = rows["joint tuned"]["tuning"]["fold0"]
  assert t["chosen"] == f"--learning_rate={chosen}" and t["interior"] == interior
  tried = {x["setting"] for x in t["tried"]}
  assert f"--learning_rate={study.LR_LADDER[-1] * 2}" in tried
  if interior:  # the rung beyond the choice was tried
    assert "--learning_rate=0.64" in tried
  assert t["at_ladder_end"] == ([] if interior else ["learning_rate"])
  # the key's ladder too: InfoReg's beta past its top (8) at 16, interior (a fresh study)
  import shutil
  shutil.rmtree(docs)
  monkeypatch.setitem(PEAK, "beta", 16.0)
  results.main([a for a in argv if not a.startswith("--out=")] + [
      f"--out={docs.parent / 'runs2'}", "--folds=0"])
  doc = json.loads((docs / "synthetic.json").read_text())
  t = {r["name"]: r for r in doc["tables"]["t"]["rows"]}["inforeg tuned"]["tuning"]["fold0"]
  assert t["chosen"].endswith("--inforeg.beta=16.0") and "inforeg.beta" not in t["at_ladder_end"]
  assert any(x["setting"].endswith("--inforeg.beta=32.0") for x in t["tried"])


def test_a_ladder_continues_past_its_ends_at_its_end_ratio():
  ogm = study.SEARCHES["ogm_ge"].ladder  # (0.03, 0.1, ... 5.0)
  assert [study.rung(ogm, i) for i in (-4, -3, -1, 0, 5, 6, 8, 9)] == [
      None, 0.00081, 0.009, 0.03, 5.0, 12.5, 78.1, None]
  super_epoch = study.SEARCHES["gblending"].ladder  # integers (2, 3, 5, 10, 20)
  assert [study.rung(super_epoch, i) for i in (-2, -1, 5, 7, 8)] == [None, 1, 40, 160, None]
  search = study.SEARCHES["ogm_ge"]
  assert search.flags_of((4, -1))[1:] == ("--learning_rate=0.02", "--ogm_ge.alpha=0.009")
  assert (4, -1) in search.neighbours((4, 0)) and search.at_ladder_end((4, -3)) == [
      "ogm_ge.alpha"]


@pytest.mark.slow
def test_a_real_tiny_population_through_the_engine_reruns_exactly(tmp_path, monkeypatch):
  """Real training (a tiny table of two rows on the built-in data, one fold): each run's
  record, and its recorded command rerun alone in a fresh process gives the same numbers
  bit for bit (its population's other members notwithstanding)."""
  table = study.Table("real", "real", rows=(study.Row("joint", ("--method=joint",)),
                                            study.Row("ogm", ("--method=ogm_ge",))),
                      seeds=(0, 1))
  monkeypatch.setitem(study.TABLES, "real", table)
  argv = ["--tables=real", "--datasets=synthetic", "--jobs=1", f"--out={tmp_path}/runs",
          f"--docs={tmp_path}/docs", "--run_flags=--tiny --epochs=2 --limit_train=128"]
  assert results.main(argv) == 0
  [path] = (tmp_path / "docs").glob("synthetic_*.json")
  doc = json.loads(path.read_text())
  run = {r["name"]: r for r in doc["tables"]["real"]["rows"]}["ogm"]["runs"][1]
  assert run["population"] == 2  # trained beside the other seed
  env_flags, cmd = run["command"].split(" python -m ")
  xla = env_flags.split("=", 1)[1].strip("'")
  argv = cmd.split()[1:] + [f"--workdir={tmp_path / 'alone'}"]
  proc = subprocess.run([sys.executable, "-m", "experiments.run", *argv], cwd=ROOT,
                        env=dict(os.environ, XLA_FLAGS=xla), capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  alone = json.loads((tmp_path / "alone" / "summary.json").read_text())
  assert alone["final"]["acc"] == run["acc"] and alone["final"]["acc_audio"] == run["acc_audio"]


def processes_with(marker: str) -> list[int]:
  """Live processes whose environment holds ``marker`` (a command and every child of it)."""
  found = []
  for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
      with open(f"/proc/{pid}/environ", "rb") as f:
        if marker.encode() in f.read():
          found.append(int(pid))
    except OSError:
      continue
  return found


@pytest.mark.slow
@pytest.mark.parametrize("signum,status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_every_worker_with_one_line(tmp_path, signum, status):
  """Ctrl-C or SIGTERM to experiments.results: one line, exit 130/143, no worker left (a
  worker whose run stopped takes no further population)."""
  import time
  marker = f"INFOREG_TEST_MARKER={tmp_path.name}"
  env = dict(os.environ, INFOREG_TEST_MARKER=tmp_path.name)
  proc = subprocess.Popen(
      [sys.executable, "-m", "experiments.results", "--tables=epochs", "--datasets=synthetic",
       "--jobs=2", f"--out={tmp_path}/runs", f"--docs={tmp_path}/docs",
       "--run_flags=--tiny --epochs=400 --limit_train=256"],
      cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
      start_new_session=True)
  try:
    deadline = time.time() + 300
    while not list((tmp_path / "runs").glob("synthetic/*/*/metrics.jsonl")):
      assert time.time() < deadline and proc.poll() is None, "no run started"
      time.sleep(0.5)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=300)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
  assert proc.returncode == status, err[-2000:]
  lines = [line for line in err.splitlines() if line.strip()]
  assert len(lines) == 1 and "run the same command again to continue" in lines[0], err[-2000:]
  deadline = time.time() + 30
  while processes_with(marker) and time.time() < deadline:
    time.sleep(0.5)
  assert not processes_with(marker)


def test_a_fold_tuned_on_another_folds_validation_split(fake, monkeypatch):
  """Fold 2 takes fold 0's choice (its tuning never runs on fold 2), as protocol v2's folds
  other than fold 1 take fold 0's."""
  import dataclasses
  calls, argv, docs = fake
  base = [results.Fold("synthetic", "synthetic", k, None, None) for k in range(3)]
  folds = base[:2] + [dataclasses.replace(base[2], tuner=base[0])]
  monkeypatch.setattr(results, "folds_of", lambda name, root, only: [
      f for f in folds if only is None or f.fold in only])
  results.main(argv)
  assert {fold_of(u) for c in calls for u in c if u.seed >= 100} == {0, 1}
  doc = json.loads((docs / "synthetic.json").read_text())
  tuning = {r["name"]: r for r in doc["tables"]["t"]["rows"]}["inforeg tuned"]["tuning"]
  assert [tuning[f]["tuned_on"] for f in ("fold0", "fold1", "fold2")] == ["fold0", "fold1",
                                                                          "fold0"]
  # and with only fold 2 asked for, fold 0's search runs (fold 0's rows do not)
  calls.clear()
  import shutil
  shutil.rmtree(docs)
  results.main(argv + ["--folds=2"])
  trained = [u for c in calls for u in c]
  assert {fold_of(u) for u in trained if u.seed >= 100} == {0}
  assert {fold_of(u) for u in trained if u.seed < 100} == {2}


def test_flags_the_engine_sets_are_refused_in_run_flags(fake):
  calls, argv, _ = fake
  for flag in ("--seed=3", "--data_dir=x", "--workdir=y", "--resume"):
    with pytest.raises(SystemExit, match=f"the study sets {flag.split('=')[0]} itself"):
      results.main(argv + [f"--run_flags={flag}"])
  assert not calls


def test_a_report_over_some_folds_shows_intervals_and_decides_nothing(fake):
  """The claim rule is over every fold: over fewer (a fold's seeds standing in for its
  speakers) the intervals are shown and no row wins or loses."""
  calls, argv, docs = fake
  results.main(argv + ["--folds=0,1"])
  doc = json.loads((docs / "synthetic.json").read_text())
  [comp] = {r["name"]: r for r in doc["tables"]["t"]["rows"]}["inforeg tuned"]["comparisons"]
  assert comp["verdict"] == "none (2 of 3 folds)"
  assert comp["ci_holm"][0] > 0  # the interval alone would say "wins" (the full study does)
  assert "none (2 of 3 folds)" in (docs / "synthetic_t.md").read_text()


def test_a_report_over_fewer_folds_never_replaces_one_over_more(fake):
  calls, argv, docs = fake
  results.main(argv)
  before = (docs / "synthetic.json").read_text()
  with pytest.raises(SystemExit, match=r"over folds \[0, 1, 2\], this one only \[0\]"):
    results.main(argv + ["--folds=0"])
  assert (docs / "synthetic.json").read_text() == before


@pytest.mark.parametrize("damage", ["{\"tables\": [", "[1, 2]", "{\"tables\": 3}"])
def test_a_damaged_report_is_one_line_and_remade_once_moved_aside(fake, damage):
  calls, argv, docs = fake
  results.main(argv)
  good = (docs / "synthetic.json").read_text()
  (docs / "synthetic.json").write_text(damage)
  with pytest.raises(SystemExit, match="is not a report of experiments.results"):
    results.main(argv + ["--report-only"])
  (docs / "synthetic.json").rename(docs / "aside.json")
  results.main(argv + ["--report-only"])
  assert json.loads((docs / "synthetic.json").read_text())["tables"] == json.loads(good)["tables"]


def test_an_output_folder_that_is_a_file_is_one_line(fake, tmp_path):
  calls, argv, _ = fake
  (tmp_path / "file").write_text("x")
  with pytest.raises(SystemExit, match="cannot write to --docs=.*it is a file, not a folder"):
    results.main(argv + [f"--docs={tmp_path}/file"])
  assert not calls


def test_a_fold_that_does_not_exist_is_refused_not_left_out(fake):
  calls, argv, docs = fake
  with pytest.raises(SystemExit, match="--folds=0,7: synthetic has no fold 7"):
    results.main(argv + ["--folds=0,7"])  # (it reported fold 0 alone, as if asked for it)
  assert not calls and not (docs / "synthetic.json").exists()


def test_records_of_one_fold_on_two_datasets_are_refused_without_the_data(fake):
  calls, argv, docs = fake
  results.main(argv)
  path = records_file(docs)
  lines = [json.loads(line) for line in path.read_text().splitlines()]
  for k, r in enumerate(lines):  # the fold's runs made on two preparations of its data
    r["data"] = {"name": "avmnist", "version": f"v{k % 2}", "sha256": "ab"[k % 2] * 64}
  path.write_text("".join(json.dumps(r) + "\n" for r in lines))
  with pytest.raises(SystemExit, match="is a run on other data of fold 1 .*never pool two"):
    results.main(argv + ["--report-only"])


def test_run_flags_a_row_sets_itself_are_refused_and_epochs2_doubles_them(fake):
  calls, argv, _ = fake
  for flag in ("--learning_rate=0.5", "--method=agm", "--inforeg.beta=0.5"):
    with pytest.raises(SystemExit, match=f"set {flag.split('=')[0]} themselves"):
      results.main(argv + [f"--run_flags={flag}"])  # a row's own flag won: rows mixed
  with pytest.raises(SystemExit, match="--epochs is given twice"):
    results.main(argv + ["--run_flags=--epochs=2 --epochs=3"])
  assert not calls
  fold = results.Fold("synthetic", "synthetic", None, None, None, extra=("--epochs=1",))
  assert results.resolve(("--method=joint", "EPOCHS2"), fold)[-1] == "--epochs=2"
  preset = results.Fold("synthetic", "synthetic", None, None, None)
  assert results.resolve(("--method=joint", "EPOCHS2"), preset)[-1] == "--epochs=40"


def test_a_sigterm_before_the_trainers_own_handler_stops_the_population(monkeypatch, tmp_path):
  """A worker signalled while it still imports or builds (the trainer's handler not yet
  installed) stops there; the signal is not lost to a run that then trains to its end."""
  trained = []
  monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
  monkeypatch.setattr(populations, "_STOPPED", [])
  monkeypatch.setattr(populations, "_fresh_or_resumed",
                      lambda members: os.kill(os.getpid(), signal.SIGTERM))
  import inforeg_jax.trainer
  monkeypatch.setattr(inforeg_jax.trainer, "train", lambda *a, **k: trained.append(1))
  previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
  try:
    populations._worker_init(str(tmp_path / "cache"))
    with pytest.raises(KeyboardInterrupt):
      populations.train_population([], str(tmp_path / "log.txt"))
    assert not trained and populations._STOPPED
    with pytest.raises(populations.Stopped):  # and it takes no further population
      populations.train_population([], str(tmp_path / "log.txt"))
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)


RECORDINGS_CALLS = []


def fake_recordings(data_dir, fsdd, mnist):
  """Each test pair's recording (a `StudyData.recordings`): 20 pairs a recording; one
  error line and exit 2 where FSDD is 'other' (data_prep's PrepError)."""
  RECORDINGS_CALLS.append(data_dir)
  if fsdd == "other":
    print("error: the test audio is not what other makes", file=sys.stderr)
    raise SystemExit(2)
  return [f"{d}_x_{i // 20}" for i, d in enumerate(LABELS)]


@pytest.fixture
def with_recordings(fake, monkeypatch, tmp_path):
  """The fake study on folds whose data is 'prepared' (a folder) and has recordings."""
  calls, argv, docs = fake
  folds = []
  for k in range(3):
    data = tmp_path / f"data{k}"
    data.mkdir()
    (data / "manifest.json").write_text("{}")
    folds.append(results.Fold("synthetic", "synthetic", k, str(data), None,
                              recordings="tests.test_results:fake_recordings"))
  monkeypatch.setattr(results, "folds_of", lambda name, root, only: folds)
  # (the built-in data takes no --data_dir: the folders stand for the prepared data)
  monkeypatch.setattr(results.Fold, "flags", lambda self: [f"--dataset={self.dataset}"])
  monkeypatch.setattr(results, "data_identity",
                      lambda fold: {"sha256": f"{fold.fold}" * 64, "version": "v"})
  RECORDINGS_CALLS.clear()
  return calls, argv, docs


def test_recording_level_bootstrap_from_replayed_recordings_kept_beside_the_records(
    with_recordings, monkeypatch):
  calls, argv, docs = with_recordings
  assert results.main(argv + ["--fsdd_dir=f", "--mnist_dir=m"]) == 0
  assert len(RECORDINGS_CALLS) == 3  # once a fold
  kept = json.loads((docs / "synthetic" / "recordings" / "fold1.json").read_text())
  assert kept["data_sha256"] == "1" * 64
  names = np.asarray(kept["recordings"])[kept["index"]]
  assert list(names) == fake_recordings("", "", "")[:len(names)] and len(names) == len(LABELS)
  doc = json.loads((docs / "synthetic.json").read_text())
  rows = {r["name"]: r for r in doc["tables"]["t"]["rows"]}
  [comp] = rows["inforeg tuned"]["comparisons"]
  lo, hi = comp["ci95_recordings"]
  assert lo <= comp["mean"] <= hi and hi - lo > 0
  [desc] = doc["tables"]["t"]["descriptive"]
  assert "ci95_recordings" in desc
  assert "Recording-level bootstrap" in (docs / "synthetic_t.md").read_text()
  # the kept file serves the next report (no FSDD, MNIST, nor a replay needed)
  RECORDINGS_CALLS.clear()
  assert results.main(argv + ["--report-only"]) == 0
  assert RECORDINGS_CALLS == []
  again = json.loads((docs / "synthetic.json").read_text())
  assert again["tables"]["t"]["rows"] == doc["tables"]["t"]["rows"]
  # data re-prepared otherwise: the kept recordings are not its own, and without FSDD and
  # MNIST the report goes on without the bootstrap
  monkeypatch.setattr(results, "data_identity", lambda fold: {"sha256": "f" * 64})
  (docs / "synthetic" / "records").rename(docs / "old")
  (docs / "synthetic.json").unlink()
  assert results.main(argv) == 0
  doc = json.loads((docs / "synthetic.json").read_text())
  assert all("ci95_recordings" not in c for r in doc["tables"]["t"]["rows"]
             for c in r.get("comparisons", []))


def test_recordings_that_do_not_replay_are_a_note_and_no_bootstrap(with_recordings, capsys):
  calls, argv, docs = with_recordings
  assert results.main(argv + ["--fsdd_dir=other", "--mnist_dir=m"]) == 0
  err = capsys.readouterr().err
  assert "note: no recording-level bootstrap for synthetic fold0: the test audio is not what " \
         "other makes" in err and "error:" not in err
  doc = json.loads((docs / "synthetic.json").read_text())
  assert all("ci95_recordings" not in c for r in doc["tables"]["t"]["rows"]
             for c in r.get("comparisons", []))
  assert not (docs / "synthetic" / "recordings").exists()


@pytest.mark.parametrize("jobs", [1, 2, 4])
def test_the_eta_counts_every_worker(jobs):
  """Populations of unequal weight on ``jobs`` workers, scheduled as the pool does (a free
  worker takes the next): at each completion the ETA is near the time truly left, the first
  one's too, where the elapsed time over the runs finished is about ``jobs`` times too long
  (the other workers' work in flight is not yet counted)."""
  rng = np.random.default_rng(0)
  weights = rng.integers(5, 21, 24).astype(float)
  seconds = weights * 30.0  # 30 s a weighted run on one worker
  free, ends = [0.0] * jobs, []
  for w, s in zip(weights, seconds):
    k = int(np.argmin(free))
    free[k] += s
    ends.append((free[k], w, s))
  ends.sort()
  last, total = ends[-1][0], weights.sum()
  finished = busy = 0.0
  errors, naive = [], []
  for t, w, s in ends[:-jobs]:  # (the last ones: the time left is what is in flight)
    finished, busy = finished + w, busy + s
    eta = populations.eta_seconds(busy, finished, total, jobs)
    errors.append(abs(eta - (last - t)) / (last - t))
    naive.append(abs(t / finished * (total - finished) - (last - t)) / (last - t))
  assert np.median(errors) < 0.2 and errors[0] < 0.35, errors
  if jobs > 1:  # at the first population's end, the elapsed time counts one worker's work only
    assert naive[0] > 1.0
