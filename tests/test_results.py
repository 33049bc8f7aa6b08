"""experiments.results: the runs grouped into populations, each seed the run it names,
finished runs read back, the tuning protocol's choice on validation, the intervals, and the
JSON a reader needs to rerun a row. Training is faked (``train_population`` in process), but
for one real tiny run through the whole path."""

import json
import os

import numpy as np
import pytest

from experiments import results


def fake_summary(flags, seed, workdir):
  method = next(f.split("=")[1] for f in flags if f.startswith("--method="))
  lr = float(next((f.split("=")[1] for f in flags if f.startswith("--learning_rate=")), 0.01))
  acc = {"joint": 0.5, "inforeg": 0.6}.get(method, 0.4) + 0.01 * seed
  val = acc - abs(lr - 0.02)  # validation prefers lr 0.02
  return {"dataset": "synthetic", "method": method, "seed": seed, "workdir": workdir,
          "final": {"acc": acc, "val_acc": val, "acc_audio": acc - 0.1,
                    "acc_visual": acc - 0.2},
          "selected": {"acc": acc + 0.001, "epoch": 3}, "train_seconds": 10.0 + seed,
          "config": {"seed": seed}}


@pytest.fixture
def fake_runs(monkeypatch):
  """Every population the engine trains: its members' (flags, seed, workdir)."""
  calls = []

  def train_population(members, log_path):
    calls.append([(m.flags, m.seed, m.workdir) for m in members])
    out = []
    for m in members:
      os.makedirs(m.workdir, exist_ok=True)
      s = fake_summary(m.flags, m.seed, m.workdir)
      with open(os.path.join(m.workdir, "summary.json"), "w") as f:
        json.dump(s, f)
      out.append(s)
    return out

  monkeypatch.setattr(results, "train_population", train_population)
  monkeypatch.setattr(results, "rows", lambda t: [("joint", ["--method=joint"]),
                                                   ("inforeg", ["--method=inforeg"])])
  return calls


def members(calls):
  return [m for population in calls for m in population]


def test_each_setting_is_one_population_of_its_seeds_read_back_after(tmp_path, fake_runs):
  argv = ["--tables=methods", "--datasets=synthetic", "--seeds=0,1,2", "--jobs=1",
          f"--out={tmp_path}/runs", f"--docs={tmp_path}/docs"]
  assert results.main(argv) == 0
  # one population a setting, its members the seeds, each in its own folder
  assert sorted(len(p) for p in fake_runs) == [3, 3]
  assert sorted((f[1], s) for f, s, _ in members(fake_runs)) == sorted(
      (f"--method={m}", s) for m in ("joint", "inforeg") for s in (0, 1, 2))
  assert {w for _, _, w in members(fake_runs)} == {
      f"{tmp_path}/runs/synthetic/{m}/seed{s}" for m in ("joint", "inforeg") for s in (0, 1, 2)}
  doc = json.loads((tmp_path / "docs" / "synthetic.json").read_text())
  row = {r["name"]: r for r in doc["rows"]}
  assert row["joint"]["command"] == ("python -m experiments.run --dataset=synthetic "
                                     "--method=joint --seeds=0,1,2")
  assert row["inforeg"]["seeds"] == [0, 1, 2]
  assert row["inforeg"]["acc"] == {"mean": 0.61, "std": 0.01, "per_seed": [0.6, 0.61, 0.62]}
  assert row["inforeg"]["minus_reference"]["per_seed"] == [0.1, 0.1, 0.1]
  assert row["inforeg"]["minus_reference"]["ci95"] == [0.1, 0.1]  # no spread: a point
  assert "minus_reference" not in row["joint"] and row["inforeg"]["reference"] == "joint"
  assert (tmp_path / "docs" / "synthetic_methods.md").read_text().count("\n") == 4
  fake_runs.clear()  # a second invocation reads the finished runs back and runs nothing
  assert results.main(argv) == 0 and fake_runs == []


def test_the_protocol_chooses_on_validation_then_runs_the_reported_seeds(tmp_path, fake_runs):
  argv = ["--tables=tuned", "--datasets=synthetic", "--seeds=0,1", "--jobs=1",
          f"--out={tmp_path}/runs", f"--docs={tmp_path}/docs", "--rows=joint,inforeg"]
  assert results.main(argv) == 0
  tuning = [m for m in members(fake_runs) if "/tuning/" in m[2]]
  # the same number of tuning runs a method, never on a reported seed
  for method in ("joint", "inforeg"):
    mine = [m for m in tuning if f"--method={method}" in m[0]]
    assert len(mine) == 18 and not {s for _, s, _ in mine} & {0, 1}
  assert {s for f, s, _ in tuning if "--method=joint" in f} == set(results.TUNING_SEEDS_NO_KEY)
  doc = json.loads((tmp_path / "docs" / "synthetic.json").read_text())
  row = {r["name"]: r for r in doc["tables"]["tuned"]}
  # validation prefers lr 0.02 (the fake): chosen; the reported seeds ran with it
  assert row["joint tuned"]["chosen"] == "learning_rate=0.02"
  assert row["inforeg tuned"]["chosen"].startswith("learning_rate=0.02 inforeg.beta=")
  assert row["inforeg tuned"]["seeds"] == [0, 1]
  assert "--learning_rate=0.02" in row["inforeg tuned"]["command"]
  assert row["inforeg tuned"]["reference"] == "joint tuned"
  assert set(row["joint tuned"]["tuning"]["val_acc_by_setting"]) == {
      f"--learning_rate={lr}" for lr in results.LEARNING_RATES}
  # the untuned rows beside them, and each tuned row's difference from its defaults
  assert row["inforeg"]["reference"] == "joint" and "minus_default" in row["inforeg tuned"]
  finals = [w for _, _, w in members(fake_runs) if "/tuned/" in w]
  assert sorted(finals) == sorted(f"{tmp_path}/runs/synthetic/tuned/{m}/seed{s}"
                                  for m in ("joint", "inforeg") for s in (0, 1))
  # --report-only tabulates the same rows from the finished runs, the tuned ones included
  fake_runs.clear()
  (tmp_path / "docs" / "synthetic.json").unlink()
  assert results.main(argv + ["--report-only"]) == 0 and fake_runs == []
  again = json.loads((tmp_path / "docs" / "synthetic.json").read_text())
  assert again["tables"]["tuned"] == doc["tables"]["tuned"]
  assert again["not_run"]["tuned"] == []


def test_a_sweep_is_compared_with_the_papers_value_even_when_it_comes_later(tmp_path,
                                                                             fake_runs,
                                                                             monkeypatch):
  """Figs. 7/8: each beta against beta 0.9 (the paper's), paired by seed, though 0.9 is the
  last row; the paper's own row has no difference."""
  monkeypatch.setattr(results, "rows", lambda t: [
      (f"inforeg beta={b}", ["--method=inforeg", f"--inforeg.beta={b}"]) for b in (0.3, 0.9)])
  assert results.main(["--tables=beta", "--datasets=synthetic", "--seeds=0,1,2", "--jobs=1",
                       f"--out={tmp_path}/runs", f"--docs={tmp_path}/docs"]) == 0
  doc = json.loads((tmp_path / "docs" / "synthetic.json").read_text())
  row = {r["name"]: r for r in doc["tables"]["beta"]}
  assert row["inforeg beta=0.3"]["reference"] == "inforeg beta=0.9"
  assert row["inforeg beta=0.3"]["minus_reference"]["per_seed"] == [0.0, 0.0, 0.0]
  assert "minus_reference" not in row["inforeg beta=0.9"]


def test_a_summary_of_another_seed_is_refused(tmp_path, fake_runs):
  workdir = tmp_path / "runs" / "synthetic" / "joint" / "seed1"
  workdir.mkdir(parents=True)
  (workdir / "summary.json").write_text(json.dumps(fake_summary(["--method=joint"], 0,
                                                                str(workdir))))
  with pytest.raises(RuntimeError, match="a run of seed 0, expected seed 1"):
    results.main(["--tables=methods", "--datasets=synthetic", "--seeds=0,1", "--jobs=1",
                  f"--out={tmp_path}/runs", f"--docs={tmp_path}/docs"])


def test_report_only_leaves_out_rows_without_every_seed(tmp_path, fake_runs):
  argv = ["--tables=methods", "--datasets=synthetic", "--seeds=0,1", "--jobs=1",
          f"--out={tmp_path}/runs", f"--docs={tmp_path}/docs"]
  results.main(argv[:2] + ["--seeds=0"] + argv[3:])  # only seed 0 of each row has run
  fake_runs.clear()
  assert results.main(argv + ["--report-only"]) == 0 and fake_runs == []
  doc = json.loads((tmp_path / "docs" / "synthetic.json").read_text())
  assert doc["not_run"]["methods"] == ["joint", "inforeg"] and doc["tables"]["methods"] == []


def test_rows_selects_what_runs_and_what_is_tabulated(tmp_path, fake_runs):
  argv = ["--tables=methods", "--datasets=synthetic", "--seeds=0", "--jobs=1",
          f"--out={tmp_path}/runs", f"--docs={tmp_path}/docs"]
  assert results.main(argv + ["--rows=inforeg"]) == 0
  assert [f[1] for f, _, _ in members(fake_runs)] == ["--method=inforeg"]
  doc = json.loads((tmp_path / "docs" / "synthetic.json").read_text())
  assert [r["name"] for r in doc["rows"]] == ["inforeg"]
  assert doc["table_commands"]["methods"].endswith("--rows='inforeg'")
  with pytest.raises(SystemExit, match="--rows: unknown"):
    results.main(argv + ["--rows=nope"])


def test_a_setting_in_several_tables_runs_once_in_its_first_rows_folder(tmp_path, fake_runs,
                                                                          monkeypatch):
  table = {"methods": [("joint", ["--method=joint"]), ("inforeg", ["--method=inforeg"])],
           "window": [("inforeg prime", ["--method=inforeg", "--window=prime"]),
                      ("inforeg other", ["--method=inforeg", "--window=other"])]}
  monkeypatch.setattr(results, "rows", lambda t: table.get(t, []))
  argv = ["--tables=window", "--datasets=synthetic", "--seeds=0", "--jobs=1",
          f"--out={tmp_path}/runs", f"--docs={tmp_path}/docs"]
  assert results.main(argv) == 0
  # --window=prime is InfoReg's default: the run is the methods table's "inforeg"
  assert sorted(w for _, _, w in members(fake_runs)) == [
      f"{tmp_path}/runs/synthetic/{n}/seed0" for n in ("inforeg", "inforeg_other")]
  assert results.main(argv[:1] + ["--tables=methods,window"] + argv[1:]) == 0
  assert len(members(fake_runs)) == 3  # joint only: the rest is read back
  doc = json.loads((tmp_path / "docs" / "synthetic.json").read_text())
  assert {r["name"]: r["acc"] for r in doc["tables"]["window"]}["inforeg prime"] == \
      {r["name"]: r["acc"] for r in doc["tables"]["methods"]}["inforeg"]


def test_populations_group_by_program_and_progress(tmp_path):
  run = lambda flags, seed, w: results.Run(tuple(["--dataset=synthetic", *flags]), seed,
                                           str(tmp_path / w / f"seed{seed}"))
  runs = [run(["--method=agm"], 0, "a"), run(["--method=agm", "--agm.alpha=2"], 1, "b"),
          run(["--method=agm", "--learning_rate=0.1"], 2, "c"),
          run(["--method=agm", "--fusion=sum"], 0, "d"), run(["--method=joint"], 0, "e")]
  (tmp_path / "c" / "seed2" / "checkpoints" / "4").mkdir(parents=True)  # under way
  groups = sorted(sorted(m.workdir[-7:] for m in p) for p in results.populations(runs))
  # member-wise values (alpha, seed) share a program; the fusion and the method do not; a run
  # under way resumes apart from fresh ones
  assert groups == [["a/seed0", "b/seed1"], ["c/seed2"], ["d/seed0"], ["e/seed0"]]


def test_missing_data_is_one_line_with_the_command(tmp_path, capsys):
  with pytest.raises(SystemExit, match="python -m data_prep.avmnist --variant=hard"):
    results.main(["--datasets=avmnist_hard", f"--data_root={tmp_path}", "--jobs=1",
                  f"--out={tmp_path}/runs", f"--docs={tmp_path}/docs"])
  with pytest.raises(SystemExit, match="--datasets: unknown"):
    results.main(["--datasets=imagenet"])


def test_the_bootstrap_covers_seeds_and_test_examples():
  rng = np.random.default_rng(0)
  ref = rng.random((5, 400)) < 0.6
  same = results.bootstrap(ref, ref)
  assert same == [0.0, 0.0]
  better = ref | (rng.random((5, 400)) < 0.1)  # about +0.04 on every seed
  low, high = results.bootstrap(better, ref)
  diff = float(better.mean() - ref.mean())
  assert low < diff < high and low > 0
  # fewer test examples: a wider interval
  low2, high2 = results.bootstrap(better[:, :100], ref[:, :100])
  assert high2 - low2 > high - low
  assert results.bootstrap(None, ref) is None


def test_canonical_drops_only_restated_defaults():
  flags = results.resolve(["--method=ogm_ge", "--window=whole", "--fusion=concat",
                           "--epochs=7"], "synthetic", "data")
  assert results.canonical(flags) == ("--dataset=synthetic", "--method=ogm_ge", "--epochs=7")


def test_a_real_tiny_population_through_the_engine(tmp_path, monkeypatch):
  """Two seeds of a real tiny run: trained as one population (in this process), each
  member's summary, predictions and row; a rerun reads them back."""
  monkeypatch.setattr(results, "RUN_FLAGS", ["--tiny", "--epochs=1", "--limit_train=64"])
  runs = [results.Run(tuple(results.resolve(["--method=joint"], "synthetic", "data")), s,
                      str(tmp_path / f"seed{s}")) for s in (0, 1)]
  done = results.run_all(runs, 1, str(tmp_path), False)
  assert [done[r.workdir]["seed"] for r in runs] == [0, 1]
  assert all(done[r.workdir]["population"] == 2 for r in runs)
  assert np.load(tmp_path / "seed1" / "test_predictions.npy").shape == (1000,)
  assert results.run_all(runs, 1, str(tmp_path), False) == done


def test_a_run_killed_before_its_first_checkpoint_starts_afresh(tmp_path):
  """--resume refuses a folder with metrics but no checkpoint (it could be a finished run
  whose checkpoints were lost); the engine's own unfinished run of that kind is emptied and
  trained from the start instead of failing its population."""
  killed = tmp_path / "killed" / "seed0"
  (killed / "checkpoints").mkdir(parents=True)
  (killed / "metrics.jsonl").write_text('{"epoch": 0}\n')
  run = results.Run(("--method=joint",), 0, str(killed))
  assert results.resumable([run]) is False and not killed.exists()
  saved = tmp_path / "saved" / "seed0"
  (saved / "checkpoints" / "4").mkdir(parents=True)
  (saved / "metrics.jsonl").write_text('{"epoch": 0}\n')
  assert results.resumable([results.Run(("--method=joint",), 0, str(saved))]) is True
  assert (saved / "metrics.jsonl").exists()
