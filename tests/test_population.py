"""Populations: the members of one compiled program are the single runs they name.

Each member's per-epoch metrics match its single run to rtol 1e-4 (G-Blending, whose trials train
whole epochs first: 1e-3; seen: ~1e-7 and 1e-4). Not exactly:
a member's elementwise ops and reductions run vectorised over the member axis, which XLA may
fuse and order differently from a single run's (its convolutions are the same native ones,
`models.member_conv`). Also: exact resume of a population (a kill between two members' saves
included), a member that turns non-finite stops alone, the member axis sharded over 4 CPU
devices, and the command line's lists.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from inforeg_jax import trainer
from tests.test_trainer_runs import rows, tiny, tiny_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = ("train_loss", "acc", "val_acc", "acc_audio", "acc_visual", "trace_audio",
        "trace_visual")


def assert_same_rows(a, b, keys, rtol=1e-4):
  assert [r["epoch"] for r in a] == [r["epoch"] for r in b]
  for k in keys:
    np.testing.assert_allclose([r[k] for r in a], [r[k] for r in b], rtol=rtol, atol=1e-6,
                               err_msg=k)


CASES = {  # method: (its options, the member-wise values of the two members, extra row keys)
    "joint": ({}, [{"learning_rate": 0.02}, {"learning_rate": 0.05}], ()),
    "inforeg": ({"inforeg.warmup_epochs": 0},
                [{"inforeg.beta": 0.9}, {"inforeg.beta": 0.3, "learning_rate": 0.05}],
                ("alpha_audio", "alpha_visual", "window")),
    "ogm_ge": ({}, [{"ogm_ge.alpha": 0.1}, {"ogm_ge.alpha": 0.8}], ("coef_audio", "coef_visual")),
    "pmr": ({"pmr.end_epoch": 5}, [{"pmr.alpha": 1.0}, {"pmr.alpha": 3.0, "pmr.momentum": 0.5}],
            ("coef_audio", "coef_visual")),
    "gblending": ({"gblending.super_epoch": 2}, [{}, {"learning_rate": 0.05}],
                  ("weight_fused", "weight_audio", "weight_visual")),
}


@pytest.mark.parametrize("method", list(CASES))
def test_each_member_is_its_single_run(tmp_path, method):
  options, values, extra = CASES[method]
  ds = tiny_dataset()
  members = [tiny(tmp_path / "pop" / f"m{i}", method=method, seed=i, **options, **v)
             for i, v in enumerate(values)]
  summaries = trainer.train(members, ds, progress=False)
  assert [s["population"] for s in summaries] == [2, 2]
  for i, cfg in enumerate(members):
    single = tiny(tmp_path / f"single{i}", method=method, seed=i, **options, **values[i])
    trainer.train(single, ds, progress=False)
    # G-Blending: its trials train copies of the model for whole epochs before the weights
    # exist, which carries the float differences further (seen: 1e-4)
    assert_same_rows(rows(cfg.workdir), rows(single.workdir), KEYS + extra,
                     rtol=1e-3 if method == "gblending" else 1e-4)
    with open(os.path.join(cfg.workdir, "summary.json")) as f:
      assert json.load(f)["config"] == {**single.to_dict(), "workdir": cfg.workdir}
  # the two members are not one run twice
  assert rows(members[0].workdir)[-1]["train_loss"] != rows(members[1].workdir)[-1][
      "train_loss"]


def test_a_population_resumes_exactly_even_when_killed_between_two_saves(tmp_path):
  ds = tiny_dataset()
  opts = {"inforeg.warmup_epochs": 0, "method": "inforeg"}
  straight = [tiny(tmp_path / "a" / f"m{s}", seed=s, **opts) for s in (0, 1)]
  trainer.train(straight, ds, progress=False)
  two = [tiny(tmp_path / "b" / f"m{s}", seed=s, epochs=2, **opts) for s in (0, 1)]
  trainer.train(two, ds, progress=False)
  # as if killed after member 0 saved epoch 1 and before member 1 did
  shutil.rmtree(os.path.join(two[1].workdir, "checkpoints", "1"))
  resumed = [tiny(tmp_path / "b" / f"m{s}", seed=s, resume=True, **opts) for s in (0, 1)]
  trainer.train(resumed, ds, progress=False)
  for a, b in zip(straight, resumed):
    assert_same_rows(rows(a.workdir), rows(b.workdir), KEYS + ("alpha_audio", "alpha_visual"))


def test_a_member_that_turns_non_finite_stops_alone(tmp_path):
  ds = tiny_dataset()
  members = [tiny(tmp_path / "ok", method="joint", learning_rate=0.02),
             tiny(tmp_path / "bad", method="joint", learning_rate=1e12)]
  summaries = trainer.train(members, ds, progress=False)
  ok, bad = summaries
  assert "stopped" not in ok and [r["epoch"] for r in rows(ok["workdir"])] == [0, 1, 2]
  assert "non-finite" in bad["stopped"]
  with open(os.path.join(members[1].workdir, "summary.json")) as f:
    assert "non-finite" in json.load(f).get("stopped", "non-finite")
  single = tiny(tmp_path / "single", method="joint", learning_rate=0.02)
  trainer.train(single, ds, progress=False)
  assert_same_rows(rows(ok["workdir"]), rows(single.workdir), KEYS)


def run_cli(devices, *flags):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  proc = subprocess.run([sys.executable, "-m", "experiments.run", "--tiny", "--epochs=2",
                         "--limit_train=64", "--batch_size=16", "--eval_batch_size=64",
                         *flags], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def test_the_member_axis_sharded_over_four_devices(tmp_path):
  """Four members on 4 CPU devices (a pop axis of 4) train as on one device; each member's
  folder is the one its single run would use, and that run resumes from it alone."""
  flags = ["--method=agm", "--seeds=0,1", "--agm.alpha=1,2"]
  run_cli(1, *flags, f"--workdir={tmp_path / 'one'}")
  run_cli(4, *flags, f"--workdir={tmp_path / 'four'}")
  for setting in ("agm.alpha=1.0", "agm.alpha=2.0"):
    for seed in (0, 1):
      one = rows(tmp_path / "one" / setting / f"seed{seed}")
      four = rows(tmp_path / "four" / setting / f"seed{seed}")
      assert_same_rows(four, one, KEYS + ("coef_audio", "coef_visual"))
  with open(tmp_path / "four" / "agm.alpha=2.0" / "seed1" / "summary.json") as f:
    summary = json.load(f)
  assert summary["num_devices"] == 4 and summary["population"] == 4
  # one member, resumed on its own for a third epoch
  member = tmp_path / "one" / "agm.alpha=2.0" / "seed1"
  run_cli(1, "--method=agm", "--seed=1", "--agm.alpha=2", "--epochs=3", "--resume",
          f"--workdir={member}")
  assert [r["epoch"] for r in rows(member)] == [0, 1, 2]
