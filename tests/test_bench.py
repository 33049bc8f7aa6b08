import json

import pytest

from experiments import bench


def test_input_bench_compares_both_pipelines(tmp_path, capsys):
  out = tmp_path / "input.json"
  assert bench.main(["--mode=input", "--tiny", "--steps=3", f"--out={out}"]) == 0
  rows = json.loads(out.read_text())["rows"]
  assert [r["pipeline"] for r in rows] == ["batch_gather", "per_example"]
  assert all(r["samples_per_s"] > 0 for r in rows)


@pytest.mark.slow
def test_step_bench_times_a_datasets_own_preset(tmp_path):
  out = tmp_path / "step.json"
  assert bench.main(["--mode=step", "--dataset=synthetic", "--tiny", "--steps=1", "--warmup=0",
                     "--dtypes=float32", "--methods=joint", "--width=6", f"--out={out}"]) == 0
  meta = json.loads(out.read_text())
  assert [(r["dataset"], r["method"]) for r in meta["rows"]] == [("synthetic", "joint")]
  assert meta["rows"][0]["step_ms"] > 0 and meta["args"]["width"] == 6
  assert meta["rows"][0]["width"] == 6  # the config the step was built from, not just the flag


@pytest.mark.parametrize("mode,dataset", [("step", "avmnist"), ("input", "synthetic")])
def test_bench_needs_data_dir_without_built_in_data(mode, dataset, capsys):
  with pytest.raises(SystemExit):
    bench.main([f"--mode={mode}", f"--dataset={dataset}"])
  assert "needs --data_dir" in capsys.readouterr().err


@pytest.mark.parametrize("flag,says", [
    ("--steps=0", "--steps=0 must be >= 1"), ("--steps=-3", "--steps=-3 must be >= 1"),
    ("--warmup=-1", "--warmup=-1 must be >= 0"),
    ("--methods=joint,nope", "--methods: unknown 'nope'; choose from joint,"),
    ("--dtypes=float16", "--dtypes: unknown 'float16'; choose from float32, bfloat16")])
def test_bad_bench_arguments_are_one_error_line(flag, says, capsys):
  with pytest.raises(SystemExit) as e:
    bench.main(["--mode=step", "--tiny", flag])
  assert e.value.code == 2
  err = capsys.readouterr().err
  last = err.strip().splitlines()[-1]
  assert "error: " in last and says in last
