import json

import pytest

from experiments import bench


def test_input_bench_compares_both_pipelines(tmp_path, capsys):
  out = tmp_path / "input.json"
  assert bench.main(["--mode=input", "--tiny", "--steps=3", f"--out={out}"]) == 0
  rows = json.loads(out.read_text())["rows"]
  assert [r["pipeline"] for r in rows] == ["batch_gather", "per_example"]
  assert all(r["samples_per_s"] > 0 for r in rows)


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
