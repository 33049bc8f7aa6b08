"""The jitted step (inforeg_jax/train.py) on a tiny two-modality MLP (a Dense, BatchNorm and
dropout per encoder): the state, the forward passes, the window gate and the context the
method sees, the gradients the method returns and the Tr(F) it asks for, what the optimizer
receives, the non-finite guard, the metrics, prediction and evaluation. A recording method and
a recording transformation make each hook's inputs visible. Seconds in all."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from inforeg_jax import config, methods, models, window
from inforeg_jax.labels import modality_labels, resolve_labels
from inforeg_jax.methods.base import Method, Setup, true_class_prob_sum
from inforeg_jax.hyper import hyper_of
from inforeg_jax.train import (Optimizer, TrainState, build_method, accuracy,
                               make_create_state, make_eval_step, make_forward, make_predict,
                               make_train_step, member_rng)

MODS = ("audio", "visual")
B, C = 6, 4


class TinyEncoder(nn.Module):

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Dense(3)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.5)(x)
    return nn.Dropout(0.5, deterministic=not train)(x)


def tiny_net():
  return models.MultimodalNet({m: TinyEncoder for m in MODS}, num_classes=C)


def tiny_batch(seed=0, nan=False):
  rng = np.random.default_rng(seed)
  audio = rng.normal(size=(B, 3)).astype(np.float32)
  if nan:
    audio[0, 0] = np.nan
  return {"inputs": {"audio": jnp.asarray(audio),
                     "visual": jnp.asarray(rng.normal(size=(B, 3)), jnp.float32)},
          "label": jnp.asarray([0, 1, 2, 3, 1, 2], jnp.int32)}


def capture():
  """Records the extra arguments the step passes to the optimizer."""

  def init_fn(params):
    del params
    f32 = functools.partial(jnp.full, [2], -1.0, jnp.float32)
    return {"uni": f32(), "scores": f32(),
            "grad_sq": f32(), "modulate": jnp.asarray(False)}

  def update_fn(updates, state, params=None, *, unimodal_losses, unimodal_scores, grad_sq,
                modulate, **extra):
    del state, params, extra
    return updates, {"uni": jnp.stack([unimodal_losses[m] for m in MODS]),
                     "scores": jnp.stack([unimodal_scores[m] for m in MODS]),
                     "grad_sq": grad_sq, "modulate": jnp.asarray(modulate)}

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class Recording(Method):
  """Joint training* (fused + unimodal CEs, Tr(F) from the fused loss) that records what
  its hooks receive."""

  unimodal_weight = 1.0
  trace_from_fused = True

  def transforms(self, labels, hyper):
    return super().transforms(labels, hyper) + [capture()]

  def init_state(self, params, outputs):
    return {"n": jnp.zeros([], jnp.int32), "logits0": outputs["logits"][0],
            "params_leaves": jnp.asarray(len(jax.tree.leaves(params)), jnp.int32)}

  def objective(self, fwd, params, method_state, batch, ctx):
    obj = super().objective(fwd, params, method_state, batch, ctx)
    return obj._replace(metrics={"ctx_step": ctx.step.astype(jnp.float32),
                                 "ctx_epoch": ctx.epoch.astype(jnp.float32),
                                 "ctx_active": ctx.active.astype(jnp.float32),
                                 "seen_n": method_state["n"].astype(jnp.float32)})

  def transform_inputs(self, objective, batch, ctx):
    logits = objective.outputs["unimodal_logits"]
    return {"unimodal_losses": objective.unimodal_losses,
            "unimodal_scores": {m: true_class_prob_sum(logits[m], batch["label"])
                                for m in MODS}}

  def after_step(self, method_state, objective, grads, ctx):
    return {**method_state, "n": method_state["n"] + 1 + 0 * ctx.step,
            "logits0": objective.outputs["logits"][0]}

  def step_metrics(self, opt_state, method_state):
    return {"opt_count": window.find_window(opt_state).count.astype(jnp.float32),
            "state_n": method_state["n"].astype(jnp.float32)}


class InfiniteTrace(Recording):
  """A finite loss whose Tr(F) gradient overflows (as a float32 square can)."""

  def gradients(self, vjp_fn, objective, ctx, flat_labels):
    g = super().gradients(vjp_fn, objective, ctx, flat_labels)
    return g._replace(fisher=jax.tree.map(lambda x: x * jnp.inf, g.fisher))


# one line each: the seam a method plugs into
methods.register("recording", methods.Entry(Recording, "records what its hooks receive"))
methods.register("infinite_trace", methods.Entry(InfiniteTrace, "an overflowing Tr(F)"))


def build(method="recording", window_mode="whole", threshold=0.04, spe=2, lr=0.1,
          preprocess=None, cfg=None, seed=1):
  """A plain SGD (no momentum, no weight decay) member of seed ``seed``: (net, tx, method,
  state, jitted step(state, batch) for its hyperparameters, batch, labels, hp)."""
  net = tiny_net()
  batch = tiny_batch()
  params = net.init(jax.random.key(0), batch["inputs"])["params"]
  labels = modality_labels(params, MODS)
  cfg = cfg or config.make_config(method=method, threshold=threshold, learning_rate=lr,
                                  momentum=0.0, weight_decay=0.0, seed=seed)
  m = build_method(cfg, Setup(MODS, C, steps_per_epoch=spe, window=window_mode))
  optimizer, hp = Optimizer(m, labels), hyper_of(cfg)
  state = make_create_state(net, m, optimizer, batch["inputs"])(hp)
  step = jax.jit(make_train_step(net, m, optimizer, resolve_labels(labels, params), preprocess))
  tx = optimizer.chain(hp)  # the member's optimizer
  return net, tx, m, state, lambda st, b: step(st, b, hp), batch, labels, hp


def dropout_key(hp, step):
  """The dropout key of a member's step: fold_in(its step key, step) split in two, the second."""
  return jax.random.split(jax.random.fold_in(member_rng(hp), step))[1]


# ---- pieces -------------------------------------------------------------------------------------


def test_accuracy():
  logits = jnp.array([[0.0, 2.0, 1.0], [3.0, 0.0, 1.0], [0.0, 0.0, 5.0], [1.0, 0.0, 0.0]])
  assert float(accuracy(logits, jnp.array([1, 0, 1, 0]))) == 0.75
  assert float(accuracy(logits[:3], jnp.array([1, 0, 2]))) == 1.0


def test_create_state():
  net, tx, m, state, _, batch, _, _ = build(seed=3)
  variables = net.init({"params": jax.random.key(3), "dropout": jax.random.key(3)},
                       batch["inputs"], train=False)  # the member's seed
  assert state.step.dtype == jnp.int32 and int(state.step) == 0
  jax.tree.map(np.testing.assert_array_equal, state.params, variables["params"])
  jax.tree.map(np.testing.assert_array_equal, state.batch_stats, variables["batch_stats"])
  assert jax.tree.structure(state.opt_state) == jax.tree.structure(tx.init(state.params))
  # the method's state is built from the params and the evaluation-mode outputs
  want = net.apply(variables, batch["inputs"], train=False)["logits"][0]
  np.testing.assert_allclose(state.method_state["logits0"], want, rtol=1e-6)
  assert int(state.method_state["params_leaves"]) == len(jax.tree.leaves(state.params))


def test_make_forward_train_and_eval():
  net, _, _, state, _, batch, _, _ = build()
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  fwd = make_forward(net, state.batch_stats, jax.random.key(3))
  out, stats = fwd(state.params, batch["inputs"])
  want, new = net.apply(variables, batch["inputs"], train=True, mutable=["batch_stats"],
                        rngs={"dropout": jax.random.key(3)})
  np.testing.assert_allclose(out["logits"], want["logits"], rtol=1e-6)
  jax.tree.map(np.testing.assert_array_equal, stats, new["batch_stats"])
  assert not np.allclose(stats["audio"]["BatchNorm_0"]["mean"],
                         state.batch_stats["audio"]["BatchNorm_0"]["mean"])
  out, stats = fwd(state.params, batch["inputs"], train=False)
  np.testing.assert_allclose(out["logits"],
                             net.apply(variables, batch["inputs"], train=False)["logits"],
                             rtol=1e-6)
  assert stats is state.batch_stats
  other = jax.tree.map(lambda x: x + 1.0, state.batch_stats)
  out, stats = fwd(state.params, batch["inputs"], train=False, batch_stats=other)
  assert stats is other
  np.testing.assert_allclose(
      out["logits"], net.apply({"params": state.params, "batch_stats": other},
                               batch["inputs"], train=False)["logits"], rtol=1e-6)


# ---- the step -----------------------------------------------------------------------------------


def test_step_gradient_trace_optimizer_inputs_and_metrics():
  net, tx, m, state, step, batch, labels, hp = build(lr=0.1)
  new, metrics = step(state, batch)
  fwd = make_forward(net, state.batch_stats, dropout_key(hp, 0))

  def terms_of(p):
    out, _ = fwd(p, batch["inputs"])
    fused, uni = m.losses(out, batch["label"])
    return jnp.stack([fused, uni["audio"] + uni["visual"]]), (out, uni)

  terms, (out, uni) = terms_of(state.params)
  grads = jax.grad(lambda p: jnp.sum(terms_of(p)[0]))(state.params)
  fused_grads = jax.grad(lambda p: terms_of(p)[0][0])(state.params)
  # SGD on the sum of the terms
  jax.tree.map(lambda a, b, g: np.testing.assert_allclose(a, b - 0.1 * g, rtol=1e-5, atol=1e-6),
               new.params, state.params, grads)
  # Tr(F)'s batch term from the fused loss' gradient only (trace_from_fused)
  for m_ in MODS:
    want = optax.tree.norm(fused_grads[m_], squared=True)
    np.testing.assert_allclose(metrics[f"grad_sq_{m_}"], want, rtol=1e-4)
    assert not np.allclose(want, optax.tree.norm(grads[m_], squared=True))
  cap = new.opt_state[1]
  np.testing.assert_allclose(cap["grad_sq"], [metrics["grad_sq_audio"], metrics["grad_sq_visual"]])
  np.testing.assert_allclose(cap["uni"], [uni["audio"], uni["visual"]], rtol=1e-6)
  np.testing.assert_allclose(
      cap["scores"], [true_class_prob_sum(out["unimodal_logits"][k], batch["label"])
                      for k in MODS], rtol=1e-5)
  assert bool(cap["modulate"])  # window="whole"
  # the metrics
  np.testing.assert_allclose(metrics["loss"], jnp.sum(terms), rtol=1e-6)
  np.testing.assert_allclose(metrics["fused_loss"], terms[0], rtol=1e-6)
  np.testing.assert_allclose(metrics["acc"], accuracy(out["logits"], batch["label"]))
  for k in MODS:
    np.testing.assert_allclose(metrics[f"loss_{k}"], uni[k], rtol=1e-6)
    np.testing.assert_allclose(metrics[f"acc_{k}"],
                               accuracy(out["unimodal_logits"][k], batch["label"]))
  assert float(metrics["finite"]) == 1.0 and float(metrics["window"]) == 0.0
  # the method's hooks: its state advanced, its step metrics see the new states
  assert int(new.method_state["n"]) == 1 and float(metrics["seen_n"]) == 0
  np.testing.assert_allclose(new.method_state["logits0"], out["logits"][0], rtol=1e-6)
  assert float(metrics["state_n"]) == 1 and float(metrics["opt_count"]) == 1
  # batch statistics from the training pass
  _, stats = fwd(state.params, batch["inputs"])
  jax.tree.map(np.testing.assert_array_equal, new.batch_stats, stats)
  assert int(new.step) == 1
  # the next step uses another dropout key
  new2, metrics2 = step(new, batch)
  assert float(metrics2["ctx_step"]) == 1 and int(new2.step) == 2


def test_step_preprocess_in_training_mode():
  calls = []

  def preprocess(batch, rng, train):
    calls.append(train)
    noise = jax.random.uniform(rng, batch["inputs"]["audio"].shape)
    return {**batch, "inputs": {**batch["inputs"],
                                "audio": batch["inputs"]["audio"] * (2.0 if train else 0.0)
                                + noise}}

  net, _, m, state, step, batch, _, hp = build(preprocess=preprocess)
  _, metrics = step(state, batch)
  assert calls == [True]
  aug, dropout = jax.random.split(jax.random.fold_in(member_rng(hp), 0))
  pre = preprocess(batch, aug, True)
  out, _ = make_forward(net, state.batch_stats, dropout)(state.params, pre["inputs"])
  np.testing.assert_allclose(metrics["fused_loss"], m.losses(out, batch["label"])[0], rtol=1e-6)


def window_state(state, opened, other=None):
  """The state with a TraceWindow whose last closed epoch rose by 100% (or fell by half) for
  audio, and for visual as ``other`` says (the same as audio by default)."""
  w = window.find_window(state.opt_state)
  h = np.asarray(w.trace_history).copy()
  h[-2] = 1.0
  h[-1, 0] = 2.0 if opened else 0.5
  h[-1, 1] = 2.0 if (opened if other is None else other) else 0.5
  w = w._replace(trace_history=jnp.asarray(h), count=jnp.asarray(5, jnp.int32))  # mid-epoch
  return state.replace(opt_state=(w,) + tuple(state.opt_state[1:]),
                       step=jnp.asarray(5, jnp.int32))


def test_step_window_gate_and_context():
  for mode, opened, active in [("prime", True, 1.0), ("prime", False, 0.0),
                               ("other", True, 0.0), ("other", False, 1.0),
                               ("whole", True, 1.0), ("whole", False, 1.0)]:
    _, _, _, state, step, batch, _, _ = build(window_mode=mode, spe=2)
    new, metrics = step(window_state(state, opened), batch)
    assert float(metrics["ctx_active"]) == active, (mode, opened)
    assert bool(new.opt_state[1]["modulate"]) == bool(active)
    assert float(metrics["window"]) == float(opened)
    assert float(metrics["ctx_step"]) == 5 and float(metrics["ctx_epoch"]) == 2
  # K from the config: a rise of 0.5 of Tr^{t-1} is not above K = 0.6
  _, _, _, state, step, batch, _, _ = build(window_mode="prime", threshold=0.6)
  _, metrics = step(window_state(state, True), batch)
  assert float(metrics["window"]) == 0.0 and float(metrics["ctx_active"]) == 0.0


def test_the_gate_opens_when_any_modality_is_in_its_window():
  """Table 4's gate for a baseline: inside the prime window when any modality is in its own
  (the traces differ per modality here: one rising, one falling)."""
  for mode, active in (("prime", 1.0), ("other", 0.0)):
    for audio, visual in ((True, False), (False, True)):
      _, _, _, state, step, batch, _, _ = build(window_mode=mode, spe=2)
      _, metrics = step(window_state(state, audio, visual), batch)
      assert float(metrics["ctx_active"]) == active, (mode, audio, visual)
      assert float(metrics["window"]) == 1.0


def test_the_logged_window_is_the_one_the_optimizer_applied():
  """InfoReg with --inforeg.criterion=bounded: Eq. 11 alone says open (the rise goes on), the
  bounded rule closed it; the logged window is the transformation's, not a second Eq. 11."""
  cfg = config.make_config(method="inforeg", window="prime", threshold=0.04,
                           learning_rate=0.1, momentum=0.0, weight_decay=0.0,
                           **{"inforeg.warmup_epochs": 0, "inforeg.criterion": "bounded",
                              "inforeg.max_window_epochs": 1})
  _, _, m, state, step, batch, _, _ = build(cfg=cfg, spe=2, window_mode="prime")
  s = window.find_window(state.opt_state)
  h = np.asarray(s.trace_history).copy()
  h[-3:] = [[1.0, 1.0], [2.0, 2.0], [4.0, 4.0]]  # rising three epochs: open two in a row
  s = s._replace(trace_history=jnp.asarray(h), count=jnp.asarray(5, jnp.int32),
                 open_epochs=jnp.asarray([2, 2], jnp.int32))
  inner = state.opt_state[0]
  state = state.replace(opt_state=(inner._replace(window=s),) + tuple(state.opt_state[1:]),
                        step=jnp.asarray(5, jnp.int32))
  assert bool(np.all(window.prime_window(s.trace_history, 0.04)))  # Eq. 11: open
  new, metrics = step(state, batch)
  assert float(metrics["window"]) == 0.0  # bounded: closed after one open epoch
  assert float(metrics["window_audio"]) == float(metrics["window_visual"]) == 0.0
  assert float(metrics["alpha_audio"]) == float(metrics["alpha_visual"]) == 0.0
  assert not bool(np.any(window.find_window(new.opt_state).in_window))


def test_step_non_finite_is_skipped():
  _, _, _, state, step, batch, _, _ = build()
  bad = tiny_batch(nan=True)
  new, metrics = step(state, bad)
  assert float(metrics["finite"]) == 0.0 and not np.isfinite(float(metrics["loss"]))
  jax.tree.map(np.testing.assert_array_equal, new.params, state.params)  # no gradient
  jax.tree.map(np.testing.assert_array_equal, new.batch_stats, state.batch_stats)
  assert int(new.method_state["n"]) == 0  # the method's state as it was
  cap = new.opt_state[1]
  np.testing.assert_array_equal(cap["uni"], [0.0, 0.0])
  np.testing.assert_array_equal(cap["scores"], [0.0, 0.0])
  np.testing.assert_array_equal(cap["grad_sq"], [0.0, 0.0])
  w = window.find_window(new.opt_state)
  assert int(w.count) == 1 and not np.any(np.asarray(w.grad_sq_sum))  # the epoch keeps its length
  assert int(new.step) == 1
  # a finite step after it trains normally
  newer, metrics = step(new, batch)
  assert float(metrics["finite"]) == 1.0 and int(newer.method_state["n"]) == 1


def test_step_with_a_finite_loss_but_non_finite_trace_is_skipped():
  _, _, _, state, step, batch, _, _ = build("infinite_trace")
  new, metrics = step(state, batch)
  assert np.isfinite(float(metrics["loss"])) and float(metrics["finite"]) == 0.0
  jax.tree.map(np.testing.assert_array_equal, new.params, state.params)
  assert int(new.method_state["n"]) == 0


def test_step_with_inforeg_regulates_inside_the_jit():
  cfg = config.make_config(method="inforeg", window="whole", **{"inforeg.warmup_epochs": 0})
  _, _, _, state, step, batch, _, _ = build(cfg=cfg, spe=2, window_mode="whole")
  alphas = []
  for _ in range(4):
    state, metrics = step(state, batch)
    alphas.append(float(metrics["alpha_audio"]) + float(metrics["alpha_visual"]))
  assert max(alphas) > 1.0 and "window_audio" in metrics


def test_one_program_for_every_member_value():
  """The member-wise values are arrays given to the step: another learning rate, beta or seed
  reuses the compiled step, and gives exactly what a step built from that member's own
  config gives."""
  net, batch = tiny_net(), tiny_batch()
  params = net.init(jax.random.key(0), batch["inputs"])["params"]
  labels = modality_labels(params, MODS)
  flat = resolve_labels(labels, params)
  setup = Setup(MODS, C, steps_per_epoch=2, window="whole")

  def member(cfg):
    method = build_method(cfg, setup)
    optimizer = Optimizer(method, labels)
    return (jax.jit(make_create_state(net, method, optimizer, batch["inputs"])),
            jax.jit(make_train_step(net, method, optimizer, flat)))

  base = config.make_config(method="inforeg", window="whole", momentum=0.0, weight_decay=0.0,
                            **{"inforeg.warmup_epochs": 0})
  create, step = member(base)
  results = {}
  for lr, beta, seed in ((0.1, 0.9, 0), (0.3, 0.9, 0), (0.1, 0.2, 0), (0.1, 0.9, 5)):
    cfg = config.make_config(method="inforeg", window="whole", momentum=0.0, weight_decay=0.0,
                             learning_rate=lr, seed=seed,
                             **{"inforeg.warmup_epochs": 0, "inforeg.beta": beta})
    hp = hyper_of(cfg)
    state = create(hp)
    for _ in range(3):
      state, metrics = step(state, batch, hp)
    create1, step1 = member(cfg)  # built from the member's own config
    state1 = create1(hp)
    for _ in range(3):
      state1, _ = step1(state1, batch, hp)
    jax.tree.map(np.testing.assert_array_equal, state.params, state1.params)
    results[(lr, beta, seed)] = float(metrics["loss"])
  assert step._cache_size() == 1
  assert len(set(results.values())) == 4


# ---- prediction and evaluation -----------------------------------------------------------------


def test_predict_with_and_without_augmentation():
  calls = []

  def preprocess(batch, rng, train):
    calls.append(train)
    noise = jax.random.uniform(rng, batch["inputs"]["audio"].shape)
    return {**batch, "inputs": {**batch["inputs"],
                                "audio": batch["inputs"]["audio"] + noise + (5.0 if train else 0)}}

  net, _, _, state, _, batch, _, _ = build()
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  predict = make_predict(net, preprocess)
  out = predict(state, batch)
  want = net.apply(variables, preprocess(batch, jax.random.key(0), False)["inputs"], train=False)
  np.testing.assert_allclose(out["logits"], want["logits"], rtol=1e-6)
  out = predict(state, batch, jax.random.key(4))
  want = net.apply(variables, preprocess(batch, jax.random.key(4), True)["inputs"], train=False)
  np.testing.assert_allclose(out["logits"], want["logits"], rtol=1e-6)
  assert calls == [False, False, True, True]
  plain = make_predict(net)(state, batch, jax.random.key(4))
  np.testing.assert_allclose(plain["logits"],
                             net.apply(variables, batch["inputs"], train=False)["logits"],
                             rtol=1e-6)


def test_eval_step_sums_over_the_mask():
  net, _, _, state, _, batch, _, _ = build()
  eval_step = jax.jit(make_eval_step(net, MODS))
  mask = jnp.asarray([1, 1, 0, 1, 1, 0], jnp.float32)
  out = eval_step(state, {**batch, "mask": mask})
  logits = net.apply({"params": state.params, "batch_stats": state.batch_stats},
                     batch["inputs"])
  y, keep = np.asarray(batch["label"]), np.asarray(mask, bool)

  def ce(z):
    z = np.asarray(z, np.float64)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -logp[np.arange(B), y]

  assert float(out["count"]) == 4
  np.testing.assert_array_equal(out["pred"], np.argmax(logits["logits"], -1))
  np.testing.assert_allclose(out["acc"], np.sum((np.argmax(logits["logits"], -1) == y)[keep]))
  np.testing.assert_allclose(out["loss"], ce(logits["logits"])[keep].sum(), rtol=1e-5)
  for k in MODS:
    z = logits["unimodal_logits"][k]
    np.testing.assert_allclose(out[f"acc_{k}"], np.sum((np.argmax(z, -1) == y)[keep]))
    np.testing.assert_allclose(out[f"loss_{k}"], ce(z)[keep].sum(), rtol=1e-5)
  preprocess = lambda b, rng, train: {**b, "inputs": {**b["inputs"],
                                                      "audio": b["inputs"]["audio"] * 0}}
  zeroed = make_eval_step(net, MODS, preprocess)(state, {**batch, "mask": mask})
  assert not np.allclose(zeroed["loss_audio"], out["loss_audio"])
  # "keep" zeroes a modality's inputs (after the preprocessing): the same as zero inputs
  keep = {"audio": jnp.zeros([B]), "visual": jnp.ones([B])}
  kept = make_eval_step(net, MODS)(state, {**batch, "mask": mask, "keep": keep})
  plain = make_eval_step(net, MODS)(state, {**batch, "mask": mask, "inputs": {
      **batch["inputs"], "audio": jnp.zeros_like(batch["inputs"]["audio"])}})
  np.testing.assert_allclose(kept["loss"], plain["loss"], rtol=1e-6)


def test_train_state_is_a_pytree():
  _, _, _, state, _, _, _, _ = build()
  leaves = jax.tree.leaves(state)
  assert isinstance(state, TrainState) and len(leaves) > 5
