import json

import pytest

from experiments import table


def write(tmp_path, name, method, seed, acc, modalities=""):
  d = tmp_path / name
  d.mkdir()
  (d / "summary.json").write_text(json.dumps({
      "dataset": "synthetic", "method": method, "seed": seed,
      "final": {"acc": acc, "acc_audio": acc - 0.1, "acc_visual": acc - 0.2},
      "best": {"acc": acc + 0.01, "epoch": 3},
      "window": "prime",
      "config": {"modalities": modalities, "fusion": "concat", "inforeg": {"variant": "paper"}}}))


def test_table_pools_seeds_per_setting(tmp_path):
  write(tmp_path, "a", "joint", 0, 0.70)
  write(tmp_path, "b", "joint", 1, 0.80)
  write(tmp_path, "c", "inforeg", 0, 0.90)
  text = table.render([str(tmp_path)])
  rows = [l for l in text.splitlines() if l.startswith("| synthetic")]
  assert len(rows) == 2
  joint = next(r for r in rows if "| joint |" in r)
  assert "0.750 ± 0.071" in joint and joint.rstrip().endswith("| 2 |")
  assert "| 0.900 | 0.800 | 0.700 | 0.910 | 1 |" in next(r for r in rows if "inforeg" in r)


def test_table_without_summaries_is_an_error(tmp_path):
  with pytest.raises(SystemExit, match="no summary.json"):
    table.render([str(tmp_path)])
