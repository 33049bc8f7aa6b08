"""The config and its strict command line."""

import os
import subprocess
import sys

import pytest

from inforeg_jax.config import (config_differences, from_dict, make_config, make_parser,
                                parse_flags, parse_members)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_window_auto_resolves_per_method():
  assert make_config(method="inforeg").resolved_window == "prime"
  assert make_config(method="ogm_ge").resolved_window == "whole"
  assert make_config(method="ogm_ge", window="prime").resolved_window == "prime"


def test_presets_groups_and_overrides():
  cfg, _ = parse_flags(["--dataset=cremad", "--epochs=7", "--method=ogm_ge",
                        "--ogm_ge.noise=false"])
  assert (cfg.encoder, cfg.width, cfg.learning_rate, cfg.epochs) == ("resnet18", 64, 0.002, 7)
  assert cfg.ogm_ge.noise is False and cfg.ogm_ge.alpha == 0.8  # OGM-GE's CREMA-D default
  assert cfg.options is cfg.ogm_ge
  assert parse_flags(["--method=agm", "--agm.alpha=2"])[0].agm.alpha == 2.0
  assert parse_flags(["--method=agm", "--dataset=avmnist"])[0].agm.clamp is False  # its script
  assert parse_flags(["--method=agm"])[0].agm.clamp is True
  assert parse_flags(["--tiny"])[0].width == 4
  assert parse_flags(["--tiny", "--method=gblending"])[0].gblending.super_epoch == 2
  assert parse_flags(["--resume"])[0].resume is True
  assert parse_flags(["--resume=false"])[0].resume is False


def test_an_option_of_another_method_is_refused(capsys):
  with pytest.raises(SystemExit) as e:
    parse_flags(["--method=joint", "--agm.alpha=2"])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert "--agm.alpha is an option of another method than --method=joint" in err
  assert len(err.strip().splitlines()) == 2  # usage + the one error line
  with pytest.raises(ValueError, match="another method"):
    make_config(method="ogm_ge", **{"pmr.alpha": 1.0})
  # the options of the run's method only: cfg.<other group> is not there
  with pytest.raises(AttributeError, match="another method"):
    make_config(method="joint").agm  # noqa: B018


def test_lists_make_members_each_in_its_own_workdir():
  members, _ = parse_members(["--method=agm", "--seeds=0,1", "--agm.alpha=1,2.5",
                              "--workdir=runs/x"])
  assert [(c.seed, c.agm.alpha) for c in members] == [(0, 1.0), (1, 1.0), (0, 2.5), (1, 2.5)]
  assert [c.resolved_workdir for c in members] == [
      os.path.join("runs/x", "agm.alpha=1.0", "seed0"),
      os.path.join("runs/x", "agm.alpha=1.0", "seed1"),
      os.path.join("runs/x", "agm.alpha=2.5", "seed0"),
      os.path.join("runs/x", "agm.alpha=2.5", "seed1")]
  # seeds alone: the single runs' own default workdirs
  seeds, _ = parse_members(["--method=joint", "--seeds=3,4"])
  assert [c.resolved_workdir for c in seeds] == [
      make_config(method="joint", seed=s).resolved_workdir for s in (3, 4)]
  # each member is the config its single run would have (but the workdir)
  single = make_config(method="agm", seed=1, **{"agm.alpha": 2.5})
  assert config_differences(members[3], single) == []
  assert parse_members(["--seed=2"])[0][0] == make_config(seed=2)


@pytest.mark.parametrize("flag, message", [
    ("--epochs=2,3", "--epochs takes one value"), ("--fusion=sum,concat", "--fusion"),
    ("--seeds=0,0", "lists a value twice"), ("--learning_rate=0.1,x", "expects float"),
    ("--method=joint,agm", "--method")])
def test_lists_of_program_settings_are_refused(flag, message, capsys):
  with pytest.raises(SystemExit) as e:
    parse_members([flag])
  assert e.value.code == 2 and message in capsys.readouterr().err
  with pytest.raises(SystemExit):
    parse_flags(["--seeds=0,1"])  # one run takes one value


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
    ("--inforeg.beta=x", "expects float"), ("--epochs=2.5", "expects int"),
    ("--inforeg.variant=nope", "--inforeg.variant"), ("--threshold=nan", "finite"),
    ("--learning_rate=inf", "finite"), ("--seed=99999999999", "--seed must be <="),
    ("--data_dir=x", "built in"), ("--method=nope", "--method must be one of")])
def test_bad_flags_exit_with_one_line(flag, message, capsys):
  with pytest.raises(SystemExit) as e:
    parse_flags([flag])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert message in err and "Traceback" not in err


def test_flagfile(tmp_path, capsys):
  f = tmp_path / "flags"
  f.write_text("# a comment\n--method=agm\n--agm.alpha=3  # inline\n")
  cfg, _ = parse_flags([f"--flagfile={f}", "--epochs=2"])
  assert (cfg.method, cfg.agm.alpha, cfg.epochs) == ("agm", 3.0, 2)
  loop = tmp_path / "loop"
  loop.write_text(f"--epochs=2\n--flagfile={loop}\n")
  binary = tmp_path / "binary"
  binary.write_bytes(bytes(range(256)))
  for bad, message in ((loop, "includes itself"), (binary, "not a text file")):
    with pytest.raises(SystemExit) as e:
      parse_flags([f"--flagfile={bad}"])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_config_file_then_flags(tmp_path, capsys):
  f = tmp_path / "cfg.py"
  f.write_text("config = dict(method='agm', epochs=5, **{'agm.alpha': 2.0})\n")
  cfg, args = parse_flags([f"--config={f}", "--epochs=7"])
  assert (cfg.method, cfg.epochs, cfg.agm.alpha, args.config) == ("agm", 7, 2.0, str(f))
  for text, message in (("config = 3\n", "must define"), ("config = dict(nope=1)\n", "nope"),
                        ("1/0\n", "ZeroDivisionError")):
    f.write_text(text)
    with pytest.raises(SystemExit):
      parse_flags([f"--config={f}"])
    assert message in capsys.readouterr().err


def test_help_shows_the_dataset_defaults_without_importing_jax():
  text = make_parser(["--dataset=cremad"]).format_help()
  assert "(default: 50)" in text and "resnet18" in text and "--agm.alpha" in text
  assert "[list: one member each]" in text and "--seeds" in text
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
