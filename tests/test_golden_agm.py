"""AGM against numbers from a transcription of its official code (tests/golden/make_agm.py,
lihong2303/AGM_ICCV2023 @ 5a65542; the fields are explained in the golden's "source" and in
make_agm.py).

Covered: the coefficient sequences (Shapley responses -> batch CE scores -> coefficients ->
cumulative-mean update, with the iteration count the `AGM` method derives from its step
counter), the clamp (10 for two modalities, 7 for three), the issue's steady case, the hook
gradients (``modulated_sum``'s gradient w.r.t. every pass's logits), the three-modality
responses, and the whole official step on the golden's tiny late-fusion model, three steps
through the real `AGM` objective, gradients (conditional clipping) and `train.make_train_step`
with SGD (momentum 0.9, coupled weight decay 1e-4).

The tiny model here is this file's own Flax module with torch's ``BatchNorm1d`` semantics
(running variance updated with the unbiased batch variance; flax's ``nn.BatchNorm`` uses the
biased one, which would change the evaluation-mode passes from the second step on): the
fixture reproduces the golden's architecture, and what is tested is the method.

The golden's AV-MNIST rule (run/AVMNIST_main.py) has no clamp; the pure ``coefficients`` is
checked against it with ``clamp=inf``. The `AGM` method itself always clamps (10 or 7), i.e. it
follows the CREMA-D/UR-Funny scripts: that is tested as the method's choice.
"""

import functools
import json
import math
import os
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from inforeg_jax.labels import modality_labels, resolve_labels
from inforeg_jax.methods.agm import (AGM, coefficients, conditional_clip, modulated_sum, ratios,
                                     response_scores, shapley_responses, update_running)
from inforeg_jax import config
from inforeg_jax.methods.base import Objective, Setup, StepContext
from inforeg_jax.methods.options import AGMOptions
from inforeg_jax.hyper import hyper_of
from inforeg_jax.train import (Optimizer, TrainState, build_method, make_forward,
                               make_train_step)
from tests.golden.compare import arr, close

GOLDEN = json.load(open(os.path.join(os.path.dirname(__file__), "golden", "agm.json")))
CASES = {c["name"]: c for c in GOLDEN["cases"]}
MODS2 = ("audio", "visual")
MODS3 = ("audio", "visual", "text")




def close_coefficients(actual, expected, rtol=1e-5):
  """Coefficients span 1e-53 to 1e6: compare their logarithms (a relative comparison); one
  below float32's normal range (the AV-MNIST rule, unclamped, reaches 3e-53) must underflow
  to at most that range."""
  a, e = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  tiny = e < np.finfo(np.float32).tiny
  assert np.all(a[tiny] < np.finfo(np.float32).tiny), (a, e)
  la, le = np.log(a[~tiny]), np.log(e[~tiny])
  np.testing.assert_allclose(la, le, rtol=0, atol=rtol * max(1.0, float(np.max(np.abs(le)))))


def present(pass_name, modalities):
  """The modalities a golden pass keeps: 'total_out' all, 'pad_visual_audio_out' the rest."""
  if pass_name == "total_out":
    return frozenset(modalities)
  return frozenset(modalities) - set(pass_name[len("pad_"):-len("_out")].split("_"))


def iteration_of(epoch, step, total_batch):
  """The official 1-based iteration (CREMAD_main.py:48): (epoch - 1) total_batch + step + 1."""
  return (epoch - 1) * total_batch + step + 1


def agm_method(modalities, alpha, steps_per_epoch=2, num_classes=3):
  cfg = types.SimpleNamespace(options=AGMOptions(alpha=alpha))
  return AGM(cfg, Setup(modalities=tuple(modalities), num_classes=num_classes,
                        steps_per_epoch=steps_per_epoch, window="whole"))


SEQUENCE_CASES = [n for n, c in CASES.items()
                  if "rule" in c["inputs"] and not n.startswith("tiny_model")]


@functools.partial(jax.jit, static_argnums=0)
def rule_step(mods, scores, running, alpha, clamp, step):
  """ratio, target, coefficients, and the running means after `AGM.after_step`'s update
  (iteration = the global step + 1) and after `update_running` itself."""
  m = agm_method(mods, 1.0)
  ctx = StepContext(step=step, epoch=jnp.zeros([], jnp.int32), active=jnp.asarray(True),
                    hyper=types.SimpleNamespace(method=m.options))
  obj = Objective(jnp.zeros(1), {}, {}, 0.0, {}, None,
                  carry={"scores": scores, "last_coefs": jnp.ones_like(scores)})
  after = m.after_step(
      {"running_scores": running, "last_coefs": jnp.ones_like(scores)}, obj, None, ctx)
  return (ratios(scores), ratios(running), coefficients(scores, running, alpha, clamp),
          after["running_scores"], update_running(running, scores, step + 1))


@functools.partial(jax.jit, static_argnums=0)
def responses_and_scores(mods, passes, labels):
  """``passes`` keyed by the golden's names ('total_out', 'pad_visual_out', ...)."""
  responses = shapley_responses({present(n, mods): v for n, v in passes.items()}, mods)
  return responses, response_scores(responses, labels, mods)


@pytest.mark.parametrize("name", SEQUENCE_CASES)
def test_coefficient_sequence(name):
  """Per step: responses (when logits are given) -> scores -> ratio, target, coefficient ->
  running means; the running means carried from step to step by `AGM.after_step` with the
  iteration taken from the global step counter."""
  c = CASES[name]
  i, steps = c["inputs"], c["expected"]["steps"]
  rule, alpha, tb = i["rule"], i["alpha"], i["total_batch"]
  mods = MODS3 if rule == "urfunny" else MODS2
  # official: 10 for CREMA-D (145-152), 7 for UR-Funny (117-130), none for AV-MNIST (116-117)
  clamp = {"cremad": 10.0, "urfunny": 7.0, "avmnist": math.inf}[rule]
  if rule != "avmnist":
    assert agm_method(mods, alpha, steps_per_epoch=tb).clamp == clamp
  running = arr(i["running_init"])
  for k, e in enumerate(steps):
    official_iteration = iteration_of(e["epoch"], e["step"], tb)
    # AV-MNIST counts from 0 (AVMNIST_main.py:38) with the same cumulative mean
    assert e["iteration"] == official_iteration - (rule == "avmnist")
    close(running, e["running_before"])
    if "steps" in i:
      passes = {n: arr(v) for n, v in i["steps"][k].items()
                if n.endswith("_out") and n != "zero_padding_out"}
      responses, scores = responses_and_scores(mods, passes,
                                               jnp.asarray(i["steps"][k]["label"]))
      if rule == "urfunny":
        for m, key in zip(mods, ("m_a", "m_v", "m_t")):
          close(responses[m], e[key])
      else:
        close(responses["audio"], e["out_a"])
        close(responses["visual"], e["out_v"])
    else:
      scores = arr(i["scores"][k])
    close(scores, e["scores"])
    ratio, target, coefs, running, direct = rule_step(
        mods, arr(e["scores"]), running, alpha, clamp, jnp.asarray(official_iteration - 1))
    close(ratio, e["ratio"])
    close(target, e["target"])
    close_coefficients(coefs, e["coeff"])
    close(running, e["running_after"])
    close(direct, e["running_after"])


def test_clamp_values():
  """clamp 10 with two modalities (c = e^{10 alpha} at most), 7 with three."""
  assert agm_method(MODS2, 1.5).clamp == 10.0
  assert agm_method(MODS3, 4.0).clamp == 7.0
  e = CASES["cremad_clamp_at_10"]["expected"]["steps"][0]
  np.testing.assert_allclose(e["coeff"][0], math.exp(15.0), rtol=1e-12)  # the golden saturates
  c = coefficients(arr(e["scores"]), arr(e["running_before"]), 1.5, 10.0)
  np.testing.assert_allclose(c[0], math.exp(15.0), rtol=1e-5)
  # three modalities: a large target gap saturates at 7 alpha
  c3 = coefficients(jnp.array([1.0, 1.0, 1.0]), jnp.array([0.0, 5.0, 5.0]), 1.0, 7.0)
  np.testing.assert_allclose(c3[0], math.exp(7.0), rtol=1e-5)


def test_steady_case_gives_ones_from_the_second_iteration():
  """The issue's steady CEs 0.5 / 1.5: [exp(1.5 (1 - e)), exp(1.5 (1 - 1/e))] at iteration 1,
  exactly [1, 1] afterwards (and at once from a warm start)."""
  fresh = CASES["cremad_steady_0.5_1.5_fresh"]["expected"]["steps"]
  close_coefficients(fresh[0]["coeff"], [math.exp(1.5 * (1 - math.e)),
                                          math.exp(1.5 * (1 - 1 / math.e))])
  running = jnp.zeros(2)
  for k, e in enumerate(fresh):
    c = coefficients(jnp.array([0.5, 1.5]), running, 1.5, 10.0)
    if k:
      np.testing.assert_allclose(c, [1.0, 1.0], rtol=1e-6)
    close_coefficients(c, e["coeff"])
    running = update_running(running, jnp.array([0.5, 1.5]), k + 1)
  for e in CASES["cremad_steady_0.5_1.5_warm"]["expected"]["steps"]:
    assert e["coeff"] == [1.0, 1.0]


HOOK_CASES = [n for n in CASES if n.startswith("hook_gradients_")]


@functools.partial(jax.jit, static_argnums=0)
def hook_case(mods, passes, coefs, y):
  names = sorted(passes)

  def responses_of(p):
    return shapley_responses({present(n, mods): p[n] for n in names}, mods)

  def loss_of_responses(r):
    return optax.softmax_cross_entropy_with_integer_labels(
        modulated_sum(r, coefs, mods), y).mean()

  responses = responses_of(passes)
  loss, g_pass = jax.value_and_grad(lambda p: loss_of_responses(responses_of(p)))(passes)
  g_resp = jax.grad(loss_of_responses)(responses)
  # the unscaled gradient arriving at each response (the hook's input)
  g_plain = jax.grad(lambda r: optax.softmax_cross_entropy_with_integer_labels(
      sum(r.values()), y).mean())(responses)
  return responses, modulated_sum(responses, coefs, mods), loss, g_pass, g_resp, g_plain


@pytest.mark.parametrize("name", HOOK_CASES)
def test_hook_gradients(name):
  """The loss CE(modulated_sum) of the Shapley responses: its value, the gradient at each
  response (c_m g) and on every pass's logits equal the official backward hooks'."""
  c = CASES[name]
  i, e = c["inputs"], c["expected"]
  mods = tuple(i["modalities"])
  coefs = arr(i["coefficients"])
  passes = {n: arr(v) for n, v in i["passes"].items()}
  responses, fused, loss, g_pass, g_resp, g_plain = hook_case(
      mods, passes, coefs, jnp.asarray(i["label"]))
  for m in mods:
    close(responses[m], e["responses"][m])
  close(fused, e["fused_logits"])
  close(loss, e["loss"])
  for n in passes:
    close(g_pass[n], e["grad_of_pass_logits"][n])
  for k, m in enumerate(mods):
    close(g_plain[m], e["grad_at_response_output"][m])
    close(g_resp[m], e["grad_after_hook"][m])
    close(g_resp[m], float(coefs[k]) * np.asarray(e["grad_at_response_output"][m]))


# ------------------------------------------------------------------ the tiny model, whole step


class TorchBatchNorm1d(nn.Module):
  """torch.nn.BatchNorm1d (momentum 0.1, eps 1e-5): batch statistics in training mode, the
  running variance updated with the *unbiased* batch variance."""

  momentum: float = 0.1
  eps: float = 1e-5

  @nn.compact
  def __call__(self, x, train: bool):
    d = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (d,))
    bias = self.param("bias", nn.initializers.zeros, (d,))
    mean = self.variable("batch_stats", "mean", jnp.zeros, (d,))
    var = self.variable("batch_stats", "var", jnp.ones, (d,))
    if train:
      mu, v = x.mean(0), x.var(0)
      if not self.is_initializing():
        n = x.shape[0]
        mean.value = (1 - self.momentum) * mean.value + self.momentum * mu
        var.value = (1 - self.momentum) * var.value + self.momentum * v * n / (n - 1)
    else:
      mu, v = mean.value, var.value
    return (x - mu) / jnp.sqrt(v + self.eps) * scale + bias


class Encoder(nn.Module):
  width: int

  @nn.compact
  def __call__(self, x, train: bool):
    return nn.relu(TorchBatchNorm1d(name="bn")(nn.Dense(self.width, name="fc")(x), train))


class TinyAV(nn.Module):
  """The golden's TinyAVClassifier: Linear+BN1d+ReLU encoders, a concat ``fc_out`` head."""

  width: int = 4
  num_classes: int = 3

  @nn.compact
  def __call__(self, inputs, train: bool = False):
    feats = {m: Encoder(self.width, name=m)(inputs[m], train) for m in MODS2}
    head = nn.Dense(self.num_classes, name="head")
    logits = head(jnp.concatenate([feats[m] for m in MODS2], -1))
    # unimodal logits (logged only by the train step): the head's slices
    kernel = head.variables["params"]["kernel"]
    uni = {m: feats[m] @ kernel[k * self.width:(k + 1) * self.width]
           for k, m in enumerate(MODS2)}
    return {"logits": logits, "unimodal_logits": uni, "features": feats}


TORCH_NAMES = {  # golden state_dict name -> (collection, path)
    "net.{m}_net.0.weight": ("params", ("{m}", "fc", "kernel")),
    "net.{m}_net.0.bias": ("params", ("{m}", "fc", "bias")),
    "net.{m}_net.1.weight": ("params", ("{m}", "bn", "scale")),
    "net.{m}_net.1.bias": ("params", ("{m}", "bn", "bias")),
    "net.{m}_net.1.running_mean": ("batch_stats", ("{m}", "bn", "mean")),
    "net.{m}_net.1.running_var": ("batch_stats", ("{m}", "bn", "var")),
}


def torch_map():
  out = {}
  for t, (col, path) in TORCH_NAMES.items():
    for m in MODS2:
      out[t.format(m=m)] = (col, tuple(p.format(m=m) for p in path))
  out["net.fusion_module.fc_out.weight"] = ("params", ("head", "kernel"))
  out["net.fusion_module.fc_out.bias"] = ("params", ("head", "bias"))
  return out


def get(tree, path):
  for p in path:
    tree = tree[p]
  return tree


def from_torch(state_dict):
  """(params, batch_stats) from a golden state_dict (torch Linear weight is [out, in])."""
  params, stats = {}, {}
  for name, (col, path) in torch_map().items():
    if name not in state_dict:
      continue
    v = arr(state_dict[name])
    if path[-1] == "kernel":
      v = v.T
    node = params if col == "params" else stats
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = v
  return params, stats


def compare_torch_tree(tree, expected, collection, rtol):
  for name, (col, path) in torch_map().items():
    if col != collection or name not in expected:
      continue
    v = np.asarray(get(tree, path))
    close(v.T if path[-1] == "kernel" else v, expected[name], rtol=rtol)


@pytest.fixture(scope="module")
def tiny_program():
  """(method, tx, step): ``step(state, batch)`` is the real train step, and beside it the
  method's objective and gradients alone on the state before it (the gradients before and
  after the clip, which the train step does not return), in one jit."""
  model = TinyAV()
  example = {"audio": jnp.zeros([4, 3]), "visual": jnp.zeros([4, 5])}
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), example, train=False))
  labels = modality_labels(shapes["params"], MODS2)
  flat_labels = resolve_labels(labels, shapes["params"])
  # SGD lr 0.05, momentum 0.9, weight decay 1e-4 (no StepLR decay inside three steps)
  cfg = config.make_config(method="agm", learning_rate=0.05, momentum=0.9, weight_decay=1e-4,
                           epochs=10, lr_step_epochs=10, window="whole",
                           **{"agm.alpha": 1.5})
  method = build_method(cfg, Setup(MODS2, 3, steps_per_epoch=2, window="whole"))
  tx = Optimizer(method, labels)
  hp = hyper_of(cfg)
  train_step = make_train_step(model, method, tx, flat_labels)

  def parts(state, batch):
    ctx = StepContext(step=state.step, epoch=state.step // 2, active=jnp.asarray(True),
                      hyper=hp)
    fwd = make_forward(model, state.batch_stats, jax.random.key(0))
    terms, vjp_fn, obj = jax.vjp(
        lambda p: (lambda o: (o.terms, o))(
            method.objective(fwd, p, state.method_state, batch, ctx)),
        state.params, has_aux=True)
    grads, unclipped, metrics = method.gradients(vjp_fn, obj, ctx, flat_labels)
    metrics = {**obj.metrics, **metrics}
    # every pass's logits as the objective computes them (to localise a failure)
    out, new_stats = fwd(state.params, batch["inputs"])
    passes = {"total_out": out["logits"]}
    for name, keep in (("pad_visual_out", "audio"), ("pad_audio_out", "visual"),
                       ("zero_padding_out", None)):
      zeroed = {m: x if m == keep else jnp.zeros_like(x) for m, x in batch["inputs"].items()}
      passes[name] = fwd(state.params, zeroed, train=False, batch_stats=new_stats)[0]["logits"]
    return terms, grads, unclipped, metrics, passes

  @jax.jit
  def step(state, batch):
    return parts(state, batch), train_step(state, batch, hp)

  return method, types.SimpleNamespace(init=lambda params: tx.init(params, hp)), step


@pytest.mark.parametrize("name", ["tiny_model_3_steps_no_clip", "tiny_model_3_steps_clip"])
def test_tiny_model_three_official_steps(name, tiny_program):
  """Three whole steps: pass logits, responses, scores, coefficients, the loss, the gradients
  before and after the conditional clip, the clip flag, and the parameters and batch-norm
  statistics after SGD (momentum 0.9, weight decay 1e-4, lr 0.05). rtol 1e-4: the clip case's
  gradients reach 1e4 and the float32 states drift apart by ~1e-5 over the steps."""
  method, tx, step = tiny_program
  c = CASES[name]
  i, steps = c["inputs"], c["expected"]["steps"]
  assert (i["alpha"], i["lr"], i["momentum"], i["weight_decay"]) == (1.5, 0.05, 0.9, 1e-4)
  params, stats = from_torch(i["initial_state"])
  state = TrainState(step=jnp.zeros([], jnp.int32), params=params, batch_stats=stats,
                     opt_state=tx.init(params), method_state=method.init_state(params, None))
  for k, (b, e) in enumerate(zip(i["batches"], steps)):
    assert e["iteration"] == k + 1
    batch = {"inputs": {"audio": arr(b["audio"]), "visual": arr(b["visual"])},
             "label": jnp.asarray(b["label"], jnp.int32)}
    (terms, grads, unclipped, metrics, passes), (state, step_metrics) = step(state, batch)
    for p in ("total_out", "pad_visual_out", "pad_audio_out", "zero_padding_out"):
      close(passes[p], e[p], rtol=1e-4)
    close([metrics["score_audio"], metrics["score_visual"]], e["scores"], rtol=1e-4)
    close_coefficients([metrics["coef_audio"], metrics["coef_visual"]], e["coeff"], rtol=1e-4)
    close(terms.sum(), e["loss"], rtol=1e-4)
    assert bool(metrics["clipped"]) == e["clipped"]
    compare_torch_tree(unclipped, e["grads_before_clip"], "params", rtol=1e-4)
    compare_torch_tree(grads, e["grads_after_clip"], "params", rtol=1e-4)
    close(optax.tree.norm(unclipped), e["grad_global_norm"], rtol=1e-4)
    head = np.asarray(unclipped["head"]["kernel"])
    close([head.max(), head.min()], [e["head_grad_max"], e["head_grad_min"]], rtol=1e-4)
    # the train step: the same coefficients, the running means, the state after SGD
    assert bool(step_metrics["finite"])
    close_coefficients([step_metrics["coef_audio"], step_metrics["coef_visual"]], e["coeff"],
                       rtol=1e-4)
    close(step_metrics["loss"], e["loss"], rtol=1e-4)
    close(state.method_state["running_scores"], e["running_after"])
    compare_torch_tree(state.params, e["state_after_step"], "params", rtol=1e-4)
    compare_torch_tree(state.batch_stats, e["state_after_step"], "batch_stats", rtol=1e-5)


def test_conditional_clip_is_on_the_head_weight_only():
  """The clip test reads the head's weight (not its bias, not the encoders); the scale is
  min(1, 1 / (||g|| + 1e-6)) over every gradient (torch clip_grad_norm_)."""
  clip = jax.jit(lambda g: conditional_clip(g, g["head"]))
  grads = {"audio": {"w": jnp.full([3], 5.0)}, "head": {"kernel": jnp.full([2, 2], 0.5),
                                                        "bias": jnp.full([2], 9.0)}}
  out, big = clip(grads)
  assert not bool(big)
  np.testing.assert_array_equal(out["audio"]["w"], grads["audio"]["w"])
  grads["head"]["kernel"] = grads["head"]["kernel"].at[0, 0].set(-1.5)
  out, big = clip(grads)
  norm = float(np.sqrt(3 * 25 + 3 * 0.25 + 1.5**2 + 2 * 81))
  assert bool(big)
  np.testing.assert_allclose(out["audio"]["w"], 5.0 / (norm + 1e-6), rtol=1e-6)
  np.testing.assert_allclose(out["head"]["bias"], 9.0 / (norm + 1e-6), rtol=1e-6)
