"""PMR against numbers from a transcription of its official code (tests/golden/make_pmr.py,
fanyunfeng-bit/Modal-Imbalance-PMR @ 3615e48, main_Prototype_grad.py).

Covered: the prototype logits ``-||f - P||``, the prototypical CE, the batch score sums, the
hard switch (the weaker modality gets alpha * PCE; none on a tie), the whole objective and its
gradient w.r.t. the features and the fused logits, all through `PMR.objective` with the step's
epoch (the window ``start <= epoch <= end``, inclusive at both ends, and the golden's 130-epoch
schedules); the prototype passes through `PMR.on_start` / `PMR.on_epoch_end` on a fake loop
(how many batches, EMA only for the sets computed after epoch 1 on).

Named difference asserted instead of the golden's NaN: a class absent from the prototype
batches keeps its previous prototype (zeros before the first).
Not reproduced by the method: for AVE the official pass reads the whole validation loader
(main_Prototype_grad.py:426-427); `PMR` always reads the first max(1, n // 10) training
batches, so the AVE case checks the pure ``class_means`` / ``next_prototypes`` only.
"""

import functools
import json
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inforeg_jax.methods.base import Setup, StepContext
from inforeg_jax.methods.options import PMROptions
from inforeg_jax.methods.pmr import PMR, class_means, next_prototypes, prototype_logits, pmr_terms
from inforeg_jax.train import TrainState
from tests.golden.compare import arr, close

GOLDEN = json.load(open(os.path.join(os.path.dirname(__file__), "golden", "pmr.json")))
CASES = {c["name"]: c for c in GOLDEN["cases"]}
MODS = ("audio", "visual")




@functools.lru_cache(maxsize=None)
def pmr_method(alpha=1.0, start=0, end=100, momentum=0.0, steps_per_epoch=10,
               num_classes=6):
  cfg = types.SimpleNamespace(options=PMROptions(alpha=alpha, momentum=momentum,
                                                 start_epoch=start, end_epoch=end))
  return PMR(cfg, Setup(modalities=MODS, num_classes=num_classes,
                        steps_per_epoch=steps_per_epoch, window="whole"))


def fake_forward(params, inputs, train=True, batch_stats=None):
  """The model's outputs are the golden's features and fused logits themselves, so that the
  objective's gradient w.r.t. ``params`` is its gradient w.r.t. them."""
  del inputs, train
  out = {"logits": params["out"], "features": {"audio": params["a"], "visual": params["v"]},
         "unimodal_logits": {m: params["out"] for m in MODS}}
  return out, batch_stats if batch_stats is not None else {}


def objective(params, protos, labels, epoch, alpha, start, end):
  """(loss, metrics) of `PMR.objective` at ``epoch``; the options (alpha and the window) are
  traced, so that every case shares one compilation."""
  options = types.SimpleNamespace(alpha=alpha, start_epoch=start, end_epoch=end)
  method = PMR(types.SimpleNamespace(options=options),
               Setup(modalities=MODS, num_classes=6, steps_per_epoch=10, window="whole"))
  ctx = StepContext(step=epoch * 10, epoch=epoch, active=jnp.asarray(True),
                    hyper=types.SimpleNamespace(method=options))
  obj = method.objective(fake_forward, params, {"prototypes": protos},
                         {"inputs": {}, "label": labels}, ctx)
  return jnp.sum(obj.terms), obj.metrics


objective_and_grads = jax.jit(jax.value_and_grad(objective, has_aux=True))


LOSS_CASES = [n for n, c in CASES.items() if "a" in c["inputs"]]


def loss_inputs(i):
  params = {"a": arr(i["a"]), "v": arr(i["v"]), "out": arr(i["out"])}
  protos = {"audio": arr(i["audio_proto"]), "visual": arr(i["visual_proto"])}
  return params, protos, jnp.asarray(i["label"], jnp.int32)


@functools.partial(jax.jit, static_argnums=3)
def terms_of(feats, protos, labels, alpha):
  logits = {m: prototype_logits(feats[m], protos[m]) for m in MODS}
  probs = {m: jax.nn.softmax(logits[m]) for m in MODS}
  return logits, probs, pmr_terms(feats, protos, labels, alpha, MODS)


@pytest.mark.parametrize("name", LOSS_CASES)
def test_pmr_terms(name):
  """Logits, probabilities, score sums, PCE and the switch's weights (before the window)."""
  c = CASES[name]
  i, e = c["inputs"], c["expected"]
  params, protos, y = loss_inputs(i)
  feats = {"audio": params["a"], "visual": params["v"]}
  logits, probs, (pce, weights, scores) = terms_of(feats, protos, y, i["alpha"])
  for m in MODS:
    close(logits[m], e[f"{m}_sim"])
    close(probs[m], e[f"{m}_proto_prob"])
  close(scores, [e["score_a_p"], e["score_v_p"]])
  close(pce, [e["loss_proto_a"], e["loss_proto_v"]])
  ratio = e["ratio_a_p"]
  # official (169-177): ratio > 1 -> visual gets alpha; < 1 -> audio; == 1 -> neither
  expected = [i["alpha"] * (ratio < 1), i["alpha"] * (ratio > 1)]
  np.testing.assert_array_equal(np.asarray(weights), expected)
  if name == "ratio_exactly_one_no_term":
    assert float(scores[0]) == float(scores[1])


@pytest.mark.parametrize("name", LOSS_CASES)
def test_objective_loss_and_gradients(name):
  """`PMR.objective` at the case's epoch: the loss CE + beta PCE_a + lam PCE_v, its weights
  (window included) and its gradients w.r.t. the features and the fused logits."""
  c = CASES[name]
  i, e = c["inputs"], c["expected"]
  params, protos, y = loss_inputs(i)
  (loss, metrics), grads = objective_and_grads(
      params, protos, y, jnp.asarray(i["epoch"], jnp.int32), i["alpha"],
      jnp.asarray(i["modulation_starts"], jnp.int32), jnp.asarray(i["modulation_ends"],
                                                                  jnp.int32))
  close(loss, e["loss"])
  np.testing.assert_array_equal([float(metrics["coef_audio"]), float(metrics["coef_visual"])],
                                [e["beta_audio_coef"], e["lam_visual_coef"]])
  close([metrics["pce_audio"], metrics["pce_visual"]], [e["loss_proto_a"], e["loss_proto_v"]])
  assert e["modulated"] == (i["modulation_starts"] <= i["epoch"] <= i["modulation_ends"])
  close(grads["a"], e["grad_a"])
  close(grads["v"], e["grad_v"])
  close(grads["out"], e["grad_out"])
  if e["added_loss"] == 0.0:  # no term: the features get no gradient at all
    assert not np.any(np.asarray(grads["a"])) and not np.any(np.asarray(grads["v"]))


@jax.jit
def schedule_coefs(params, protos, labels, epochs, start, end):
  return jax.vmap(lambda ep: objective(params, protos, labels, ep, 5.0, start, end)[1][
      "coef_visual"])(epochs)


@pytest.mark.parametrize("setting", range(2))
def test_epoch_schedule(setting):
  """The window over the golden's 130-epoch runs: modulated iff start <= epoch <= end."""
  s = CASES["epoch_schedule"]["expected"]["settings"][setting]
  c = CASES["audio_stronger_visual_gets_pce"]
  params, protos, y = loss_inputs(c["inputs"])
  coefs = schedule_coefs(params, protos, y, jnp.arange(s["epochs"], dtype=jnp.int32),
                         jnp.asarray(s["modulation_starts"], jnp.int32),
                         jnp.asarray(s["modulation_ends"], jnp.int32))
  np.testing.assert_array_equal(np.asarray(coefs) > 0, s["modulated"])


# ------------------------------------------------------------------ the prototype passes


class FakeLoop:
  """What `PMR.prototypes` uses of `loop.Loop`, for a population of one member: it serves
  the batches the official loop read and records what the method asked for."""

  def __init__(self, batches, momentum=0.0):
    self.batches, self.requests = batches, []
    self.hyper = types.SimpleNamespace(
        method=types.SimpleNamespace(momentum=np.asarray([momentum], np.float32)))

  def map_members(self, fn, *trees):
    return jax.vmap(fn)(*trees)

  def predict_batches(self, state, epoch, num_batches, augment=False):
    self.requests.append((epoch, num_batches, augment))
    for b in self.batches[:num_batches]:
      yield ({"features": {"audio": arr(b["a"])[None], "visual": arr(b["v"])[None]}},
             jnp.asarray(b["label"], jnp.int32)[None])

  def place(self, tree):
    return tree


def fresh_state(method, dim):
  feats = {m: jnp.zeros([1, dim]) for m in MODS}
  protos = method.init_state({}, {"features": feats})["prototypes"]
  return TrainState(step=jnp.zeros([], jnp.int32), params={}, batch_stats={}, opt_state=(),
                    method_state={"prototypes": {m: p[None] for m, p in protos.items()}})


def prototypes(state):
  """The one member's prototypes."""
  return {m: p[0] for m, p in state.method_state["prototypes"].items()}


def run_call(method, state, call, first):
  """The official calculate_prototype call: before training (the first, epoch arg 0) ->
  `on_start`; after epoch e -> `on_epoch_end(e)`."""
  loop = FakeLoop(call["batches"], method.options.momentum)
  if first:
    assert call["epoch_arg"] == 0
    state = method.on_start(loop, state)
  else:
    state, _ = method.on_epoch_end(loop, state, call["epoch_arg"])
  return state, loop


PROTO_CASES = [n for n, c in CASES.items() if "calls" in c["inputs"]]


@pytest.mark.parametrize("name", [n for n in PROTO_CASES if CASES[n]["inputs"]["dataset"]
                                  != "AVE"])
def test_prototype_passes_through_the_method(name):
  """Per call: the number of batches (max(1, n // 10)), the class counts, the EMA (only from
  the set computed after epoch 1) and the prototypes."""
  c = CASES[name]
  i = c["inputs"]
  dim = i["embed_dim"]
  state = None
  for k, (call, e) in enumerate(zip(i["calls"], c["expected"]["calls"])):
    method = pmr_method(momentum=i["momentum_coef"], num_classes=i["n_classes"],
                        steps_per_epoch=call["num_batches_in_loader"])
    if state is None:
      state = fresh_state(method, dim)
    previous = prototypes(state)
    state, loop = run_call(method, state, call, first=k == 0)
    (_, used, augment), = loop.requests
    assert used == e["batches_used"] == max(1, call["num_batches_in_loader"] // 10)
    assert augment  # the official pass reads the training loader, augmentation included
    assert e["ema_applied"] == (call["epoch_arg"] > 0)
    counts = sum(class_means(arr(b["a"]), jnp.asarray(b["label"]), i["n_classes"])[1]
                 for b in call["batches"][:used])
    np.testing.assert_array_equal(counts, e["count_class"])
    protos = prototypes(state)
    absent = np.asarray(e["count_class"]) == 0
    assert sorted(np.flatnonzero(absent)) == e["nan_rows"]
    for m, key in (("audio", "audio_proto"), ("visual", "visual_proto")):
      got = np.asarray(protos[m])
      assert np.all(np.isfinite(got))
      want = np.array([[np.nan if v is None else v for v in row] for row in e[key]])
      close(got[~absent], want[~absent])
      # ours, named: an absent class keeps its previous prototype (the official gets NaN)
      assert np.all(np.isnan(want[absent]))
      np.testing.assert_array_equal(got[absent], np.asarray(previous[m])[absent])


def test_absent_class_keeps_its_previous_prototype_with_and_without_ema():
  """The named difference at a later pass: with EMA (after epoch >= 1) and without (after
  epoch 0) the absent class's row is exactly the previous one; the others follow the rule."""
  c = CASES["prototypes_absent_class_gives_nan"]
  call = c["inputs"]["calls"][0]
  method = pmr_method(momentum=0.2, num_classes=6, steps_per_epoch=20)
  rng = np.random.default_rng(0)
  prev = {m: jnp.asarray(rng.normal(size=(6, 8)), jnp.float32) for m in MODS}
  state = fresh_state(method, 8)
  state = state.replace(method_state={"prototypes": {m: p[None] for m, p in prev.items()}})
  used = call["batches"][:2]
  for epoch, ema in ((0, False), (1, True)):
    new, _ = method.on_epoch_end(FakeLoop(call["batches"], 0.2), state, epoch)
    for m, key in (("audio", "a"), ("visual", "v")):
      sums = sum(np.asarray(b[key]).T @ np.eye(6)[b["label"]] for b in used).T
      counts = sum(np.eye(6)[b["label"]].sum(0) for b in used)
      mean = sums[:5] / counts[:5, None]
      want = 0.8 * mean + 0.2 * np.asarray(prev[m])[:5] if ema else mean
      got = np.asarray(prototypes(new)[m])
      close(got[:5], want)
      # (1 - m) P + m P: the previous row up to float32 rounding
      np.testing.assert_allclose(got[5], np.asarray(prev[m])[5], rtol=1e-6)


def test_ave_whole_loader_with_the_pure_functions():
  """AVE: the official pass reads its whole (validation) loader; the pure functions over
  those batches give the golden's prototypes."""
  c = CASES["prototypes_ave_whole_loader"]
  call, e = c["inputs"]["calls"][0], c["expected"]["calls"][0]
  assert e["batches_used"] == len(call["batches"])
  for m, key in (("a", "audio_proto"), ("v", "visual_proto")):
    sums, counts = 0.0, 0.0
    for b in call["batches"]:
      s, n = class_means(arr(b[m]), jnp.asarray(b["label"]), 6)
      sums, counts = sums + s, counts + n
    np.testing.assert_array_equal(counts, e["count_class"])
    close(next_prototypes(jnp.zeros([6, 8]), sums, counts, 0.2, ema=False), e[key])


def test_ema_after_each_epoch_over_the_schedule():
  """`on_epoch_end(e)` EMAs iff e > 0 (the golden's ema_after_epoch: the set computed after
  epoch 0 is a fresh mean, every later one an EMA); checked at the edges of the schedule."""
  s = CASES["epoch_schedule"]["expected"]["settings"][0]
  assert s["ema_after_epoch"] == [e > 0 for e in range(s["epochs"])]
  method = pmr_method(momentum=0.5, num_classes=2, steps_per_epoch=10)
  batch = {"a": [[1.0, 0.0], [3.0, 0.0]], "v": [[0.0, 1.0], [0.0, 3.0]], "label": [0, 1]}
  state = fresh_state(method, 2).replace(
      method_state={"prototypes": {m: jnp.full([1, 2, 2], 10.0) for m in MODS}})
  for epoch in (0, 1, 2, s["epochs"] - 1):
    new, _ = method.on_epoch_end(FakeLoop([batch], 0.5), state, epoch)
    # fresh mean: audio [[1, 0], [3, 0]]; EMA 0.5 with 10: [[5.5, 5], [6.5, 5]]
    want = [[5.5, 5.0], [6.5, 5.0]] if s["ema_after_epoch"][epoch] else [[1.0, 0.0], [3.0, 0.0]]
    np.testing.assert_allclose(prototypes(new)["audio"], want, rtol=1e-6)
