"""experiments.results: each seed runs as itself, finished runs are read back, and the JSON
holds what a reader needs to rerun a row (with the subprocess faked: no training here)."""

import json
import os

import pytest

from experiments import results


def fake_summary(flags, seed):
  method = next(f.split("=")[1] for f in flags if f.startswith("--method="))
  acc = {"joint": 0.5, "inforeg": 0.6}.get(method, 0.4) + 0.01 * seed
  return {"dataset": "synthetic", "method": method, "seed": seed,
          "final": {"acc": acc, "acc_audio": acc - 0.1, "acc_visual": acc - 0.2},
          "selected": {"acc": acc + 0.001, "epoch": 3}, "train_seconds": 10.0 + seed,
          "config": {"seed": seed}}


@pytest.fixture
def fake_runs(monkeypatch):
  calls = []

  def run(cmd, cwd, env, capture_output, text):
    flags = cmd[3:]
    seed = int(next(f.split("=")[1] for f in flags if f.startswith("--seed=")))
    workdir = next(f.split("=", 1)[1] for f in flags if f.startswith("--workdir="))
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(fake_summary(flags, seed), f)
    calls.append(flags)
    return type("Done", (), {"returncode": 0, "stderr": ""})()

  monkeypatch.setattr(results.subprocess, "run", run)
  monkeypatch.setattr(results, "rows", lambda t: [("joint", ["--method=joint"]),
                                                   ("inforeg", ["--method=inforeg"])])
  return calls


def test_every_seed_runs_as_itself_and_is_read_back(tmp_path, fake_runs):
  argv = ["--datasets=synthetic", "--seeds=0,1,2", "--jobs=1", f"--out={tmp_path}/runs",
          f"--docs={tmp_path}/docs"]
  assert results.main(argv) == 0
  assert sorted((c[1], c[-3]) for c in fake_runs) == sorted(
      (f"--method={m}", f"--seed={s}") for m in ("joint", "inforeg") for s in (0, 1, 2))
  assert all("--resume" in c for c in fake_runs)
  doc = json.loads((tmp_path / "docs" / "synthetic.json").read_text())
  row = {r["name"]: r for r in doc["rows"]}
  assert row["joint"]["command"] == "python -m experiments.run --dataset=synthetic --method=joint"
  assert row["inforeg"]["seeds"] == [0, 1, 2]
  assert row["inforeg"]["acc"] == {"mean": 0.61, "std": 0.01}
  assert row["inforeg"]["minus_reference"]["per_seed"] == [0.1, 0.1, 0.1]
  assert row["inforeg"]["minus_reference"]["ci95"] == [0.1, 0.1]  # no spread: a point
  assert "minus_reference" not in row["joint"] and row["inforeg"]["reference"] == "joint"
  assert (tmp_path / "docs" / "synthetic_methods.md").read_text().count("\n") == 4
  # a second invocation reads the finished runs back and runs nothing
  fake_runs.clear()
  assert results.main(argv) == 0 and fake_runs == []


def test_a_summary_of_another_seed_is_refused(tmp_path, fake_runs):
  workdir = tmp_path / "runs" / "synthetic" / "joint" / "seed1"
  workdir.mkdir(parents=True)
  (workdir / "summary.json").write_text(json.dumps(fake_summary(["--method=joint"], 0)))
  with pytest.raises(RuntimeError, match="a run of seed 0, expected seed 1"):
    results.main(["--datasets=synthetic", "--seeds=0,1", "--jobs=1", f"--out={tmp_path}/runs",
                  f"--docs={tmp_path}/docs"])


def test_report_only_leaves_out_rows_without_every_seed(tmp_path, fake_runs):
  argv = ["--datasets=synthetic", "--seeds=0,1", "--jobs=1", f"--out={tmp_path}/runs",
          f"--docs={tmp_path}/docs"]
  results.main(argv[:1] + ["--seeds=0"] + argv[2:])  # only seed 0 of each row has run
  os.remove(tmp_path / "runs" / "synthetic" / "joint" / "seed0" / "summary.json")
  results.run_one(["--method=joint"], 1, str(tmp_path / "runs/synthetic/joint/seed1"), False)
  fake_runs.clear()
  assert results.main(argv + ["--report-only"]) == 0 and fake_runs == []
  doc = json.loads((tmp_path / "docs" / "synthetic.json").read_text())
  assert doc["not_run"]["methods"] == ["joint", "inforeg"] and doc["tables"]["methods"] == []


def test_rows_selects_what_runs_and_what_is_tabulated(tmp_path, fake_runs):
  argv = ["--datasets=synthetic", "--seeds=0", "--jobs=1", f"--out={tmp_path}/runs",
          f"--docs={tmp_path}/docs"]
  assert results.main(argv + ["--rows=inforeg"]) == 0
  assert [c[1] for c in fake_runs] == ["--method=inforeg"]
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
  assert sorted(c[-2] for c in fake_runs) == [f"--workdir={tmp_path}/runs/synthetic/{n}/seed0"
                                              for n in ("inforeg", "inforeg_other")]
  assert results.main(argv[:1] + ["--tables=methods,window"] + argv[1:]) == 0
  assert len(fake_runs) == 3  # joint only: the rest is read back
  doc = json.loads((tmp_path / "docs" / "synthetic.json").read_text())
  assert {r["name"]: r["acc"] for r in doc["tables"]["window"]}["inforeg prime"] == \
      {r["name"]: r["acc"] for r in doc["tables"]["methods"]}["inforeg"]


def test_canonical_drops_only_restated_defaults():
  flags = results.resolve(["--method=ogm_ge", "--window=whole", "--fusion=concat",
                           "--epochs=7"], "synthetic")
  assert results.canonical(flags) == ("--dataset=synthetic", "--method=ogm_ge", "--epochs=7")


def test_runs_sharing_the_compile_cache_give_the_same_numbers(tmp_path, monkeypatch):
  """Real runs (tiny): another seed of the row compiles nothing anew (the seed is an input
  of the steps, not a constant), and a rerun from the cache reproduces the metrics exactly."""
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)  # conftest's, for the suite
  flags = ["--dataset=synthetic", "--tiny", "--epochs=1", "--method=inforeg"]
  cache = tmp_path / "cache"
  first = results.run_one(flags, 0, str(tmp_path / "a"), True, str(cache))
  cached = set(os.listdir(cache))
  assert any(name.startswith("jit_train_step") for name in cached)
  results.run_one(flags, 1, str(tmp_path / "b"), True, str(cache))
  assert set(os.listdir(cache)) == cached  # seed 1 compiled nothing anew
  again = results.run_one(flags, 0, str(tmp_path / "c"), True, str(cache))
  assert first["final"] == again["final"] and first["selected"] == again["selected"]
