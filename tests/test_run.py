"""The CLI end to end on tiny presets."""

import json
import os
import subprocess
import sys

import pytest

from experiments import run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


@pytest.mark.parametrize("method", ["joint", "inforeg", "inforeg_uni"])
def test_tiny_run_writes_metrics_and_summary(tmp_path, method):
  workdir = str(tmp_path / method)
  own = ["--inforeg.warmup_epochs=2"] if method.startswith("inforeg") else []
  assert run.main(["--tiny", f"--method={method}", "--limit_train=256", "--epochs=3",
                   f"--workdir={workdir}", "--window=whole", *own]) == 0
  rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  assert [r["epoch"] for r in rows] == [0, 1, 2]
  for key in ("train_loss", "acc", "val_acc", "acc_audio", "acc_visual", "trace_audio",
              "trace_visual", "f1_macro"):
    assert all(key in r for r in rows), key
  assert all(0 <= r["acc"] <= 1 for r in rows)
  if method.startswith("inforeg"):
    # two warm-up epochs, then (window "whole") the leading modality is regulated
    assert [r["alpha_audio"] + r["alpha_visual"] == 0 for r in rows] == [True, True, False]
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  assert summary["dataset"] == "synthetic" and summary["method"] == method
  assert summary["num_devices"] >= 1 and summary["epochs"] == 3
  assert set(summary["final"]) == {"acc", "val_acc", "acc_audio", "acc_visual", "f1_macro"}
  assert summary["final"]["acc"] == rows[-1]["acc"]
  best_val = max(rows, key=lambda r: r["val_acc"])
  assert summary["selected"]["epoch"] == best_val["epoch"]
  assert summary["selected"]["acc"] == best_val["acc"]
  assert summary["best"]["acc"] == max(r["acc"] for r in rows)


def test_bad_flag_is_one_clear_line(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "experiments.run", "--method=nope"],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2
  assert "--method must be one of" in proc.stderr and "Traceback" not in proc.stderr


def test_missing_prepared_data_names_the_prep_command(tmp_path, capsys):
  assert run.main(["--dataset=cremad", f"--data_dir={tmp_path}/nothing"]) == 2
  err = capsys.readouterr().err
  assert "python -m data_prep.cremad" in err and "Traceback" not in err


def test_official_variant_uses_released_constants(tmp_path):
  workdir = tmp_path / "official"
  assert run.main(["--tiny", "--inforeg.variant=official", "--limit_train=128", "--epochs=2",
                   f"--workdir={workdir}"]) == 0
  rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  # no warm-up and k = 1 at epoch 0: the released code regulates from the first epoch
  assert rows[0]["window_audio"] == 1.0 and rows[0]["window_visual"] == 1.0
  assert rows[0]["alpha_audio"] + rows[0]["alpha_visual"] > 0
