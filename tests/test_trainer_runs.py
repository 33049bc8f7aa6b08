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
                lr_step_epochs=2, method="inforeg", window="whole", encoder="small_cnn",
                steps_per_call=1)
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
  # --skip_nonfinite: skipped and counted, but an epoch mostly skipped stops the run (here all
  # 4 steps: 64 examples / 16); nothing claims success at chance accuracy
  with pytest.raises(trainer.RunError, match="4 of epoch 0's 4 steps were non-finite"):
    trainer.train(tiny(tmp_path / "skip", method="joint", epochs=1, skip_nonfinite=True), ds,
                  progress=False)
  one = dict(ds.train)
  one["audio"] = tiny_dataset().train["audio"].copy()
  one["audio"][np.arange(64) % 64 == 5] = np.nan  # one example: one step in four
  few = Dataset(ds.name, one, ds.test, ds.num_classes, ds.kinds, val=ds.val)
  with pytest.raises(trainer.RunError, match="1 of epoch 0's 4 steps"):  # 25% > 10%
    trainer.train(tiny(tmp_path / "few", method="joint", epochs=1, skip_nonfinite=True), few,
                  progress=False)


def test_the_checkpoint_kept_as_best_is_the_best_validation_epoch(tmp_path, monkeypatch):
  """Retention keeps the last and the best epoch by *validation* accuracy. The validation
  labels here are shuffled, so that the best validation epoch is not the best test epoch."""
  from inforeg_jax import checkpoint
  ds = tiny_dataset()
  val = dict(ds.val)
  val["label"] = np.random.default_rng(3).permutation(val["label"])
  ds = Dataset(ds.name, ds.train, ds.test, ds.num_classes, ds.kinds, val=val)
  monkeypatch.setattr(checkpoint, "KEEP_LAST", 1)
  cfg = tiny(tmp_path / "r", method="joint", epochs=6, learning_rate=0.05)
  summary = trainer.train(cfg, ds, progress=False)
  history = rows(tmp_path / "r")
  best_val = max(history, key=lambda r: r["val_acc"])["epoch"]
  best_test = max(history, key=lambda r: r["acc"])["epoch"]
  assert best_val not in (best_test, 5)  # the data makes the two choices differ
  kept = sorted(int(d) for d in os.listdir(tmp_path / "r" / "checkpoints") if d.isdigit())
  assert kept == sorted({best_val, 5})
  assert summary["selected"]["epoch"] == best_val and summary["best"]["epoch"] == best_test


def test_a_signal_stops_a_methods_own_passes_at_the_next_call(tmp_path, monkeypatch):
  """SIGTERM during G-Blending's trials before epoch 0 (minutes of training on a real
  dataset) stops the run at the trial's next compiled call, not after the trials."""
  import signal

  from inforeg_jax.methods.gblending import GBlending
  calls = []
  trial = GBlending.trial

  def signalled_trial(self, loop, state, head, epoch):
    if not calls:
      os.kill(os.getpid(), signal.SIGTERM)  # arrives while the first trial trains
    train_epoch = loop.train_epoch
    loop.train_epoch = lambda *a, **k: (calls.append(1), train_epoch(*a, **k))[1]
    return trial(self, loop, state, head, epoch)

  monkeypatch.setattr(GBlending, "trial", signalled_trial)
  previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
  try:
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
      trainer.train(tiny(tmp_path / "g", method="gblending", **{"gblending.super_epoch": 3}),
                    tiny_dataset(), progress=False)
  finally:
    signal.signal(signal.SIGTERM, previous)
  assert len(calls) == 1  # the first trial epoch's first call, of 3 heads x 3 epochs


def test_a_signal_after_the_last_step_is_passed_on(tmp_path, monkeypatch):
  """SIGTERM while a finished run writes its summaries: the run completes (its files whole),
  and the signal then reaches whoever handled it before (a results worker stops taking runs;
  it was swallowed)."""
  import signal

  from inforeg_jax.members import Member
  write = Member.write_summary

  def signalled(self, *a, **k):
    os.kill(os.getpid(), signal.SIGTERM)
    return write(self, *a, **k)

  monkeypatch.setattr(Member, "write_summary", signalled)
  got = []
  previous = signal.signal(signal.SIGTERM, lambda *_: got.append("SIGTERM"))
  try:
    summary = trainer.train(tiny(tmp_path / "r", epochs=1), tiny_dataset(), progress=False)
  finally:
    signal.signal(signal.SIGTERM, previous)
  assert "final" in summary and os.path.exists(tmp_path / "r" / "summary.json")
  assert got == ["SIGTERM"]


def test_a_refused_population_leaves_no_folder_it_made(tmp_path):
  """A member refused (its folder holds a run) refuses the population before anything is
  written: the folders made for the others (and their new parent) are removed, the old run
  and the folders that were there are kept."""
  old = tmp_path / "pop" / "seed1"
  trainer.train(tiny(old, epochs=1), tiny_dataset())
  before = sorted(os.listdir(old))
  cfgs = [tiny(tmp_path / "pop" / "seed2", epochs=1), tiny(old, epochs=1, seed=1),
          tiny(tmp_path / "new" / "deep" / "seed3", epochs=1)]
  with pytest.raises(trainer.RunError, match="already holds a run"):
    trainer.train(cfgs, tiny_dataset())
  assert sorted(os.listdir(tmp_path)) == ["pop"]
  assert os.listdir(tmp_path / "pop") == ["seed1"] and sorted(os.listdir(old)) == before
