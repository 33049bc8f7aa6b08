import pytest

from inforeg_jax.config import make_config, parse_flags


def test_window_auto_resolves_per_method():
  assert make_config(method="inforeg").window == "prime"
  assert make_config(method="ogm_ge").window == "whole"
  assert make_config(method="ogm_ge", window="prime").window == "prime"


def test_presets_and_overrides():
  cfg, _ = parse_flags(["--dataset=cremad", "--epochs=7", "--ogm_noise=false"])
  assert (cfg.encoder, cfg.width, cfg.learning_rate, cfg.epochs) == ("resnet18", 64, 0.002, 7)
  assert cfg.ogm_noise is False
  assert parse_flags(["--tiny"])[0].width == 4


@pytest.mark.parametrize("flag", ["--fusion=late", "--window=sometimes", "--compute_dtype=fp8",
                                  "--dataset=imagenet"])
def test_bad_flags_exit_with_usage(flag, capsys):
  with pytest.raises(SystemExit) as e:
    parse_flags([flag])
  assert e.value.code == 2
  assert "must be" in capsys.readouterr().err
