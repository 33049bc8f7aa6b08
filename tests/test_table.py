import json
import os
import subprocess
import sys

import pytest

from experiments import table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write(tmp_path, name, method, seed, acc, modalities="", **config):
  d = tmp_path / name
  d.mkdir(parents=True)
  (d / "summary.json").write_text(json.dumps({
      "dataset": "synthetic", "method": method, "seed": seed,
      "final": {"acc": acc, "acc_audio": acc - 0.1, "acc_visual": acc - 0.2},
      "best": {"acc": acc + 0.01, "epoch": 3},
      "window": "prime",
      "config": {"dataset": "synthetic", "method": method, "seed": seed, "epochs": 2,
                 "modalities": modalities, "fusion": "concat", "workdir": str(d),
                 "threshold": None, "resume": False, "overwrite": False,
                 "eval_batch_size": 256, "data_dir": "", "skip_nonfinite": False,
                 "inforeg": {"variant": "paper", "beta": 0.9}, **config}}))
  return d


def rows(text):
  return [line for line in text.splitlines() if line.startswith("| synthetic")]


def test_table_pools_seeds_per_setting(tmp_path):
  write(tmp_path, "a", "joint", 0, 0.70)
  write(tmp_path, "b", "joint", 1, 0.80, resume=True, eval_batch_size=64)  # same training
  write(tmp_path, "c", "inforeg", 0, 0.90)
  text = table.render([str(tmp_path)])
  assert "settings" not in text  # nothing but the named columns differs
  assert len(rows(text)) == 2
  joint = next(r for r in rows(text) if "| joint |" in r)
  assert "0.750 ± 0.071" in joint and joint.rstrip().endswith("| 2 |")
  assert "| 0.900 | 0.800 | 0.700 | 0.910 | 1 |" in next(r for r in rows(text) if "inforeg" in r)


def test_table_keeps_other_settings_apart_and_names_them(tmp_path):
  for epochs in (2, 4, 10):
    write(tmp_path, f"e{epochs}", "inforeg", 0, 0.5 + epochs / 100, epochs=epochs)
  write(tmp_path, "k", "inforeg", 0, 0.60, threshold=0.1)
  text = table.render([str(tmp_path)])
  assert "| settings |" in text and len(rows(text)) == 4
  assert [r.count("| 1 |") for r in rows(text)] == [1, 1, 1, 1]  # one seed each, never pooled
  settings = [r.split(" | ")[7] for r in rows(text)]
  assert settings == ["epochs=2 threshold=default", "epochs=2 threshold=0.1",
                      "epochs=4 threshold=default", "epochs=10 threshold=default"]


def test_group_by_gives_a_field_its_own_column(tmp_path):
  write(tmp_path, "a", "inforeg", 0, 0.7, inforeg={"variant": "paper", "beta": 0.5})
  write(tmp_path, "b", "inforeg", 0, 0.8, inforeg={"variant": "paper", "beta": 0.9})
  text = table.render([str(tmp_path)], group_by=["inforeg.beta"])
  assert "| inforeg.beta | acc |" in text and "settings" not in text
  assert [r.split(" | ")[7] for r in rows(text)] == ["0.5", "0.9"]
  with pytest.raises(SystemExit, match=r"--group_by=inforeg\.bta: no run's config"):
    table.render([str(tmp_path)], group_by=["inforeg.bta"])


def test_a_second_copy_of_a_seed_is_refused_naming_both_folders(tmp_path):
  first = write(tmp_path, "old/seed0", "joint", 0, 0.70)
  second = write(tmp_path, "new/seed0", "joint", 0, 0.75)
  with pytest.raises(SystemExit) as e:
    table.render([str(tmp_path)])
  assert str(e.value).startswith("error: ") and "\n" not in str(e.value)
  assert str(first) in str(e.value) and str(second) in str(e.value) and "seed 0" in str(e.value)


@pytest.mark.parametrize("content", ['{"dataset": "synthetic", "fin', "not json", "[1, 2]",
                                     '{"final": {"acc": 1}}'])
def test_a_damaged_summary_is_one_line_naming_the_file(tmp_path, content):
  write(tmp_path, "good", "joint", 0, 0.7)
  bad = tmp_path / "bad" / "summary.json"
  bad.parent.mkdir()
  bad.write_text(content)
  proc = subprocess.run([sys.executable, "-m", "experiments.table", str(tmp_path)], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0 and "Traceback" not in proc.stderr
  assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: ")
  assert str(bad) in proc.stderr


def test_table_without_summaries_is_an_error(tmp_path):
  with pytest.raises(SystemExit, match="no summary.json"):
    table.render([str(tmp_path)])
