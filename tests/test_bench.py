import json

from experiments import bench


def test_input_bench_compares_both_pipelines(tmp_path, capsys):
  out = tmp_path / "input.json"
  assert bench.main(["--mode=input", "--tiny", "--steps=3", f"--out={out}"]) == 0
  rows = json.loads(out.read_text())["rows"]
  assert [r["pipeline"] for r in rows] == ["batch_gather", "per_example"]
  assert all(r["samples_per_s"] > 0 for r in rows)
