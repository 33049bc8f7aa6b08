"""G-Blending against numbers from a transcription of BalanceBenchmark's trainer (tests/golden/
make_gblending.py, GeWu-Lab/BalanceBenchmark @ 4c1482f, GBlending_trainer.py; the authors'
code has fixed weights only).

Head order: the golden lists the modalities then "output"; ours is ("fused", *modalities).

- ``blend_weights`` on every `weights` case, from the case's pre/now terms.
- The whole recompute (`GBlending.recompute`) on every `weights` case: a fake loop serves the
  golden's per-batch losses (a trial's training steps, then its held-out batches), and the
  weights must be the golden's: the losses are sums of batch losses, "pre" after the trial's
  first epoch and "now" after its last (the super-epoch), the heads in the official order.
- Degenerate cases the official code crashes on (ZeroDivisionError): ours stays finite.
- The blended loss ``sum_k w_k CE_k`` through `GBlending.objective`, the unimodal logits being
  the shared head's slices (+ b / M) as the golden's, from `models.ConcatHead` itself.
- A trial's inputs: the other modalities zeroed (after the preprocessing), every parameter
  trained on the fused output.
- The schedule: `GBlending.on_start` / `on_epoch_end` on a fake loop.
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
from inforeg_jax.models import ConcatHead
from inforeg_jax.train import TrainState

GOLDEN = json.load(open(os.path.join(os.path.dirname(__file__), "golden", "gblending.json")))
CASES = {c["name"]: c for c in GOLDEN["cases"]}


def kind(k):
  return [n for n, c in CASES.items() if c["kind"] == k]


def ours_order(modalitys):
  """Golden head names in our order: the fused head ("output") first."""
  return ["output"] + list(modalitys)


def make_method(modalities, super_epoch=10, epochs=30, batch_size=4, scale="official"):
  cfg = types.SimpleNamespace(options=GBlendingOptions(super_epoch=super_epoch,
                                                       weight_scale=scale),
                              epochs=epochs, batch_size=batch_size)
  return GBlending(cfg, Setup(modalities=tuple(modalities), num_classes=4, steps_per_epoch=5,
                              window="whole"))


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
  f = {m: jnp.asarray(i["features"][m], jnp.float32) for m in mods}
  w_fc, b_fc = np.asarray(i["fc_weight"]), np.asarray(i["fc_bias"])
  # our concat head gives the golden's logits: the shared head's slices (+ b / M) and the fused
  head = {"params": {"kernel": jnp.asarray(w_fc.T, jnp.float32),
                     "bias": jnp.asarray(b_fc, jnp.float32)}}
  fused, uni = ConcatHead(len(b_fc)).apply(head, f)
  for m in mods:
    np.testing.assert_allclose(uni[m], e["logits"][m], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(fused, e["logits"]["output"], rtol=1e-5, atol=1e-6)
  method = make_method(mods)

  def fwd(params, inputs, train=True, batch_stats=None):  # the head over the inputs (features)
    out, uni = ConcatHead(len(b_fc)).apply(params, inputs)
    return {"logits": out, "unimodal_logits": uni}, {}

  weights = jnp.asarray([i["weights"][h] for h in ours_order(mods)], jnp.float32)
  ctx = StepContext(step=jnp.zeros([], jnp.int32), epoch=jnp.zeros([], jnp.int32),
                    active=jnp.asarray(True))
  state = {"weights": weights, "keep": jnp.ones([len(mods)])}
  obj = jax.jit(lambda p: method.objective(
      fwd, p, state, {"inputs": f, "label": jnp.asarray(i["label"])}, ctx))(head)
  np.testing.assert_allclose(obj.terms.sum(), e["loss"], rtol=1e-5)
  np.testing.assert_allclose(obj.fused_loss, e["per_head_ce"]["output"], rtol=1e-5)
  for m in mods:
    np.testing.assert_allclose(obj.unimodal_losses[m], e["per_head_ce"][m], rtol=1e-5)
  for k, h in enumerate(method.heads):
    np.testing.assert_allclose(obj.metrics[f"weight_{h}"], weights[k])


def test_a_trial_zeroes_the_other_modalities_inputs():
  mods = ("audio", "visual")
  method = make_method(mods)
  seen = []

  def fwd(params, inputs, train=True, batch_stats=None):
    seen.append({m: np.asarray(x) for m, x in inputs.items()})
    z = jnp.zeros([2, 4]) + params
    return {"logits": z, "unimodal_logits": {m: z for m in mods}}, {}

  batch = {"inputs": {"audio": jnp.ones([2, 3]), "visual": jnp.full([2, 5], 2.0)},
           "label": jnp.array([0, 1])}
  ctx = StepContext(step=jnp.zeros([], jnp.int32), epoch=jnp.zeros([], jnp.int32),
                    active=jnp.asarray(True))
  method.objective(fwd, jnp.float32(0), {"weights": jnp.array([1.0, 0, 0]),
                                         "keep": jnp.array([0.0, 1.0])}, batch, ctx)
  assert not seen[-1]["audio"].any() and (seen[-1]["visual"] == 2.0).all()
  method.objective(fwd, jnp.float32(0), {"weights": jnp.array([1.0, 0, 0]),
                                         "keep": jnp.array([1.0, 1.0])}, batch, ctx)
  assert (seen[-1]["audio"] == 1.0).all()


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
  assert e["trial_epochs_per_head"] == i["super_epoch"]  # ours: the trial is the super-epoch


def test_no_recompute_after_the_last_epoch():
  assert max(recompute_epochs(30, 10)) < 30


def test_defaults_are_the_online_reference():
  """BalanceBenchmark's default super_epoch 10. (Its `offline` method, one recompute at epoch
  0 with max_epochs-long trials, is --gblending.super_epoch=<epochs>.)"""
  assert GBlendingOptions().super_epoch == CASES["schedule_online_max30_se10"]["inputs"][
      "super_epoch"]
  assert GBlendingOptions().weight_scale == "official"


class GoldenLoop:
  """`loop.Loop` as `GBlending.recompute` uses it, for a population of one member: a trial
  epoch's training steps report the golden's batch losses of that head and epoch, and its
  held-out evaluation their sum (as the mean loss over ``batches`` equal batches)."""

  def __init__(self, per_head, modalitys, batch_size=4):
    self.per_head, self.modalitys = per_head, list(modalitys)
    nb = max(len(v) for h in per_head.values() for v in h["val_batch_losses"])
    self.batches = nb
    self.dataset = types.SimpleNamespace(val={"label": np.zeros(nb * batch_size + 3)})
    self.members = 1
    self.epochs, self.head = {}, None

  def place(self, tree):
    return tree

  def step_records(self, records):
    return records

  def init_opt_state(self, params):
    return {"fresh": 0}

  def head_of(self, state):
    keep = np.asarray(state.method_state["keep"])[0]
    assert np.asarray(state.method_state["weights"])[0].tolist() == [1.0] + [0.0] * len(keep)
    return "output" if keep.all() else self.modalitys[int(np.argmax(keep))]

  def train_epoch(self, state, key):
    assert state.opt_state == {"fresh": 0}  # each trial starts a fresh optimizer
    head = self.head_of(state)
    e = self.epochs[head] = self.epochs.get(head, -1) + 1
    losses = self.per_head[head]["train_batch_losses"][e]
    return state, [{"fused_loss": jnp.asarray([x], jnp.float32)} for x in losses]

  def evaluate(self, state, arrays, zeroed=(), limit=None):
    head = self.head_of(state)
    assert set(zeroed) == ({m for m in self.modalitys if m != head} if head != "output"
                           else set())  # the other inputs zeroed, as in its training
    assert limit == self.batches * 4  # the loader drops the last, partial batch
    e = self.epochs[head]
    v = self.per_head[head]["val_batch_losses"][e]
    return {"loss": np.asarray([sum(v) / self.batches])}


@pytest.mark.parametrize("name", [n for n in kind("weights")
                                  if CASES[n]["inputs"]["super_epoch"] > 1])
def test_recompute_reproduces_the_official_weights(name):
  c = CASES[name]
  i, e = c["inputs"], c["expected"]
  mods = list(i["modalitys"])
  method = make_method(mods, super_epoch=i["super_epoch"])
  loop = GoldenLoop(i["per_head"], mods)
  state = TrainState(step=jnp.zeros([1], jnp.int32), params={"w": jnp.zeros([1])},
                     batch_stats={}, opt_state={"main": 1},
                     method_state=jax.tree.map(lambda x: x[None],
                                               method.init_state(None, None)))
  new = method.recompute(loop, state, 0)
  assert loop.epochs == {h: i["super_epoch"] - 1 for h in ours_order(mods)}
  assert new.opt_state == {"main": 1}  # the main state is untouched by the trials
  want = [e["weights"][h] for h in ours_order(mods)]
  np.testing.assert_allclose(np.asarray(new.method_state["weights"])[0], want, rtol=2e-5)
  # --gblending.weight_scale=heads: the same weights, summing to the number of heads
  heads = make_method(mods, super_epoch=i["super_epoch"], scale="heads")
  scaled = heads.recompute(GoldenLoop(i["per_head"], mods), state, 0)
  np.testing.assert_allclose(np.asarray(scaled.method_state["weights"])[0],
                             np.asarray(want) * len(want), rtol=2e-5)
