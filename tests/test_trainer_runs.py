"""Tiny training runs in process: the loop's rows, an exact resume, non-finite steps (slower
than test_trainer's unit tests, so not run per mutant by tests/mutate.py)."""

import json
import os

import numpy as np
import pytest

from inforeg_jax import trainer
from inforeg_jax.config import make_config
from inforeg_jax.data import Dataset
from inforeg_jax.data.synthetic import SyntheticSpec, make_synthetic


SPEC = SyntheticSpec(num_train=64, num_test=40, num_val=24, audio_shape=(8, 8), image_size=8,
                     frames=1, template_size=3)


def tiny_dataset():
  s = make_synthetic(SPEC)
  return Dataset("synthetic", s["train"], s["test"], SPEC.num_classes,
                 {"audio": "spectrogram", "visual": "frames"}, val=s["val"])


def tiny(workdir, **kw):
  values = dict(workdir=str(workdir), width=2, batch_size=16, eval_batch_size=32, epochs=3,
                lr_step_epochs=2, method="inforeg", window="whole", encoder="small_cnn")
  values.update(kw)
  return make_config(**values)


def rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_tiny_run_rows_and_a_resume_that_matches_a_straight_run(tmp_path):
  straight = trainer.train(tiny(tmp_path / "a", **{"inforeg.warmup_epochs": 1}),
                           tiny_dataset(), progress=False)
  history = rows(tmp_path / "a")
  assert [r["epoch"] for r in history] == [0, 1, 2]
  for r in history:  # every epoch: both splits evaluated, traces and coefficients recorded
    assert {"val_acc", "acc", "acc_audio", "acc_visual", "trace_audio", "trace_visual",
            "alpha_audio", "train_acc_visual", "test_loss_audio"} <= set(r)
  assert history[0]["alpha_audio"] == history[0]["alpha_visual"] == 0  # warm-up epoch
  assert straight["final"]["acc"] == history[-1]["acc"]
  # two epochs, then a resume to three: the same numbers as the straight run
  trainer.train(tiny(tmp_path / "b", epochs=2, **{"inforeg.warmup_epochs": 1}), tiny_dataset(),
                progress=False)
  resumed = trainer.train(tiny(tmp_path / "b", resume=True, **{"inforeg.warmup_epochs": 1}),
                          tiny_dataset(), progress=False)
  again = rows(tmp_path / "b")
  assert [r["epoch"] for r in again] == [0, 1, 2]
  for key in ("acc", "val_acc", "train_loss", "trace_audio", "alpha_visual"):
    assert [r[key] for r in again] == pytest.approx([r[key] for r in history], rel=1e-5), key
  assert resumed["final"] == pytest.approx(straight["final"], rel=1e-5)
  # a resume with another setting is refused before any data is loaded or step compiled
  def never(*args, **kwargs):
    raise AssertionError("reached after a refused --resume")
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(trainer, "load_dataset", never)
    mp.setattr(trainer, "build_program", never)
    with pytest.raises(trainer.RunError, match="learning_rate"):
      trainer.train(tiny(tmp_path / "b", resume=True, learning_rate=0.5,
                         **{"inforeg.warmup_epochs": 1}), progress=False)
  with pytest.raises(trainer.RunError, match="--epochs >= 3"):
    trainer.train(tiny(tmp_path / "b", resume=True, epochs=2, **{"inforeg.warmup_epochs": 1}),
                  tiny_dataset(), progress=False)


def test_nonfinite_loss_stops_the_run_at_its_step(tmp_path):
  ds = tiny_dataset()
  bad = dict(ds.train)
  bad["audio"] = ds.train["audio"].copy()
  bad["audio"][:] = np.nan
  ds = Dataset(ds.name, bad, ds.test, ds.num_classes, ds.kinds, val=ds.val)
  with pytest.raises(trainer.RunError, match=r"non-finite the loss at step 0 \(epoch 0\)"):
    trainer.train(tiny(tmp_path / "nan", method="joint"), ds, progress=False)
  summary = trainer.train(tiny(tmp_path / "skip", method="joint", epochs=1,
                               skip_nonfinite=True), ds, progress=False)
  assert summary["skipped_steps"] == 4  # 64 examples / 16: every step skipped, none applied
