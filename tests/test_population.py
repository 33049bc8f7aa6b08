"""Populations: the members of one compiled program are the single runs they name.

One after another (`--execution=sequential`, the CPU's default) every member is its single
run bit for bit, whatever the population (every number of metrics.jsonl equal, a population
of one included). Vectorised (`--execution=vectorised`, jax.vmap over a member axis) a member
matches its single run to rtol 1e-4 (G-Blending, whose trials train whole epochs first: 1e-3):
its elementwise ops and reductions run over the member axis, which XLA may fuse and order
differently. Also: each host hook gets its own member's values, exact resume of a population
(a kill between two members' saves included), a member that turns non-finite stops alone, the
members over 4 CPU devices, and the command line's lists.
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
    "agm": ({}, [{"agm.alpha": 1.0}, {"agm.alpha": 2.5}], ("coef_audio", "coef_visual")),
}


def identical_rows(a, b):
  """Every number of two runs' metrics.jsonl equal (their wall-clock times aside)."""
  assert len(a) == len(b)
  for ra, rb in zip(a, b):
    assert {k: v for k, v in ra.items() if k != "time_s"} == {
        k: v for k, v in rb.items() if k != "time_s"}


@pytest.mark.parametrize("method", list(CASES))
def test_each_member_is_its_single_run_bit_for_bit(tmp_path, method):
  """One after another, a member is its single run exactly, in a population of two or of
  three (another member added), and trained alone as a population of one."""
  options, values, _ = CASES[method]
  ds = tiny_dataset()
  members = [tiny(tmp_path / "pop" / f"m{i}", method=method, seed=i, **options, **v)
             for i, v in enumerate(values)]
  summaries = trainer.train(members, ds, progress=False)
  assert [s["population"] for s in summaries] == [2, 2]
  three = [tiny(tmp_path / "three" / f"m{i}", method=method, seed=i, **options, **v)
           for i, v in enumerate(values + [{"learning_rate": 0.07}])]
  trainer.train(three, ds, progress=False)
  for i, cfg in enumerate(members):
    single = tiny(tmp_path / f"single{i}", method=method, seed=i, **options, **values[i])
    trainer.train(single, ds, progress=False)
    identical_rows(rows(cfg.workdir), rows(single.workdir))
    identical_rows(rows(three[i].workdir), rows(single.workdir))
    np.testing.assert_array_equal(
        np.load(os.path.join(cfg.workdir, "test_predictions.npy")),
        np.load(os.path.join(single.workdir, "test_predictions.npy")))
  # the two members are not one run twice
  assert rows(members[0].workdir)[-1]["train_loss"] != rows(members[1].workdir)[-1][
      "train_loss"]


@pytest.mark.parametrize("method", list(CASES))
def test_vectorised_members_match_their_single_runs(tmp_path, method):
  options, values, extra = CASES[method]
  ds = tiny_dataset()
  members = [tiny(tmp_path / "pop" / f"m{i}", method=method, seed=i, execution="vectorised",
                  **options, **v) for i, v in enumerate(values)]
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
      assert json.load(f)["config"] == {**single.to_dict(), "workdir": cfg.workdir,
                                        "execution": "vectorised"}



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


def test_a_population_over_four_devices(tmp_path):
  """Four members on 4 CPU devices (each member's batch split over them) train as on one
  device; each member's folder is the one its single run would use, and that run resumes
  from it alone."""
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


def test_a_hook_cannot_read_the_shared_configs_member_value():
  """The method is built once from a config whose member-wise values refuse to be read: a
  hook that reads ``self.options.momentum`` instead of its member's fails with one line
  saying where the member's value is (PMR's prototypes read ``loop.hyper``: the bit-for-bit
  test above has members of momentum 0 and 0.5)."""
  from inforeg_jax.config import make_config
  from inforeg_jax.hyper import MemberValueError, hyper_of, static_config
  from inforeg_jax.methods.base import Setup
  from inforeg_jax.methods.pmr import PMR
  cfg = make_config(method="pmr", **{"pmr.momentum": 0.5})
  method = PMR(static_config(cfg), Setup(("audio", "visual"), 3, 10, "whole"))
  for read in (lambda: 1 - method.options.momentum, lambda: float(method.options.alpha),
               lambda: method.cfg.learning_rate * 2, lambda: method.cfg.seed + 1):
    with pytest.raises(MemberValueError, match="differs between the members"):
      read()
  assert method.options.prototype_fraction == 0.1  # shared settings read as usual
  assert float(hyper_of(cfg).method.momentum) == 0.5
