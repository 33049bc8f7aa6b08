"""Greedy against numbers from a transcription of its official code (tests/golden/
make_greedy.py, nyukat/greedy_multimodal_learning @ a190e03: balanced_mmtm.py, callbacks.py,
framework.py; BalanceBenchmark @ 4c1482f as the cross-check; /work/notes/greedy.md).

Naming: our modality 0 / 1 are "audio" / "visual". The official streams are modality 0 =
``visual`` / ``net_view_0`` and modality 1 = ``skeleton`` / ``net_view_1``, so the official
``fc_visual`` is our ``fc_audio`` and ``fc_skeleton`` our ``fc_visual``; the official
``mmtm<j>`` (after layer j, 1-based) is our ``mmtm<j-1>`` (after 0-based stage j-1). Torch
Linear weights [out, in] become Flax kernels [in, out]; NCHW maps become NHWC.

Covered:
- the official MMTM over 5 calls threading its state (normal, normal, curation caring 0,
  curation caring 1, normal): outputs, the sigmoid scales, the running averages with the
  official quirk (both from modality 0's scale, ``official_running_average=True``), the count
  as `Greedy.after_step` carries it, and the gradients w.r.t. the inputs and every MMTM
  parameter (exactly zero for ``fc_<caring>`` in curation calls);
- BalanceBenchmark's MMTM (``official_running_average=False``: per-modality averages; frames
  folded into the batch, squeezed over time and space);
- the official BDR on named parameters: group membership, per-group ratios, cumulative M, BDR,
  d through `learning_speeds` / `bdr`;
- the official phase schedule (5 epochs x 7 steps) through `next_phase` with the golden's group
  norms and through `Greedy.after_step` with parameter trees (the 0-based epoch and the default
  ``start_epoch`` 1 <-> the official 1-based ``starting_epoch`` 2): the flags each forward sees,
  which steps accumulate, d, BDR, M, the phase starts;
- BalanceBenchmark's schedule (no warm-up, threshold 0.001) through the options;
- a tiny jitted Greedy train step: ``fc_<caring>`` of every MMTM gets exactly zero gradient in a
  curation step and nonzero gradient otherwise.

Not covered: ``official_mmtm_turnoff_cross_modal_flow`` (an eval-only analysis path of the
official MMTM that ours does not implement); ``balancebenchmark_learning_speed_named_params``
(BalanceBenchmark's concat fusion head, in no group; our model has the official per-branch
heads, in the main groups); ``bb_head_mmtm_raises_keyerror`` (BalanceBenchmark's committed code
fails). Named differences (greedy.py's docstring), so not compared: the eval-time flags and
running-average updates (the golden's ``eval_curation_mode``: ours evaluates with curation off).
"""

import functools
import json
import os
import types

import jax
import jax.numpy as jnp
import numpy as np

from inforeg_jax import config
from inforeg_jax.labels import modality_labels, resolve_labels
from inforeg_jax.methods.base import Objective, Setup, StepContext
from inforeg_jax.methods.greedy import (MMTM, Greedy, _excite, _squeeze, bdr, learning_speeds,
                                        next_phase)
from inforeg_jax.methods.options import GreedyOptions
from inforeg_jax.hyper import hyper_of
from inforeg_jax.train import Optimizer, build_method, make_create_state, make_train_step
from tests.golden.compare import arr, close

GOLDEN = json.load(open(os.path.join(os.path.dirname(__file__), "golden", "greedy.json")))
CASES = {c["name"]: c for c in GOLDEN["cases"]}
MODS = ("audio", "visual")
OFFICIAL_FC = {"fc_squeeze": "fc_squeeze", "fc_visual": "fc_audio", "fc_skeleton": "fc_visual"}
BB_FC = {"fc_squeeze": "fc_squeeze", "fc_excites.audio": "fc_audio",
         "fc_excites.visual": "fc_visual"}




def nhwc(x):
  return arr(np.transpose(np.asarray(x), (0, 2, 3, 1)))


def nchw(x):
  return np.transpose(np.asarray(x), (0, 3, 1, 2))


def linear(tree, torch_name, value):
  """Puts a torch Linear tensor (``<layer>.weight`` [out, in] / ``<layer>.bias``) into a Flax
  tree as ``kernel`` [in, out] / ``bias``."""
  layer, _, kind = torch_name.rpartition(".")
  v = np.asarray(value, np.float64)
  tree.setdefault(layer, {})["kernel" if kind == "weight" else "bias"] = arr(
      v.T if kind == "weight" else v)


def mmtm_params(weights, names):
  """The golden's MMTM weights (torch names) -> the Flax params of our `MMTM`."""
  tree = {}
  for n, v in weights.items():
    layer, _, kind = n.rpartition(".")
    linear(tree, f"{names[layer]}.{kind}", v)
  return tree


def from_flax(grads, names):
  """Our MMTM param tree -> {torch name: torch-layout array}."""
  out = {}
  for torch_layer, ours in names.items():
    out[f"{torch_layer}.weight"] = np.asarray(grads[ours]["kernel"]).T
    out[f"{torch_layer}.bias"] = np.asarray(grads[ours]["bias"])
  return out


# ------------------------------------------------------------------------------ the MMTM


@functools.partial(jax.jit, static_argnames=("dims", "ratio", "frames", "official"))
def mmtm_call(params, x0, x1, r0, r1, running, count, curation, caring, *, dims, ratio,
              frames=(1, 1), official=True):
  """One MMTM as GreedyNet runs it (squeeze, `MMTM`, excite): (outputs, replaced scales, raw
  scales, new running averages) and the gradients of ``sum(Y_0 R0) + sum(Y_1 R1)`` w.r.t. the
  params and the inputs."""
  mod = MMTM(MODS, dims, ratio)

  def run(p, a, b, cur):
    scales, new_running = mod.apply({"params": p}, [_squeeze(a, frames[0]),
                                                   _squeeze(b, frames[1])],
                                    running, count, cur, caring, official)
    return [_excite(a, scales[0], frames[0]), _excite(b, scales[1], frames[1])], scales, \
        new_running

  def loss(p, a, b):
    ys, scales, new_running = run(p, a, b, curation)
    return jnp.sum(ys[0] * r0) + jnp.sum(ys[1] * r1), (ys, scales, new_running)

  (_, (ys, scales, new_running)), grads = jax.value_and_grad(loss, argnums=(0, 1, 2),
                                                             has_aux=True)(params, x0, x1)
  _, raw, _ = run(params, x0, x1, jnp.asarray(False))  # the sigmoids before any replacement
  return ys, scales, raw, new_running, grads


def greedy_method(threshold=0.01, start_epoch=1, phase_steps=5, official_running_average=True,
                  steps_per_epoch=7):
  options = GreedyOptions(threshold=threshold, start_epoch=start_epoch, phase_steps=phase_steps,
                          official_running_average=official_running_average)
  cfg = types.SimpleNamespace(options=options, encoder="small_cnn", fusion="concat")
  return Greedy(cfg, Setup(modalities=MODS, num_classes=3, steps_per_epoch=steps_per_epoch,
                           window="whole"))


def greedy_tree(mmtm, fill):
  """A parameter (or gradient) tree shaped like GreedyNet's around one MMTM ("mmtm1"):
  encoders and heads filled with ``fill``."""
  return {"audio": {"w": jnp.full([3], fill)}, "visual": {"w": jnp.full([3], fill)},
          "mmtm1": mmtm, "head": {"fc_audio": {"kernel": jnp.full([2, 2], fill)},
                                  "fc_visual": {"kernel": jnp.full([2, 2], fill)}}}


def test_official_mmtm_sequence():
  c = CASES["official_mmtm_sequence"]
  i = c["inputs"]
  dims, ratio = tuple(i["dims"]), i["ratio"]
  assert i["dim_out"] == int(2 * sum(dims) / ratio)
  params = mmtm_params(i["weights"], OFFICIAL_FC)
  method = greedy_method()
  assert method.options.official_running_average  # the default: the official quirk
  # the method's state as `Greedy.init_state` makes it, one MMTM
  state = method.init_state(None, {"mmtm_running": (jnp.zeros([2, dims[0]]),)})
  close(state["running"][0], i["initial_running_avg"])
  after_step = jax.jit(method.after_step)
  assert float(state["count"]) == i["initial_step"]
  for k, (call, e) in enumerate(zip(i["calls"], c["expected"]["calls"])):
    cur, caring = call["curation_mode"], call["caring_modality"]
    ys, scales, raw, new_running, (g_params, g0, g1) = mmtm_call(
        params, nhwc(call["visual"]), nhwc(call["skeleton"]), nhwc(call["R0"]),
        nhwc(call["R1"]), state["running"][0], state["count"], jnp.asarray(cur),
        jnp.asarray(caring, jnp.int32), dims=dims, ratio=ratio)
    close(nchw(ys[0]), e["out_0"])
    close(nchw(ys[1]), e["out_1"])
    close(raw[0], e["scale_0"])
    close(raw[1], e["scale_1"])
    close(new_running[0], e["running_avg_0"])
    close(new_running[1], e["running_avg_1"])
    # the official quirk: modality 1's running average is modality 0's
    np.testing.assert_array_equal(new_running[1], new_running[0])
    for m in range(2):
      if cur and caring == m:  # replaced by the running average including this batch
        np.testing.assert_array_equal(scales[m], jnp.broadcast_to(new_running[m],
                                                                  scales[m].shape))
      else:
        np.testing.assert_array_equal(scales[m], raw[m])
    close(nchw(g0), e["grad_input_0"])
    close(nchw(g1), e["grad_input_1"])
    got = from_flax(g_params, OFFICIAL_FC)
    assert set(got) == set(e["grads"])
    for n, g in e["grads"].items():
      close(got[n], g)
    for m, torch_layer in enumerate(("fc_visual", "fc_skeleton")):
      ours = OFFICIAL_FC[torch_layer]
      zero = not any(np.any(np.asarray(x)) for x in jax.tree.leaves(g_params[ours]))
      assert zero == (cur and caring == m), (k, ours)
    assert np.any(np.asarray(g_params["fc_squeeze"]["kernel"]))
    # the state carried to the next call, as the train step carries it
    grads = greedy_tree(g_params, 1.0)
    obj = Objective(jnp.zeros(1), {"mmtm_running": (new_running,)}, {}, 0.0, {}, None,
                    carry=greedy_tree(params, 1.0))
    ctx = StepContext(step=jnp.asarray(k), epoch=jnp.asarray(0), active=jnp.asarray(True),
                      hyper=hyper_of(config.make_config(method="greedy")))
    state = after_step(state, obj, grads, ctx)
    assert float(state["count"]) == e["step_after"]
    np.testing.assert_array_equal(state["running"][0], new_running)


def test_balancebenchmark_mmtm_sequence_per_modality_running_averages():
  """``official_running_average=False``: each modality's running average from its own scale;
  visual frames folded into the batch (frame b*T + t), one scale per sample for its frames."""
  c = CASES["balancebenchmark_mmtm_sequence"]
  i = c["inputs"]
  dims, ratio, t = tuple(i["dims"]), i["ratio"], i["frames_per_sample"]
  params = mmtm_params(i["weights"], BB_FC)
  running, count = jnp.zeros([2, dims[0]]), 0.0
  for call, e in zip(i["calls"], c["expected"]["calls"]):
    a, v = nhwc(call["audio"]), nhwc(call["visual"])
    assert v.shape[0] == i["hard_coded_batch"] * t == a.shape[0] * t
    ys, scales, raw, running, _ = mmtm_call(
        params, a, v, jnp.zeros_like(a), jnp.zeros_like(v), running, jnp.asarray(count),
        jnp.asarray(call["curation_mode"]), jnp.asarray(call["caring_modality"], jnp.int32),
        dims=dims, ratio=ratio, frames=(1, t), official=False)
    count += 1
    assert count == e["step_after"]
    close(nchw(ys[0]), e["out_audio"])
    close(nchw(ys[1]), e["out_visual"])
    close(raw[0], e["scale_audio"])
    close(raw[1], e["scale_visual"])
    close(running[0], e["running_avg_audio"])
    close(running[1], e["running_avg_visual"])


# ------------------------------------------------------------------------------ the BDR


def official_place(name):
  """(path in a GreedyNet-shaped params tree, torch kind) of an official parameter name."""
  parts = name.split(".")
  kind = parts[-1]
  if parts[0].startswith("net_view_"):
    m = MODS[int(parts[0][-1])]
    if parts[1] == "fc":  # the branch's head
      return ("head", f"fc_{m}", "kernel" if kind == "weight" else "bias"), kind
    if parts[1].startswith("bn"):
      return (m, parts[1], "scale" if kind == "weight" else "bias"), "bn"
    return (m, parts[1], "kernel"), "conv"
  assert parts[0].startswith("mmtm"), name
  ours = f"mmtm{int(parts[0][4:]) - 1}"
  return (ours, OFFICIAL_FC[parts[1]], "kernel" if kind == "weight" else "bias"), kind


def to_flax(value, kind):
  v = np.asarray(value, np.float64)
  if kind == "conv":  # [out, in, kh, kw] -> [kh, kw, in, out]
    v = v.transpose(2, 3, 1, 0)
  elif kind == "weight":
    v = v.T
  return arr(v)


def named_trees(step):
  """(params, grads) pytrees shaped like GreedyNet's from a golden step's named tensors."""
  params, grads = {}, {}
  for name, t in step["params"].items():
    path, kind = official_place(name)
    for tree, value in ((params, t["w"]), (grads, t["g"])):
      node = tree
      for key in path[:-1]:
        node = node.setdefault(key, {})
      node[path[-1]] = to_flax(value, kind)
  return params, grads


speeds_of = jax.jit(functools.partial(learning_speeds, modalities=MODS))


def test_official_bdr_named_params():
  c = CASES["official_bdr_named_params"]
  cumulative = jnp.zeros([2, 2])
  for step, e in zip(c["inputs"]["steps"], c["expected"]["steps"]):
    params, grads = named_trees(step)
    speeds = speeds_of(grads, params)
    close(speeds[:, 0], np.divide(e["gn_bypass"], e["wn_bypass"]))
    close(speeds[:, 1], np.divide(e["gn_main"], e["wn_main"]))
    cumulative = cumulative + speeds
    close(cumulative[:, 0], e["M_bypass"])
    close(cumulative[:, 1], e["M_main"])
    b = bdr(cumulative)
    close(b, e["BDR"])
    close(b[0] - b[1], e["d_BDR"])


def test_official_bdr_groups_of_each_named_param():
  """Which of the four sums each parameter's gradient reaches: main_m (encoder m and its head),
  bypass_m (every MMTM's fc_m) or both bypass sums (the shared fc_squeeze)."""
  c = CASES["official_bdr_named_params"]
  step = c["inputs"]["steps"][0]
  params, _ = named_trees(step)
  want = {"main_0": [[0, 1], [0, 0]], "main_1": [[0, 0], [0, 1]],
          "bypass_0": [[1, 0], [0, 0]], "bypass_1": [[0, 0], [1, 0]],
          "bypass_shared": [[1, 0], [1, 0]]}
  for name, group in c["expected"]["steps"][0]["groups"].items():
    path, _ = official_place(name)
    grads = jax.tree.map(jnp.zeros_like, params)
    node = grads
    for key in path[:-1]:
      node = node[key]
    node[path[-1]] = jnp.ones_like(node[path[-1]])
    np.testing.assert_array_equal(np.asarray(speeds_of(grads, params)) > 0, want[group], name)


# ------------------------------------------------------------------------------ the schedule


def group_speeds(group_norms):
  """f32[T, 2, 2] [[bypass_0, main_0], [bypass_1, main_1]] per step from the golden's per-group
  norms, the shared fc_squeeze added to both bypass sums (compute_BDR, callbacks.py:199-233)."""
  out = []
  for s in group_norms:
    ratio = lambda *gs: sum(s[g]["gn"] for g in gs) / sum(s[g]["wn"] for g in gs)
    out.append([[ratio("bypass_0", "shared"), ratio("main_0")],
                [ratio("bypass_1", "shared"), ratio("main_1")]])
  return arr(out)


def group_trees(group_norms):
  """Per step (params, grads) trees shaped like GreedyNet's whose group sums are the golden's:
  one element per group, w = sqrt(wn), g = sqrt(gn), as the golden's fake parameters; the heads
  are zero (they add nothing to either sum)."""
  def tree(key):
    col = lambda g: arr([[np.sqrt(s[g][key])] for s in group_norms])
    zero = jnp.zeros([len(group_norms), 1])
    return {"audio": {"conv": {"kernel": col("main_0")}},
            "visual": {"conv": {"kernel": col("main_1")}},
            "mmtm1": {"fc_squeeze": {"kernel": col("shared")},
                      "fc_audio": {"kernel": col("bypass_0")},
                      "fc_visual": {"kernel": col("bypass_1")}},
            "head": {"fc_audio": {"kernel": zero}, "fc_visual": {"kernel": zero}}}
  return tree("wn"), tree("gn")


def initial_phase():
  return greedy_method().init_state(None, {"mmtm_running": ()})["phase"]


@functools.partial(jax.jit, static_argnames=("spe", "window"))
def run_next_phase(speeds, start_epoch, threshold, *, spe, window):
  """`next_phase` step by step, unlocked from 0-based epoch ``start_epoch``: per step the phase
  before (what the forward sees) and after."""
  def body(phase, xs):
    k, s = xs
    new = next_phase(phase, s, k // spe >= start_epoch, threshold, window)
    return new, (phase, new)
  _, (before, after) = jax.lax.scan(body, initial_phase(),
                                    (jnp.arange(speeds.shape[0]), speeds))
  return before, after


@functools.partial(jax.jit, static_argnames=("spe", "start_epoch", "threshold", "window"))
def run_after_step(params, grads, *, spe, start_epoch, threshold, window):
  """`Greedy.after_step` step by step with the step's (params, grads) trees and its epoch."""
  method = greedy_method(threshold, start_epoch, window, steps_per_epoch=spe)
  state = method.init_state(None, {"mmtm_running": ()})

  def body(state, xs):
    k, p, g = xs
    ctx = StepContext(step=k, epoch=k // spe, active=jnp.asarray(True),
                      hyper=types.SimpleNamespace(method=method.options))
    obj = Objective(jnp.zeros(1), {"mmtm_running": ()}, {}, 0.0, {}, None, carry=p)
    new = method.after_step(state, obj, g, ctx)
    return new, (state["phase"], new["phase"])
  n = grads["audio"]["conv"]["kernel"].shape[0]
  _, (before, after) = jax.lax.scan(body, state, (jnp.arange(n), params, grads))
  return before, after


def check_schedule(rec, before, after, threshold):
  before = jax.tree.map(np.asarray, before)
  after = jax.tree.map(np.asarray, after)
  for k, r in enumerate(rec):
    assert r["global_step"] == k
    assert bool(before["curation"][k]) == r["forward_curation_mode"], k
    # the official caring modality starts as None (unused while curation is off); ours 0
    assert int(before["caring"][k]) == (r["forward_caring_modality"] or 0), k
    accumulated = not np.array_equal(after["cumulative"][k], before["cumulative"][k])
    assert accumulated == r["bdr_computed"], k
    if r["bdr_computed"]:
      close(after["d"][k], r["d_BDR"])
      close(bdr(after["cumulative"][k]), r["BDR"])
      if "M_main" in r:
        close(after["cumulative"][k][:, 1], r["M_main"])
        close(after["cumulative"][k][:, 0], r["M_bypass"])
      # f32 d is on the same side of the threshold as the golden's
      assert (abs(float(after["d"][k])) > threshold) == (abs(r["d_BDR"]) > threshold), k
    assert bool(after["curation"][k]) == r["after_curation_mode"], k
    assert int(after["caring"][k]) == r["after_caring_modality"], k
    if r["after_curation_mode"]:
      assert int(after["curation_step"][k]) == r["after_curation_step"], k
  starts = [(k, int(after["caring"][k])) for k in range(len(rec))
            if after["curation"][k] and not before["curation"][k]]
  return starts


def official_schedule():
  c = CASES["official_phase_schedule"]
  i = c["inputs"]
  assert i["epoch_numbering"] == "1-based" and i["starting_epoch"] == 2
  spe = i["steps_per_epoch"]
  start = GreedyOptions().start_epoch  # ours, 0-based
  for k, r in enumerate(c["expected"]["steps"]):
    assert r["epoch"] - 1 == k // spe  # official 1-based epoch -> ours 0-based
    assert r["unlocked"] == (k // spe >= start)  # starting_epoch 2 (1-based) == ours 1
  return c, i, spe


def test_official_phase_schedule_next_phase():
  c, i, spe = official_schedule()
  before, after = run_next_phase(group_speeds(i["group_norms"]), GreedyOptions().start_epoch,
                                 i["epsilon"], spe=spe, window=i["curation_windowsize"])
  starts = check_schedule(c["expected"]["steps"], before, after, i["epsilon"])
  assert starts == [tuple(s) for s in c["expected"]["phase_starts"]]
  d = np.asarray(after["d"])
  balanced = [k for k in range(len(d)) if k // spe >= 1 and not before["curation"][k]
              and abs(d[k]) <= i["epsilon"]]
  assert balanced == c["expected"]["balanced_steps"]


def test_official_phase_schedule_through_after_step():
  """The same schedule through `Greedy.after_step` with the default options (threshold 0.01,
  5 steps, start_epoch 1) and parameter trees, so `learning_speeds` groups them."""
  c, i, spe = official_schedule()
  o = GreedyOptions()
  assert (o.threshold, o.phase_steps) == (i["epsilon"], i["curation_windowsize"])
  params, grads = group_trees(i["group_norms"])
  before, after = run_after_step(params, grads, spe=spe, start_epoch=o.start_epoch,
                                 threshold=o.threshold, window=o.phase_steps)
  starts = check_schedule(c["expected"]["steps"], before, after, o.threshold)
  assert starts == [tuple(s) for s in c["expected"]["phase_starts"]]


def test_balancebenchmark_phase_schedule_through_options():
  """BalanceBenchmark's machine: no warm-up (start_epoch 0) and threshold 0.001 via the
  options, epochs 0-based."""
  c = CASES["balancebenchmark_phase_schedule"]
  i = c["inputs"]
  assert i["epoch_numbering"] == "0-based"
  params, grads = group_trees(i["group_norms"])
  before, after = run_after_step(params, grads, spe=i["steps_per_epoch"], start_epoch=0,
                                 threshold=i["alpha"], window=i["window_size"])
  check_schedule(c["expected"]["steps"], before, after, i["alpha"])
  # and the pure machine with the same speeds
  before2, after2 = run_next_phase(group_speeds(i["group_norms"]), 0, i["alpha"],
                                   spe=i["steps_per_epoch"], window=i["window_size"])
  check_schedule(c["expected"]["steps"], before2, after2, i["alpha"])


# ------------------------------------------------------------------------------ end to end


def test_curation_step_cuts_the_caring_modality_fc_gradient():
  """A tiny jitted Greedy train step (the --tiny synthetic config, SmallCNN trunks): with plain
  SGD at lr 1 the update is minus the gradient, so ``fc_<caring>`` of every MMTM is unchanged
  in a curation step while everything else moves; in a normal step every fc moves."""
  cfg = config.make_config("synthetic", tiny=True, method="greedy", learning_rate=1.0,
                           momentum=0.0, weight_decay=0.0)
  method = build_method(cfg, Setup(MODS, 6, steps_per_epoch=2, window="whole"))
  model = method.build_model(types.SimpleNamespace(
      kinds={"audio": "spectrogram", "visual": "frames"}, num_classes=6))
  rng = np.random.default_rng(0)
  batch = {"inputs": {"audio": jnp.asarray(rng.normal(size=(4, 16, 16)), jnp.float32),
                      "visual": jnp.asarray(rng.normal(size=(4, 2, 16, 16, 3)), jnp.float32)},
           "label": jnp.asarray([0, 1, 2, 3], jnp.int32)}
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), batch["inputs"]))["params"]
  labels = modality_labels(params, MODS)
  optimizer = Optimizer(method, labels)  # plain SGD at lr 1
  hp = hyper_of(cfg)
  state = jax.jit(make_create_state(model, method, optimizer, batch["inputs"]))(hp)
  mmtms = sorted(k for k in state.params if k.startswith("mmtm"))
  assert mmtms == ["mmtm1", "mmtm2"]  # SmallCNN (3 stages): after every stage but the first
  step = jax.jit(make_train_step(model, method, optimizer, resolve_labels(labels, params)))
  state = state.replace(step=jnp.asarray(2, jnp.int32))  # epoch 1: past the warm-up epoch
  for curation, caring in ((False, 0), (True, 0), (True, 1)):
    phase = {**state.method_state["phase"], "curation": jnp.asarray(curation),
             "caring": jnp.asarray(caring, jnp.int32)}
    start = state.replace(method_state={**state.method_state, "phase": phase})
    new, metrics = step(start, batch, hp)
    assert float(metrics["curation"]) == curation
    for i, m in enumerate(MODS):
      assert float(metrics[f"caring_{m}"]) == (curation and caring == i)
    for k in mmtms:
      for layer in ("fc_squeeze", "fc_audio", "fc_visual"):
        moved = [np.any(np.asarray(a) != np.asarray(b)) for a, b in zip(
            jax.tree.leaves(new.params[k][layer]), jax.tree.leaves(start.params[k][layer]))]
        frozen = curation and layer == f"fc_{MODS[caring]}"
        assert moved == [not frozen] * len(moved), (curation, caring, k, layer)
    p = new.method_state["phase"]
    if curation:  # a phase step: nothing accumulated, one step further into the phase
      np.testing.assert_array_equal(p["cumulative"], phase["cumulative"])
      assert int(p["curation_step"]) == 1 and bool(p["curation"])
    else:
      assert np.all(np.asarray(p["cumulative"]) > 0)
    assert float(new.method_state["count"]) == 1
  assert step._cache_size() == 1
