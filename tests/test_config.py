"""The config: presets, the method's options, defaults, round trips (the command line that
fills it: tests/test_flags.py)."""

import os

import pytest

from inforeg_jax.config import config_differences, from_dict, make_config


def test_window_auto_resolves_per_method():
  assert make_config(method="inforeg").resolved_window == "prime"
  assert make_config(method="ogm_ge").resolved_window == "whole"
  assert make_config(method="ogm_ge", window="prime").resolved_window == "prime"


def test_an_option_of_another_method_is_refused():
  with pytest.raises(ValueError, match="another method"):
    make_config(method="ogm_ge", **{"pmr.alpha": 1.0})
  # the options of the run's method only: cfg.<other group> is not there
  with pytest.raises(AttributeError, match="another method"):
    make_config(method="joint").agm  # noqa: B018


def test_defaults_name_the_run_and_the_data():
  cfg = make_config("avmnist", method="pmr", seed=3)
  assert cfg.resolved_workdir == os.path.join("runs", "avmnist", "pmr", "seed3")
  assert cfg.resolved_data_dir == os.path.join("data", "avmnist")
  assert make_config(modalities="visual", method="joint").resolved_workdir.endswith(
      os.path.join("joint-visual", "seed0"))


def test_config_round_trip_and_differences():
  cfg = make_config("avmnist", method="agm", **{"agm.alpha": 3.0})
  assert from_dict(cfg.to_dict()) == cfg
  other = make_config("avmnist", method="agm", epochs=40, batch_size=8, **{"agm.alpha": 3.0})
  assert config_differences(cfg, other) == ["--batch_size=64 -> 8"]
