"""G-Blending against numbers from a transcription of BalanceBenchmark's trainer (tests/golden/
make_gblending.py, GeWu-Lab/BalanceBenchmark @ 4c1482f, GBlending_trainer.py; the authors'
code has fixed weights only).

Head order: the golden lists the modalities then "output"; ours is ("fused", *modalities).

- ``blend_weights`` on every `weights` case, from the case's pre/now terms. Ours measures mean
  losses, the official sums of batch losses (a named difference): the formula
  ``|DeltaG| / DeltaO^2``, normalised, must match on the given terms (which are checked against
  the batch losses first).
- Degenerate cases the official code crashes on (ZeroDivisionError): every DeltaG = 0 (all
  weights 0) and DeltaO = 0. Ours: equal weights when all raw weights are 0 (DeltaO = 0 with
  DeltaG = 0 included); DeltaO = 0 with DeltaG != 0 is finite, that head taking (nearly) all
  the weight (the limit of the formula), which the module docstring does not name.
- The blended loss ``sum_k w_k CE_k`` through `GBlending.objective`, given the golden's logits
  (ours come from separate linear heads, the golden's from slices of the shared fusion head: a
  named difference; the slice logits are checked against fc_weight/fc_bias first).
- The schedule: `GBlending.on_start` / `on_epoch_end` on a fake loop; the recompute itself
  (one trial per head, `trial_epochs` epochs each, the main state untouched) on a fake loop
  with scripted losses.
"""

import json
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inforeg_jax.methods.base import Setup, StepContext
from inforeg_jax.methods.gblending import GBlending, blend_weights
from inforeg_jax.methods.options import GBlendingOptions
from inforeg_jax.train import TrainState

GOLDEN = json.load(open(os.path.join(os.path.dirname(__file__), "golden", "gblending.json")))
CASES = {c["name"]: c for c in GOLDEN["cases"]}


def kind(k):
  return [n for n, c in CASES.items() if c["kind"] == k]


def ours_order(modalitys):
  """Golden head names in our order: the fused head ("output") first."""
  return ["output"] + list(modalitys)


def make_method(modalities, super_epoch=10, trial_epochs=10, epochs=30):
  cfg = types.SimpleNamespace(options=GBlendingOptions(super_epoch=super_epoch,
                                                       trial_epochs=trial_epochs),
                              epochs=epochs)
  return GBlending(cfg, Setup(modalities=tuple(modalities), num_classes=4, steps_per_epoch=5,
                              window="whole", threshold=0.04))


@pytest.mark.parametrize("name", kind("weights"))
def test_blend_weights(name):
  c = CASES[name]
  i, e = c["inputs"], c["expected"]
  se = i["super_epoch"]
  heads = ours_order(i["modalitys"])
  for h in heads:  # the official bookkeeping of the terms (GBT 330-366)
    t, losses = e["terms"][h], i["per_head"][h]
    np.testing.assert_allclose(t["pre_train_loss"], sum(losses["train_batch_losses"][0]))
    np.testing.assert_allclose(t["pre_validation_loss"], sum(losses["val_batch_losses"][0]))
    if se > 1:
      np.testing.assert_allclose(t["now_train_loss"], sum(losses["train_batch_losses"][se - 1]))
      np.testing.assert_allclose(t["now_validation_loss"],
                                 sum(losses["val_batch_losses"][se - 1]))
    else:  # the epoch == 0 branch wins: "now" stays 0
      assert t["now_train_loss"] == t["now_validation_loss"] == 0
    np.testing.assert_allclose(t["o"], t["o_now"] - t["o_pre"])
  term = lambda key: [e["terms"][h][key] for h in heads]
  w = blend_weights(term("pre_train_loss"), term("pre_validation_loss"),
                    term("now_train_loss"), term("now_validation_loss"))
  np.testing.assert_allclose(w, [e["weights"][h] for h in heads], rtol=1e-10, atol=1e-15)
  raw = np.array(term("raw_weight"))
  np.testing.assert_allclose(w, raw / raw.sum(), rtol=1e-10)
  if name == "visual_dG_exactly_zero":
    assert w[heads.index("visual")] == 0.0


def test_degenerate_terms_ours():
  """The official code divides by zero on these; ours stays finite."""
  # every DeltaG = 0 (held-out losses unchanged): equal weights
  np.testing.assert_allclose(blend_weights([3.0, 2.0, 1.0], [1.0, 1.0, 1.0],
                                           [2.0, 1.0, 0.5], [1.0, 1.0, 1.0]), [1 / 3] * 3)
  # every loss unchanged (DeltaG = DeltaO = 0): equal weights
  np.testing.assert_allclose(blend_weights([1.0, 2.0], [1.5, 2.5], [1.0, 2.0], [1.5, 2.5]),
                             [0.5, 0.5])
  # DeltaO = 0 with DeltaG != 0 on one head: finite, that head takes (nearly) all the weight
  w = blend_weights([2.0, 2.0, 2.0], [3.0, 3.0, 3.0], [1.0, 1.5, 1.8], [2.0, 2.2, 2.9])
  assert np.all(np.isfinite(w)) and abs(w.sum() - 1) < 1e-12
  assert w[0] > 1 - 1e-9  # head 0: DeltaO = (2 - 1) - (3 - 2) = 0


@pytest.mark.parametrize("name", kind("blended_loss"))
def test_blended_loss_through_the_objective(name):
  c = CASES[name]
  i, e = c["inputs"], c["expected"]
  mods = list(i["modalitys"])
  f = {m: np.asarray(i["features"][m]) for m in mods}
  w_fc, b_fc = np.asarray(i["fc_weight"]), np.asarray(i["fc_bias"])
  # the golden's logits are the shared head's slices (+ b / M) and the fused output
  col, n = 0, len(mods)
  for m in mods:
    d = f[m].shape[1]
    np.testing.assert_allclose(e["logits"][m], f[m] @ w_fc[:, col:col + d].T + b_fc / n,
                               rtol=1e-10)
    col += d
  np.testing.assert_allclose(e["logits"]["output"],
                             np.concatenate([f[m] for m in mods], 1) @ w_fc.T + b_fc,
                             rtol=1e-10)
  method = make_method(mods)
  logits = {h: jnp.asarray(e["logits"][h], jnp.float32) for h in ["output"] + mods}

  def fwd(params, inputs, train=True, batch_stats=None):
    return {"logits": params["output"], "unimodal_logits": {m: params[m] for m in mods}}, {}

  weights = jnp.asarray([i["weights"][h] for h in ours_order(mods)], jnp.float32)
  ctx = StepContext(step=jnp.zeros([], jnp.int32), epoch=jnp.zeros([], jnp.int32),
                    active=jnp.asarray(True))
  terms, aux = jax.jit(lambda p: method.objective(
      fwd, p, {"weights": weights}, {"inputs": {}, "label": jnp.asarray(i["label"])}, ctx))(
          logits)
  np.testing.assert_allclose(terms.sum(), e["loss"], rtol=1e-5)
  np.testing.assert_allclose(aux["fused"], e["per_head_ce"]["output"], rtol=1e-5)
  for m in mods:
    np.testing.assert_allclose(aux["uni"][m], e["per_head_ce"][m], rtol=1e-5)
  for k, h in enumerate(method.heads):
    np.testing.assert_allclose(aux["metrics"][f"weight_{h}"], weights[k])


# ------------------------------------------------------------------ schedule and recompute


def recompute_epochs(max_epochs, super_epoch):
  """The epochs before which `GBlending` recomputes, over a run of ``max_epochs``."""
  method = make_method(("audio", "visual"), super_epoch=super_epoch, epochs=max_epochs)
  seen = []
  method.recompute = lambda loop, state, epoch: seen.append(epoch) or state
  method.on_start(None, None)
  for epoch in range(max_epochs):
    method.on_epoch_end(None, None, epoch)
  return seen


@pytest.mark.parametrize("name", [n for n in kind("schedule")
                                  if CASES[n]["inputs"]["method"] == "online"])
def test_schedule(name):
  i, e = CASES[name]["inputs"], CASES[name]["expected"]
  seen = recompute_epochs(i["max_epochs"], i["super_epoch"])
  assert [s for s in seen if s < i["max_epochs"]] == e["recompute_at_epochs"]
  assert e["trial_epochs_per_head"] == i["super_epoch"]


def test_no_recompute_after_the_last_epoch():
  assert max(recompute_epochs(30, 10)) < 30


def test_defaults_are_the_online_reference():
  """BalanceBenchmark's defaults: super_epoch 10, trials as long as the super-epoch. (Its
  `offline` method, one recompute at epoch 0 with max_epochs-long trials, has no option here.)"""
  o = GBlendingOptions()
  i = CASES["schedule_online_max30_se10"]["inputs"]
  assert o.super_epoch == i["super_epoch"]
  assert o.trial_epochs == CASES["schedule_online_max30_se10"]["expected"][
      "trial_epochs_per_head"]


class FakeRecomputeLoop:
  """`trainer.Loop` as `GBlending.recompute` uses it. A training epoch adds 1 to the one
  parameter ``w``; head k's loss on split s after t trial epochs is ``base[s][k] -
  slope[s][k] t`` (the heads read off the one-hot trial weights)."""

  def __init__(self, base, slope, heads):
    self.base, self.slope, self.heads = base, slope, heads
    n = 6
    self.dataset = types.SimpleNamespace(
        train={"label": np.zeros(2 * n), "split": np.zeros(2 * n)},
        val={"label": np.zeros(n), "split": np.ones(n)})
    self.program = types.SimpleNamespace(tx=types.SimpleNamespace(init=lambda p: {"fresh": 0}))
    self.epochs_trained = {}

  def replicate(self, tree):
    return tree

  def train_epoch(self, state, epoch):
    k = int(np.argmax(state.method_state["weights"]))
    assert state.opt_state == {"fresh": 0}  # the trial optimizer starts fresh
    self.epochs_trained[k] = self.epochs_trained.get(k, 0) + 1
    return state.replace(params={"w": state.params["w"] + 1}), []

  def evaluate(self, state, arrays):
    split = "val" if arrays["split"][0] else "train"
    t = float(state.params["w"])
    loss = [self.base[split][k] - self.slope[split][k] * t for k in range(len(self.heads))]
    return {"loss": loss[0], **{f"loss_{h}": loss[k] for k, h in enumerate(self.heads) if k}}


def test_recompute_trains_one_trial_per_head():
  mods = ("audio", "visual")
  method = make_method(mods, super_epoch=10, trial_epochs=3)
  base = {"train": [2.0, 2.2, 2.4], "val": [2.5, 2.6, 2.9]}
  slope = {"train": [0.3, 0.1, 0.2], "val": [0.1, 0.05, -0.02]}
  loop = FakeRecomputeLoop(base, slope, method.heads)
  state = TrainState(step=jnp.zeros([], jnp.int32), params={"w": jnp.zeros([])},
                     batch_stats={}, opt_state={"main": 1},
                     method_state=method.init_state(None, None))
  np.testing.assert_allclose(state.method_state["weights"], [1 / 3] * 3)
  new = method.on_start(loop, state)
  assert loop.epochs_trained == {0: 3, 1: 3, 2: 3}
  assert float(new.params["w"]) == 0.0 and new.opt_state == {"main": 1}
  t = 3
  want = blend_weights(base["train"], base["val"],
                       [b - s * t for b, s in zip(base["train"], slope["train"])],
                       [b - s * t for b, s in zip(base["val"], slope["val"])])
  np.testing.assert_allclose(new.method_state["weights"], want, rtol=1e-6)
