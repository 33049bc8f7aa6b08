"""Checkpoints: what is kept, what a resume reads, and damaged checkpoints skipped."""

import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from inforeg_jax import checkpoint
from inforeg_jax import members as members_lib
from inforeg_jax.workdir import RunError
from inforeg_jax.config import make_config


def state_of(epoch):
  return {"w": jnp.full((3,), float(epoch)), "step": jnp.int32(epoch)}


def save_epochs(mngr, epochs, best, keep_last=checkpoint.KEEP_LAST, config=None):
  history = []
  for e in epochs:
    history.append({"epoch": e})
    checkpoint.save(mngr, e, state_of(e), {"history": list(history), "config": config or {}},
                    best_epoch=best(e), keep_last=keep_last)


def test_keeps_the_last_three_and_the_best(tmp_path):
  mngr = checkpoint.manager(str(tmp_path))
  save_epochs(mngr, range(7), best=lambda e: min(e, 1))
  assert sorted(mngr.all_steps()) == [1, 4, 5, 6]
  mngr.close()
  # retention holds across a resume (a new manager on the same folder)
  mngr = checkpoint.manager(str(tmp_path))
  save_epochs(mngr, [7], best=lambda e: 7)
  assert sorted(mngr.all_steps()) == [5, 6, 7]
  save_epochs(mngr, [8, 9], best=lambda e: 7, keep_last=1)
  assert sorted(mngr.all_steps()) == [7, 9]
  mngr.close()


def test_restores_the_latest_and_none_when_empty(tmp_path):
  mngr = checkpoint.manager(str(tmp_path))
  assert checkpoint.restore_latest(mngr, state_of(0)) is None
  save_epochs(mngr, range(3), best=lambda e: e)
  state, loop = checkpoint.restore_latest(mngr, state_of(0), log=pytest.fail)
  np.testing.assert_array_equal(state["w"], [2.0, 2.0, 2.0])
  assert int(state["step"]) == 2 and [r["epoch"] for r in loop["history"]] == [0, 1, 2]
  mngr.close()


def damage(tmp_path, step, item):
  folder = os.path.join(str(tmp_path), "checkpoints", str(step), item)
  shutil.rmtree(folder)


@pytest.mark.parametrize("item", ["state", "loop"])
def test_an_unreadable_latest_is_skipped_and_removed(tmp_path, item):
  mngr = checkpoint.manager(str(tmp_path))
  save_epochs(mngr, range(3), best=lambda e: e)
  damage(tmp_path, 2, item)
  logged = []
  state, loop = checkpoint.restore_latest(mngr, state_of(0), log=logged.append)
  assert int(state["step"]) == 1 and loop["history"][-1]["epoch"] == 1
  assert len(logged) == 1 and "checkpoint 2" in logged[0] and "resuming from checkpoint 1" in \
      logged[0]
  assert sorted(mngr.all_steps()) == [0, 1]  # the damaged one is gone: the run replaces it
  mngr.close()


def test_a_latest_whose_loop_json_was_edited_is_skipped(tmp_path):
  """The loop JSON (history, config, data identity: what a resumed run reports from) is
  covered by a checksum as the arrays are: an edited one is skipped for the one before."""
  import json as json_lib
  mngr = checkpoint.manager(str(tmp_path))
  save_epochs(mngr, range(3), best=lambda e: e)
  folder = os.path.join(str(tmp_path), "checkpoints", "2", "loop")
  name = "metadata"  # orbax's JsonSave file
  with open(os.path.join(folder, name)) as f:
    loop = json_lib.load(f)
  loop["history"][-1]["acc"] = 0.99  # a tampered number
  with open(os.path.join(folder, name), "w") as f:
    json_lib.dump(loop, f)
  logged = []
  state, loop = checkpoint.restore_latest(mngr, state_of(0), log=logged.append)
  assert int(state["step"]) == 1 and "loop JSON does not match its checksum" in logged[0]
  assert checkpoint.latest_loop(mngr)["history"][-1]["epoch"] == 1
  mngr.close()


def test_none_readable_is_an_error(tmp_path):
  mngr = checkpoint.manager(str(tmp_path))
  save_epochs(mngr, range(2), best=lambda e: e)
  damage(tmp_path, 0, "loop")
  damage(tmp_path, 1, "loop")
  with pytest.raises(checkpoint.CheckpointError, match="checkpoint 1 .*checkpoint 0"):
    checkpoint.restore_latest(mngr, state_of(0))
  mngr.close()


def test_check_sees_the_loop_before_the_state_is_read(tmp_path):
  mngr = checkpoint.manager(str(tmp_path))
  save_epochs(mngr, range(2), best=lambda e: e)
  damage(tmp_path, 1, "state")  # never read: the check refuses first
  seen = []

  def refuse(loop):
    seen.append(loop["history"][-1]["epoch"])
    raise ValueError("refused")

  with pytest.raises(ValueError, match="refused"):
    checkpoint.restore_latest(mngr, state_of(0), check=refuse)
  assert seen == [1]
  mngr.close()


def test_trainer_restore_checks_the_config(tmp_path):
  cfg = make_config(workdir=str(tmp_path), epochs=4, learning_rate=0.1)
  mngr = checkpoint.manager(str(tmp_path))
  save_epochs(mngr, range(3), best=lambda e: e, config=cfg.to_dict())
  assert members_lib.restore(cfg, mngr, state_of(0)) is None  # no --resume: a fresh run
  state, loop = members_lib.restore(make_config(workdir=str(tmp_path), epochs=4, learning_rate=0.1,
                                            resume=True), mngr, state_of(0))
  assert int(state["step"]) == 2
  # --epochs may grow, not shrink below what is done
  assert members_lib.restore(make_config(workdir=str(tmp_path), epochs=9, learning_rate=0.1,
                                     resume=True), mngr, state_of(0)) is not None
  members_lib.restore(make_config(workdir=str(tmp_path), epochs=3, learning_rate=0.1, resume=True),
                  mngr, state_of(0))
  with pytest.raises(RunError, match="--epochs >= 3"):
    members_lib.restore(make_config(workdir=str(tmp_path), epochs=2, learning_rate=0.1,
                                resume=True), mngr, state_of(0))
  with pytest.raises(RunError, match="--learning_rate=0.1 -> 0.2"):  # saved -> asked
    members_lib.restore(make_config(workdir=str(tmp_path), epochs=4, learning_rate=0.2,
                                resume=True), mngr, state_of(0))
  for step in (0, 1, 2):
    damage(tmp_path, step, "loop")
  with pytest.raises(RunError, match="--overwrite"):
    members_lib.restore(make_config(workdir=str(tmp_path), epochs=4, learning_rate=0.1,
                                resume=True), mngr, state_of(0))
  mngr.close()


def test_trainer_restore_of_an_empty_workdir_starts_afresh(tmp_path, capsys):
  mngr = checkpoint.manager(str(tmp_path))
  assert members_lib.restore(make_config(workdir=str(tmp_path), resume=True), mngr,
                         state_of(0)) is None
  assert "no checkpoint yet" in capsys.readouterr().out
  mngr.close()
