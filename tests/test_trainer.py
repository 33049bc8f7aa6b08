"""The loop's schedule, bookkeeping and resume, in process (the CLI's end to end is test_run)."""

import os
import signal

import jax.numpy as jnp
import numpy as np
import pytest

import types

from inforeg_jax import loop as loop_lib
from inforeg_jax import members as members_lib
from inforeg_jax.config import make_config
from inforeg_jax.hyper import hyper_of
from inforeg_jax.train import Optimizer, TransformInputs
from inforeg_jax.workdir import RunError
from inforeg_jax.regulation import OFFICIAL_THRESHOLD, PAPER_THRESHOLD


class NoTransforms:
  """A method with no transformations of its own."""

  def __init__(self, cfg, steps_per_epoch):
    self.cfg, self.setup = cfg, types.SimpleNamespace(steps_per_epoch=steps_per_epoch)

  def transforms(self, labels, hyper):
    return []


def optimizer(cfg, steps_per_epoch):
  """(init, update) of the run's optimizer for ``cfg``'s values, no method transformations."""
  opt, hyper = Optimizer(NoTransforms(cfg, steps_per_epoch), None), hyper_of(cfg)
  return (lambda p: opt.init(p, hyper),
          lambda g, s, p: opt.update(g, s, p, TransformInputs(hyper, None, None)))


def lr_per_step(cfg, steps_per_epoch, steps):
  """The learning rate of each step, read off SGD's update for a unit gradient."""
  init, update = optimizer(cfg, steps_per_epoch)
  params = {"w": jnp.zeros(())}
  state, out = init(params), []
  for _ in range(steps):
    updates, state = update({"w": jnp.ones(())}, state, params)
    out.append(-float(updates["w"]))
  return np.array(out)


def test_step_lr_decays_after_every_lr_step_epochs():
  cfg = make_config(learning_rate=0.1, lr_step_epochs=2, lr_decay=0.1, epochs=5, momentum=0.0,
                    weight_decay=0.0)
  lr = lr_per_step(cfg, steps_per_epoch=3, steps=15)
  expected = np.repeat([0.1, 0.01, 0.001], [6, 6, 3])  # decays after epochs 2 and 4
  np.testing.assert_allclose(lr, expected, rtol=1e-6)


def test_step_lr_without_a_decay_inside_the_run():
  cfg = make_config(learning_rate=0.05, lr_step_epochs=4, lr_decay=0.1, epochs=4, momentum=0.0,
                    weight_decay=0.0)
  np.testing.assert_allclose(lr_per_step(cfg, 2, 8), 0.05, rtol=1e-6)


def test_weight_decay_and_momentum_follow_the_method_transforms():
  cfg = make_config(learning_rate=1.0, lr_step_epochs=10, epochs=10, momentum=0.5,
                    weight_decay=0.1)
  init, update = optimizer(cfg, 1)
  params = {"w": jnp.full((), 2.0)}
  state = init(params)
  u1, state = update({"w": jnp.ones(())}, state, params)
  u2, _ = update({"w": jnp.ones(())}, state, params)
  g = 1.0 + 0.1 * 2.0  # gradient + weight decay
  assert float(u1["w"]) == pytest.approx(-g)
  assert float(u2["w"]) == pytest.approx(-(g + 0.5 * g))  # momentum 0.5


def test_window_threshold():
  assert make_config(threshold=0.07).resolved_threshold == 0.07
  assert make_config(method="inforeg").resolved_threshold == PAPER_THRESHOLD
  official = make_config(method="inforeg", **{"inforeg.variant": "official"})
  assert official.resolved_threshold == OFFICIAL_THRESHOLD
  assert make_config(method="ogm_ge").resolved_threshold == PAPER_THRESHOLD
  assert PAPER_THRESHOLD != OFFICIAL_THRESHOLD


def record(loss, finite, alpha=0.0, grad=1.0):
  return {"loss": jnp.float32(loss), "finite": jnp.float32(finite),
          "alpha_audio": jnp.float32(alpha), "grad_sq_audio": jnp.float32(grad)}


def members(*records):
  """Per-step records of a population from one record per member."""
  return {k: jnp.stack([r[k] for r in records]) for k in records[0]}


def test_epoch_means_leave_out_skipped_steps():
  [(means, series)] = loop_lib.epoch_means([record(1.0, 1, 0.5), record(np.nan, 0, 2.0),
                                            record(3.0, 1, 1.5)])
  assert means["loss"] == pytest.approx(2.0)
  assert means["alpha_audio"] == pytest.approx(1.0)
  assert means["skipped_steps"] == 1
  assert series == {"alpha_audio": [0.5, 2.0, 1.5]}  # every step, for the plots
  # Tr(F)'s standard error over the finite steps: std / sqrt(n) of their grad_sq
  [(means, _)] = loop_lib.epoch_means([record(1.0, 1, grad=1.0), record(1.0, 1, grad=3.0),
                                       record(1.0, 0, grad=99.0)])
  assert means["trace_se_audio"] == pytest.approx(np.std([1.0, 3.0], ddof=1) / np.sqrt(2))
  # every step skipped: the means are over all of them (and say so)
  [(means, _)] = loop_lib.epoch_means([record(np.nan, 0), record(np.nan, 0)])
  assert means["skipped_steps"] == 2 and np.isnan(means["loss"])
  [(means, series)] = loop_lib.epoch_means([record(2.0, 1, 0.25)])  # a one-step epoch
  assert means["loss"] == 2.0 and series == {"alpha_audio": [0.25]}
  # a population: each member its own means over its own finite steps
  out = loop_lib.epoch_means([members(record(1.0, 1), record(5.0, 1)),
                              members(record(3.0, 1), record(np.nan, 0))])
  assert [m["loss"] for m, _ in out] == [2.0, 5.0]
  assert [m["skipped_steps"] for m, _ in out] == [0, 1]


def test_first_nonfinite_names_the_culprit():
  assert loop_lib.first_nonfinite(record(np.nan, 0), ["audio"]) == "the loss"
  assert loop_lib.first_nonfinite(record(1.0, 0, grad=np.inf), ["audio"]) == "Tr(F) of audio"
  two = members(record(1.0, 1), record(1.0, 0, grad=np.inf))
  assert loop_lib.first_nonfinite(two, ["audio"], 1) == "Tr(F) of audio"


def test_summary_reports_final_validation_selected_and_best_test():
  history = [{"epoch": 0, "acc": 0.5, "val_acc": 0.4, "acc_audio": 0.3, "loss": 1.0},
             {"epoch": 1, "acc": 0.9, "val_acc": 0.5, "acc_audio": 0.4, "loss": 0.5},
             {"epoch": 2, "acc": 0.7, "val_acc": 0.8, "acc_audio": 0.6, "loss": 0.4},
             {"epoch": 3, "acc": 0.6, "val_acc": 0.7, "acc_audio": 0.5, "loss": 0.3,
              "skipped_steps": 2}]
  history[1]["skipped_steps"] = 1
  s = members_lib.run_summary(make_config(epochs=4), history, 12.345, "w")
  assert s["final"] == {"acc": 0.6, "val_acc": 0.7, "acc_audio": 0.5}
  assert s["selected"] == {"by": "val_acc", "epoch": 2, "acc": 0.7, "val_acc": 0.8,
                           "acc_audio": 0.6}
  assert s["best"] == {"acc": 0.9, "epoch": 1}
  assert s["skipped_steps"] == 3 and s["train_seconds"] == 12.35 and s["epochs"] == 4
  # without a validation split the test accuracy selects (and says so)
  no_val = [{k: v for k, v in r.items() if k != "val_acc"} for r in history]
  s = members_lib.run_summary(make_config(), no_val, 1.0, "w")
  assert s["selected"]["by"] == "acc" and s["selected"]["epoch"] == 1


@pytest.mark.parametrize("seed", range(20))
def test_macro_f1_is_scikit_learns(seed):
  """Our F1 (computed without importing scikit-learn) against scikit-learn's, bit for bit,
  including classes only predicted, classes never predicted and a single class."""
  from sklearn.metrics import f1_score
  rng = np.random.default_rng(seed)
  n, k = int(rng.integers(1, 300)), int(rng.integers(1, 12))
  labels = rng.integers(0, k, n)
  pred = np.where(rng.random(n) < 0.6, labels, rng.integers(0, k + 2, n))
  assert loop_lib.macro_f1(labels, pred) == f1_score(labels, pred, average="macro",
                                                    zero_division=0)


def test_prepare_workdir(tmp_path):
  workdir = str(tmp_path / "run")
  assert members_lib.prepare_workdir(make_config(workdir=workdir)) == workdir
  assert os.listdir(workdir) == []  # the write probe is gone
  open(os.path.join(workdir, "metrics.jsonl"), "w").close()
  with pytest.raises(RunError, match="--resume .* or\n?.*--overwrite|already holds"):
    members_lib.prepare_workdir(make_config(workdir=workdir))
  assert members_lib.prepare_workdir(make_config(workdir=workdir, resume=True)) == workdir
  assert os.path.exists(os.path.join(workdir, "metrics.jsonl"))  # resume keeps it
  with pytest.raises(RunError, match="exclude each other"):
    members_lib.prepare_workdir(make_config(workdir=workdir, resume=True, overwrite=True))
  members_lib.prepare_workdir(make_config(workdir=workdir, overwrite=True))
  # nothing is deleted before the run has checked everything (the run sets it aside)
  assert os.path.exists(os.path.join(workdir, "metrics.jsonl"))
  # a folder holding more than a run is never replaced
  open(os.path.join(workdir, "notes.txt"), "w").close()
  with pytest.raises(RunError, match="not a run's \\(notes.txt\\)"):
    members_lib.prepare_workdir(make_config(workdir=workdir, overwrite=True))
  # a workdir with only unrelated files is not a run
  other = tmp_path / "other"
  other.mkdir()
  (other / "notes.txt").write_text("mine")
  members_lib.prepare_workdir(make_config(workdir=str(other)))
  # a run inside another run's folder, or over runs in its subfolders: refused, not nested
  for inner, outer in ((f"{workdir}/seed0", workdir), (str(tmp_path), workdir)):
    with pytest.raises(RunError, match=f"would nest with the run in {outer}"):
      members_lib.prepare_workdir(make_config(workdir=inner))
  assert not os.path.exists(f"{workdir}/seed0")
  members_lib.prepare_workdir(make_config(workdir=str(tmp_path / "beside")))  # side by side
  project = tmp_path / "project"  # a folder named checkpoints/ is not a run's own files
  (project / "checkpoints").mkdir(parents=True)
  members_lib.prepare_workdir(make_config(workdir=str(project / "runs1")))


def test_run_name_and_hparams():
  cfg = make_config(method="inforeg", modalities="audio", seed=3)
  assert members_lib.run_name(cfg) == "synthetic / inforeg (audio) / seed 3"
  assert members_lib.run_name(make_config(method="joint", seed=1)) == "synthetic / joint / seed 1"
  h = members_lib.hparams(cfg)
  assert h["method"] == "inforeg" and h["seed"] == 3 and h["modalities"] == "audio"
  assert h["inforeg.beta"] == cfg.options.beta
  assert members_lib.hparams(make_config())["modalities"] == "all"


def evaluation(base):
  """An evaluation's numbers for one member; the validation and test ones differ."""
  return {"acc": base, "loss": base + 1, "f1_macro": base + 2, "acc_audio": base + 3,
          "acc_visual": base + 4, "loss_audio": base + 5, "loss_visual": base + 6}


def test_epoch_row_fields():
  train = {"loss": 1.5, "acc": 0.25, "fused_loss": 9.0, "finite": 1.0, "skipped_steps": 0,
           "alpha_audio": 1.2, "coef_visual": 0.8}
  for m, k in (("audio", 1), ("visual", 2)):
    train.update({f"loss_{m}": 9.0, f"acc_{m}": 0.1 * k, f"grad_sq_{m}": 10.0 * k})
  mods = ("audio", "visual")
  row = loop_lib.epoch_row(mods, train, evaluation(0.5), evaluation(0.1))
  assert row == pytest.approx({
      "train_loss": 1.5, "train_acc": 0.25, "val_acc": 0.5, "val_loss": 1.5,
      "val_acc_audio": 3.5, "val_acc_visual": 4.5, "test_loss": 1.1, "acc": 0.1,
      "f1_macro": 2.1, "acc_audio": 3.1, "acc_visual": 4.1, "test_loss_audio": 5.1,
      "test_loss_visual": 6.1, "train_acc_audio": 0.1, "train_acc_visual": 0.2,
      "trace_audio": 10.0, "trace_visual": 20.0, "skipped_steps": 0, "alpha_audio": 1.2,
      "coef_visual": 0.8})
  no_val = loop_lib.epoch_row(mods, train, None, evaluation(0.1))
  assert not any(k.startswith("val_") for k in no_val) and no_val["acc"] == 0.1
  # a method whose branch accuracies are not unimodal logs none (Greedy)
  branches = {k: v for k, v in train.items() if not k.startswith("acc_")}
  assert not any(k.startswith("train_acc_") for k in loop_lib.epoch_row(mods, branches, None,
                                                                       evaluation(0.1)))


def test_ctrl_c_is_deferred_to_the_next_step_and_a_second_one_stops_at_once():
  before = signal.getsignal(signal.SIGINT)
  stop = loop_lib.StopAtStep()
  try:
    signal.raise_signal(signal.SIGINT)  # e.g. inside a checkpoint write: nothing raised there
    assert stop.requested
    with pytest.raises(KeyboardInterrupt):
      stop.check()  # the next step boundary
    with pytest.raises(KeyboardInterrupt):
      signal.raise_signal(signal.SIGINT)  # the second Ctrl-C
  finally:
    stop.restore()
  assert signal.getsignal(signal.SIGINT) is before
