"""The Method seam (inforeg_jax/methods/base.py) hook by hook, the registry, each method's
options and their defaults, Joint and the InfoReg Method's wiring. A fake forward pass stands
in for the model: no compilation of a network, seconds in all."""

import dataclasses
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from inforeg_jax import config, methods, models, window
from inforeg_jax.data import Dataset
from inforeg_jax.hyper import hyper_of
from inforeg_jax.methods import options as opts
from inforeg_jax.methods.base import (Gradients, Method, Objective, Setup, StepContext,
                                      cross_entropy, true_class_prob_sum)
from inforeg_jax.methods.inforeg import InfoReg, InfoRegUni
from inforeg_jax.methods.joint import Joint, JointUni
from inforeg_jax.regulation import InfoRegState

MODS = ("audio", "visual")
SETUP = Setup(MODS, 3, steps_per_epoch=2, window="whole")
CTX = StepContext(step=jnp.asarray(0), epoch=jnp.asarray(0), active=jnp.asarray(True))
LOGITS = jnp.array([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0], [1.0, 1.0, 1.0], [-2.0, 0.0, 2.5]])
UNI = {"audio": jnp.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]),
       "visual": jnp.array([[0.0, 3.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 2.0], [2.0, 0.0, 0.0]])}
LABELS_Y = jnp.array([0, 2, 1, 2])


def np_ce(logits, y):
  z = np.asarray(logits, np.float64)
  logp = z - np.log(np.exp(z).sum(1, keepdims=True))
  return -np.mean(logp[np.arange(len(y)), np.asarray(y)])


def np_prob_sum(logits, y):
  z = np.asarray(logits, np.float64)
  p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
  return p[np.arange(len(y)), np.asarray(y)].sum()


def cfg_for(method, **kw):
  return config.make_config(method=method, **kw)


def transforms(method, labels):
  """A method's transformations with its config's own values."""
  return method.transforms(labels, hyper_of(method.cfg))


def rule(method):
  return method.window_rule(hyper_of(method.cfg))


# ---- helpers ------------------------------------------------------------------------------------


def test_cross_entropy_and_true_class_prob_sum():
  np.testing.assert_allclose(cross_entropy(LOGITS, LABELS_Y), np_ce(LOGITS, LABELS_Y), rtol=1e-6)
  assert cross_entropy(LOGITS.astype(jnp.bfloat16), LABELS_Y).dtype == jnp.float32
  np.testing.assert_allclose(true_class_prob_sum(LOGITS, LABELS_Y), np_prob_sum(LOGITS, LABELS_Y),
                             rtol=1e-6)
  three = LOGITS[:3]  # batch 3, 3 classes: the axis matters
  np.testing.assert_allclose(true_class_prob_sum(three, LABELS_Y[:3]),
                             np_prob_sum(three, LABELS_Y[:3]), rtol=1e-6)


def test_setup_is_frozen():
  with pytest.raises(dataclasses.FrozenInstanceError):
    SETUP.window = "prime"


# ---- the base hooks -----------------------------------------------------------------------------


def fake_fwd(params, inputs, train=True, batch_stats=None):
  """Outputs linear in params["s"] (so gradients are easy), stats tagged."""
  del inputs, train
  s = params["s"]
  return ({"logits": LOGITS * s[0], "unimodal_logits": {"audio": UNI["audio"] * s[1],
                                                         "visual": UNI["visual"] * s[2]},
           "features": {}}, {"stats": 7})


def test_joint_defaults_and_trivial_hooks():
  m = Method(cfg_for("joint"), SETUP)
  assert (Method.unimodal_weight, Method.unimodal_heads, Method.trace_from_fused,
          Method.needs_validation) == (0.0, False, False, False)
  assert m.modalities == MODS and m.options is None and m.setup is SETUP
  state = object()
  assert m.init_state({}, {}) == {}
  assert m.after_step(state, None, {}, CTX) is state
  assert m.step_metrics(None, None) == {}
  assert m.transform_inputs(None, {}, CTX) == {}
  assert m.on_start(None, state) is state
  assert m.on_epoch_end(None, state, 3) == (state, {})
  assert rule(m) == window.WindowRule(np.float32(0.04))  # Eq. 11 with the paper's K
  assert rule(Method(cfg_for("joint", threshold=0.1), SETUP)).threshold == np.float32(0.1)


def test_objective_terms_and_aux():
  params = {"s": jnp.array([1.0, 2.0, 0.5])}
  batch = {"inputs": {}, "label": LABELS_Y}
  fused = np_ce(LOGITS, LABELS_Y)
  uni = {"audio": np_ce(UNI["audio"] * 2, LABELS_Y), "visual": np_ce(UNI["visual"] * 0.5, LABELS_Y)}
  for cls, weight in ((Joint, 0.0), (JointUni, 1.0)):
    obj = cls(cfg_for("joint"), SETUP).objective(fake_fwd, params, {}, batch, CTX)
    assert isinstance(obj, Objective)
    np.testing.assert_allclose(obj.terms, [fused, weight * (uni["audio"] + uni["visual"])],
                               rtol=1e-6)
    assert obj.batch_stats == {"stats": 7}
    np.testing.assert_allclose(obj.outputs["logits"], LOGITS)
    np.testing.assert_allclose(obj.fused_loss, fused, rtol=1e-6)
    for k in MODS:
      np.testing.assert_allclose(obj.unimodal_losses[k], uni[k], rtol=1e-6)
      np.testing.assert_allclose(obj.unimodal_logits[k], fake_fwd(params, {})[0][
          "unimodal_logits"][k])
    assert obj.metrics is None and obj.carry is None

  class Half(Method):
    unimodal_weight = 0.5

  obj = Half(cfg_for("joint"), SETUP).objective(fake_fwd, params, {}, batch, CTX)
  np.testing.assert_allclose(obj.terms[1], 0.5 * (uni["audio"] + uni["visual"]), rtol=1e-6)


def vjp_of(fn, params):
  terms, vjp_fn = jax.vjp(fn, params)
  return terms, vjp_fn


def test_gradients_sum_of_terms_and_the_fused_trace():
  params = {"a": jnp.array([1.0, 2.0]), "b": jnp.array(3.0)}
  # terms: [a0 * b, a1^2 + b]: d/da = [b, 0] + [0, 2 a1]; d/db = a0 + 1
  fn = lambda p: jnp.stack([p["a"][0] * p["b"], p["a"][1] ** 2 + p["b"]])
  terms, vjp_fn = vjp_of(fn, params)
  total = {"a": [3.0, 4.0], "b": 2.0}
  fused_only = {"a": [3.0, 0.0], "b": 1.0}
  obj = lambda t: Objective(t, {}, {}, t[0], {}, None)
  m = Method(cfg_for("joint"), SETUP)
  g = m.gradients(vjp_fn, obj(terms), CTX, None)
  assert isinstance(g, Gradients) and g.metrics is None
  for got in (g.update, g.fisher):
    np.testing.assert_allclose(got["a"], total["a"])
    np.testing.assert_allclose(got["b"], total["b"])

  class Fused(Method):
    trace_from_fused = True

  g = Fused(cfg_for("joint"), SETUP).gradients(vjp_fn, obj(terms), CTX, None)
  np.testing.assert_allclose(g.update["a"], total["a"])
  np.testing.assert_allclose(g.update["b"], total["b"])
  np.testing.assert_allclose(g.fisher["a"], fused_only["a"])
  np.testing.assert_allclose(g.fisher["b"], fused_only["b"])
  # one term: the plain gradient for both
  terms1, vjp1 = vjp_of(lambda p: (p["a"][0] * p["b"])[None], params)
  g = Fused(cfg_for("joint"), SETUP).gradients(vjp1, obj(terms1), CTX, None)
  np.testing.assert_allclose(g.update["a"], [3.0, 0.0])
  np.testing.assert_allclose(g.fisher["a"], [3.0, 0.0])
  # three terms: the sum over all, the first alone
  terms3, vjp3 = vjp_of(lambda p: jnp.stack([p["b"], 2 * p["b"], 4 * p["b"]]), params)
  g = Fused(cfg_for("joint"), SETUP).gradients(vjp3, obj(terms3), CTX, None)
  assert float(g.update["b"]) == 7.0 and float(g.fisher["b"]) == 1.0


def test_transforms_track_the_window_with_the_setup():
  labels = {"a": "audio", "v": "visual", "h": None}
  params = {"a": jnp.ones(2), "v": jnp.ones(3), "h": jnp.ones(1)}
  setup = Setup(("visual", "audio"), 3, steps_per_epoch=2, window="prime")
  txs = transforms(Method(cfg_for("joint", threshold=0.3), setup), labels)
  assert len(txs) == 1
  tx = optax.chain(*txs)
  state = tx.init(params)
  for sq in ([1.0, 1.0], [1.0, 1.0], [1.0, 1.35], [1.0, 1.35], [0.0, 0.0]):
    _, state = tx.update(params, state, params, grad_sq=jnp.array(sq))
  w = window.find_window(state)
  np.testing.assert_allclose(w.trace_history[-1], [1.0, 1.35])
  # visual's rise of 0.35 / 1.35 = 0.26 is below K = 0.3
  np.testing.assert_array_equal(w.open_epochs, [0, 0])
  _, state = tx.update(params, state, params, grad_sq=jnp.array([0.0, 0.0]))
  np.testing.assert_array_equal(window.find_window(state).count, 6)


def test_build_model_with_or_without_unimodal_heads():
  data = {"audio": np.zeros((4, 8, 8), np.float32), "visual": np.zeros((4, 1, 8, 8, 3),
                                                                        np.float32),
          "label": np.zeros(4, np.int32)}
  ds = Dataset("x", data, data, 3, {"audio": "spectrogram", "visual": "frames"})
  cfg = cfg_for("joint", width=2, fusion="sum")
  net = Joint(cfg, SETUP).build_model(ds)
  assert isinstance(net, models.MultimodalNet)
  assert (net.unimodal_heads, net.fusion, net.num_classes) == (False, "sum", 3)

  class Heads(Method):
    unimodal_heads = True

  assert Heads(cfg, SETUP).build_model(ds).unimodal_heads is True


# ---- the registry -------------------------------------------------------------------------------


def test_registry_names_classes_groups_and_windows():
  assert methods.names() == tuple(methods.REGISTRY)
  builtin = ("joint", "joint_uni", "inforeg", "inforeg_uni", "ogm_ge", "agm", "pmr", "greedy",
             "gblending", "mmpareto")
  assert methods.names()[:len(builtin)] == builtin  # tests may register more after them
  for name in builtin:
    entry = methods.REGISTRY[name]
    cls = methods.get(name)
    assert issubclass(cls, Method) and cls.__name__ == entry.method.split(":")[1], name
    assert entry.default_window == ("prime" if name.startswith("inforeg") else "whole")
    assert entry.modulating == (not name.startswith("joint")), name
    cfg = config.make_config(method=name)
    if entry.options is not None:
      assert isinstance(cfg.options, entry.options) and getattr(cfg, entry.group) is cfg.options
    else:
      assert cfg.options is None and entry.group is None
  assert methods.get("joint_uni") is JointUni and methods.get("inforeg_uni") is InfoRegUni
  assert {g: c for g, c in methods.groups().items() if g in builtin} == {
      "inforeg": opts.InfoRegOptions, "ogm_ge": opts.OGMGEOptions,
                              "agm": opts.AGMOptions, "pmr": opts.PMROptions,
                              "greedy": opts.GreedyOptions,
                              "gblending": opts.GBlendingOptions,
                              "mmpareto": opts.MMParetoOptions}
  entry = methods.Entry("m:C", "doc")
  assert (entry.group, entry.default_window, entry.modulating) == (None, "whole", True)
  with pytest.raises(dataclasses.FrozenInstanceError):
    entry.doc = "x"


def test_config_names_no_method():
  """The config derives groups, flags and defaults from the registry (and the options): no
  string in its code is a method's name or one of its options (help texts and docstrings,
  which cite them as examples, aside)."""
  import ast
  import inspect
  tree = ast.parse(inspect.getsource(config))
  prose = set()
  for node in ast.walk(tree):
    body = getattr(node, "body", None)
    if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
      prose.add(id(body[0].value))  # docstrings
    if isinstance(node, ast.Call):
      name = getattr(node.func, "id", getattr(node.func, "attr", ""))
      for arg in node.args[1:2] if name == "option" else ():
        prose.update(id(n) for n in ast.walk(arg))
      for kw in node.keywords:
        if kw.arg in ("help", "description", "usage", "epilog"):
          prose.update(id(n) for n in ast.walk(kw.value))
  strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
             and isinstance(n.value, str) and id(n) not in prose]
  named = [t for t in strings for m in methods.names() if t == m or t.startswith(m + ".")]
  assert named == [], named


def test_a_new_method_is_one_module_and_one_registry_line(tmp_path):
  """A method defined here, registered in one line, shows its flags and runs."""
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  (tmp_path / "mine.py").write_text(MINE)
  env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{root}")
  help_text = subprocess.run([sys.executable, "-c", "import mine, sys; from experiments.run "
                              "import main; sys.exit(main(['--help']))"],
                             env=env, capture_output=True, text=True, cwd=root).stdout
  assert "--halve.factor" in help_text and "halve: joint training, fused loss scaled" in help_text
  proc = subprocess.run([sys.executable, "-c", "import mine, sys; from experiments.run import "
                         "main; sys.exit(main(sys.argv[1:]))", "--tiny", "--epochs=1",
                         "--method=halve", "--halve.factor=0.25", "--limit_train=64",
                         f"--workdir={tmp_path / 'run'}"],
                        env=env, capture_output=True, text=True, cwd=root, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  with open(tmp_path / "run" / "metrics.jsonl") as f:
    row = json.loads(f.readline())
  assert row["factor"] == 0.25  # its own metric, logged as any method's
  bad = subprocess.run([sys.executable, "-c", "import mine, sys; from experiments.run import "
                        "main; sys.exit(main(sys.argv[1:]))", "--method=joint",
                        "--halve.factor=2"], env=env, capture_output=True, text=True, cwd=root)
  assert bad.returncode == 2 and "another method" in bad.stderr


MINE = """
import dataclasses
from inforeg_jax import methods
from inforeg_jax.methods.base import Method
from inforeg_jax.methods.options import option


@dataclasses.dataclass(frozen=True)
class HalveOptions:
  factor: float = option(0.5, "the fused loss is multiplied by this", minimum=0, member=True)


class Halve(Method):
  def objective(self, fwd, params, method_state, batch, ctx):
    obj = super().objective(fwd, params, method_state, batch, ctx)
    factor = ctx.hyper.method.factor  # the member's own value
    return obj._replace(terms=obj.terms * factor, metrics={"factor": factor * 1.0})


methods.register("halve", methods.Entry(Halve, "joint training, fused loss scaled", HalveOptions))
"""


# ---- options ------------------------------------------------------------------------------------


DEFAULTS = {  # each from the official code (the help text says where)
    opts.InfoRegOptions: dict(beta=0.9, variant="paper", warmup_epochs=None, criterion="eq11",
                              max_window_epochs=3),
    opts.OGMGEOptions: dict(alpha=0.1, noise=True, start_epoch=0, end_epoch=50),
    opts.AGMOptions: dict(alpha=1.0, start_epoch=0, end_epoch=19, clamp=True),
    opts.PMROptions: dict(alpha=1.0, momentum=0.0, start_epoch=0, end_epoch=100,
                          prototype_fraction=0.1),
    opts.GreedyOptions: dict(threshold=0.01, phase_steps=5, start_epoch=1,
                             official_running_average=True),
    opts.GBlendingOptions: dict(super_epoch=10, weight_scale="official"),
    opts.MMParetoOptions: dict(gamma=1.5),
}
MINIMUMS = {
    opts.InfoRegOptions: dict(beta=0, warmup_epochs=0, max_window_epochs=1),
    opts.OGMGEOptions: dict(alpha=0, start_epoch=0, end_epoch=0),
    opts.AGMOptions: dict(alpha=0, start_epoch=0, end_epoch=0),
    opts.PMROptions: dict(alpha=0, momentum=0, start_epoch=0, end_epoch=0, prototype_fraction=0),
    opts.GreedyOptions: dict(threshold=0, phase_steps=1, start_epoch=0),
    opts.GBlendingOptions: dict(super_epoch=2),
    opts.MMParetoOptions: dict(gamma=0),
}
MEMBER = {  # the hyperparameters a population may vary: one coefficient a method
    opts.InfoRegOptions: {"beta"}, opts.OGMGEOptions: {"alpha"}, opts.AGMOptions: {"alpha"},
    opts.PMROptions: {"alpha", "momentum"}, opts.GreedyOptions: {"threshold"},
    opts.GBlendingOptions: set(), opts.MMParetoOptions: {"gamma"},
}


@pytest.mark.parametrize("cls", list(DEFAULTS), ids=lambda c: c.__name__)
def test_options_defaults_bounds_and_help(cls):
  o = cls()
  assert dataclasses.asdict(o) == DEFAULTS[cls]
  for f in dataclasses.fields(cls):
    assert type(f.default) is type(DEFAULTS[cls][f.name]), f.name
    assert isinstance(f.metadata["help"], str) and len(f.metadata["help"]) > 10, f.name
    assert f.metadata["minimum"] == MINIMUMS[cls].get(f.name), f.name
  assert {f.name for f in dataclasses.fields(cls) if f.metadata["member"]} == MEMBER[cls]
  choices = {f.name: f.metadata["choices"] for f in dataclasses.fields(cls)
             if f.metadata["choices"]}
  if cls is opts.InfoRegOptions:
    assert choices == {"variant": ("paper", "official"),
                       "criterion": ("eq11", "bounded", "trend", "noise_aware")}
  elif cls is opts.GBlendingOptions:
    assert choices == {"weight_scale": ("official", "heads")}
  else:
    assert choices == {}
  with pytest.raises(dataclasses.FrozenInstanceError):
    setattr(o, dataclasses.fields(cls)[0].name, 0)


def test_option_field():
  f = opts.option(3, "help text", choices=(1, 3), minimum=1)
  assert f.default == 3
  assert dict(f.metadata) == {"help": "help text", "choices": (1, 3), "minimum": 1,
                              "maximum": None, "member": False}


# ---- the InfoReg Method -------------------------------------------------------------------------


PARAMS = {"audio": {"w": jnp.ones((2, 2))}, "visual": {"w": jnp.full((3,), 2.0)},
          "head": {"w": jnp.zeros((2,))}}
PLABELS = {"audio": {"w": "audio"}, "visual": {"w": "visual"}, "head": {"w": None}}
LOSSES = {"audio": jnp.float32(0.3), "visual": jnp.float32(1.2)}


@pytest.mark.parametrize("cls, variant, weight, fused", [
    (InfoReg, "paper", 0.0, False), (InfoRegUni, "paper", 1.0, True),
    (InfoReg, "official", 1.0, False), (InfoRegUni, "official", 1.0, False)])
def test_inforeg_method_objective_and_trace(cls, variant, weight, fused):
  cfg = cfg_for("inforeg", **{"inforeg.variant": variant})
  m = cls(cfg, SETUP)
  assert m.unimodal_weight == weight and m.trace_from_fused is fused
  assert cls.unimodal is (cls is InfoRegUni)


def test_inforeg_method_transform_options():
  cfg = cfg_for("inforeg", threshold=0.3, **{"inforeg.beta": 0.5, "inforeg.warmup_epochs": 1,
                                             "inforeg.criterion": "bounded",
                                             "inforeg.max_window_epochs": 1})
  setup = Setup(MODS, 3, steps_per_epoch=1, window="whole")
  txs = transforms(InfoReg(cfg, setup), PLABELS)
  assert len(txs) == 1
  tx = txs[0]
  state = tx.init(PARAMS)
  alphas, flags = [], []
  for sq in ([1.0, 1.0], [1.0, 1.0], [1.0, 2.0], [1.0, 4.0], [1.0, 8.0]):
    _, state = tx.update(PARAMS, state, PARAMS, unimodal_losses=LOSSES, grad_sq=jnp.array(sq))
    alphas.append(float(state.alpha[0]))
    flags.append(np.asarray(state.in_window).tolist())
  # whole: audio (the leader) from epoch 1 (the warm-up) with beta 0.5
  assert alphas == [0.0] + [pytest.approx(math.exp(0.5 * math.tanh(0.9)), rel=1e-6)] * 4
  # visual's trace doubles each epoch: open from epoch 3, closed after one open epoch
  # (bounded, max 1); K 0.3 from cfg.threshold
  assert [f[1] for f in flags] == [False, False, False, True, False]
  assert isinstance(tx.init(PARAMS), InfoRegState)
  # the window comes from the setup: prime regulates only inside it
  txp = transforms(InfoReg(cfg, dataclasses.replace(setup, window="prime")), PLABELS)[0]
  state = txp.init(PARAMS)
  _, state = txp.update(PARAMS, state, PARAMS, unimodal_losses=LOSSES)
  _, state = txp.update(PARAMS, state, PARAMS, unimodal_losses=LOSSES)
  assert float(state.alpha[0]) == 0.0
  # the official variant
  cfg = cfg_for("inforeg", **{"inforeg.variant": "official"})
  tx = transforms(InfoReg(cfg, setup), PLABELS)[0]
  _, state = tx.update(PARAMS, tx.init(PARAMS), PARAMS,
                       unimodal_scores={"audio": 2.0, "visual": 1.0})
  np.testing.assert_allclose(state.alpha, [0.95 * math.exp(math.tanh(1.0)), 0.0], rtol=1e-6)


def test_inforeg_method_step_metrics():
  m = InfoReg(cfg_for("inforeg"), SETUP)
  tx = optax.chain(*transforms(m, PLABELS), optax.sgd(0.1))
  state = tx.init(PARAMS)
  metrics = m.step_metrics(state, {})
  assert set(metrics) == {"alpha_audio", "alpha_visual", "window_audio", "window_visual"}


def test_inforeg_method_transform_inputs_and_window_rule():
  obj = Objective(jnp.zeros(1), {"unimodal_logits": UNI}, {}, 0.0, LOSSES, UNI)
  batch = {"label": LABELS_Y}
  assert InfoReg(cfg_for("inforeg"), SETUP).transform_inputs(obj, batch, CTX) == {
      "unimodal_losses": LOSSES}
  official = InfoReg(cfg_for("inforeg", **{"inforeg.variant": "official"}), SETUP)
  got = official.transform_inputs(obj, batch, CTX)["unimodal_scores"]
  for k in MODS:
    np.testing.assert_allclose(got[k], np_prob_sum(UNI[k], LABELS_Y), rtol=1e-6)
  assert rule(official) == window.WindowRule(np.float32(0.05), "official", lead=0)
  bounded = InfoReg(cfg_for("inforeg", threshold=0.2, **{"inforeg.criterion": "bounded",
                                                         "inforeg.max_window_epochs": 2}), SETUP)
  assert rule(bounded) == window.WindowRule(np.float32(0.2), "bounded", 2)
