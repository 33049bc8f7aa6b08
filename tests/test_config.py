"""The config and its strict command line."""

import os
import subprocess
import sys

import pytest

from inforeg_jax.config import (config_differences, from_dict, make_config, make_parser,
                                parse_flags)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_window_auto_resolves_per_method():
  assert make_config(method="inforeg").resolved_window == "prime"
  assert make_config(method="ogm_ge").resolved_window == "whole"
  assert make_config(method="ogm_ge", window="prime").resolved_window == "prime"


def test_presets_groups_and_overrides():
  cfg, _ = parse_flags(["--dataset=cremad", "--epochs=7", "--ogm_ge.noise=false",
                        "--agm.alpha=2"])
  assert (cfg.encoder, cfg.width, cfg.learning_rate, cfg.epochs) == ("resnet18", 64, 0.002, 7)
  assert cfg.ogm_ge.noise is False and cfg.ogm_ge.alpha == 0.8  # the CREMA-D preset
  assert cfg.agm.alpha == 2.0
  assert parse_flags(["--tiny"])[0].width == 4
  assert parse_flags(["--resume"])[0].resume is True
  assert parse_flags(["--resume=false"])[0].resume is False


def test_defaults_name_the_run_and_the_data():
  cfg = make_config("avmnist", method="pmr", seed=3)
  assert cfg.resolved_workdir == os.path.join("runs", "avmnist", "pmr", "seed3")
  assert cfg.resolved_data_dir == os.path.join("data", "avmnist")
  assert make_config(modalities="visual", method="joint").resolved_workdir.endswith(
      os.path.join("joint-visual", "seed0"))


@pytest.mark.parametrize("flag, message", [
    ("--fusion=late", "--fusion"), ("--window=sometimes", "--window"),
    ("--compute_dtype=fp8", "--compute_dtype"), ("--dataset=imagenet", "--dataset"),
    ("--resume=on", "true or false"), ("--resume=y", "true or false"),
    ("--ogm_ge.noise=enable", "true or false"), ("--epoch=2", "unrecognized"),
    ("--seed=-1", "--seed must be >= 0"), ("--width=0", "--width must be >= 1"),
    ("--eval_batch_size=0", "--eval_batch_size must be >= 1"),
    ("--agm.alpha=x", "expects float"), ("--epochs=2.5", "expects int"),
    ("--inforeg.variant=nope", "--inforeg.variant")])
def test_bad_flags_exit_with_one_line(flag, message, capsys):
  with pytest.raises(SystemExit) as e:
    parse_flags([flag])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert message in err and "Traceback" not in err


def test_flagfile(tmp_path):
  f = tmp_path / "flags"
  f.write_text("# a comment\n--method=agm\n--agm.alpha=3  # inline\n")
  cfg, _ = parse_flags([f"--flagfile={f}", "--epochs=2"])
  assert (cfg.method, cfg.agm.alpha, cfg.epochs) == ("agm", 3.0, 2)


def test_help_shows_the_dataset_defaults_without_importing_jax():
  text = make_parser(["--dataset=cremad"]).format_help()
  assert "(default: 50)" in text and "resnet18" in text and "--agm.alpha" in text
  proc = subprocess.run([sys.executable, "-m", "experiments.run", "--dataset=cremad", "--help"],
                        cwd=ROOT, capture_output=True, text=True)
  assert proc.returncode == 0 and "--inforeg.beta" in proc.stdout
  assert "jax" not in subprocess.run(
      [sys.executable, "-c", "import sys; from inforeg_jax import config; "
       "print(sorted(m for m in sys.modules if m.split('.')[0] == 'jax'))"],
      cwd=ROOT, capture_output=True, text=True).stdout.replace("[]", "")


def test_config_round_trip_and_differences():
  cfg = make_config("avmnist", method="agm", **{"agm.alpha": 3.0})
  assert from_dict(cfg.to_dict()) == cfg
  other = make_config("avmnist", method="agm", epochs=40, batch_size=8, **{"agm.alpha": 3.0})
  assert config_differences(cfg, other) == ["--batch_size=64 -> 8"]
