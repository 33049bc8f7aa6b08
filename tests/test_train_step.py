import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from inforeg_jax import config, models
from inforeg_jax.labels import modality_labels, resolve_labels
from inforeg_jax.methods import get
from inforeg_jax.methods.base import Setup
from inforeg_jax.train import create_state, make_eval_step, make_train_step
from inforeg_jax.window import track_window

MODS = ("audio", "visual")


def setup(method="inforeg"):
  trunk = functools.partial(models.SmallCNN, widths=(4, 8))
  net = models.MultimodalNet(
      {"audio": functools.partial(models.SpectrogramEncoder, trunk=trunk),
       "visual": functools.partial(models.FramesEncoder, trunk=trunk)}, num_classes=3)
  rng = np.random.default_rng(0)
  batch = {"inputs": {"audio": jnp.asarray(rng.normal(size=(8, 12, 10)), jnp.float32),
                      "visual": jnp.asarray(rng.normal(size=(8, 2, 12, 12, 3)), jnp.float32)},
           "label": jnp.asarray(rng.integers(0, 3, 8), jnp.int32)}
  params = net.init(jax.random.key(0), batch["inputs"])["params"]
  labels = modality_labels(params, MODS)
  cfg = config.make_config(method=method, window="whole", **{"inforeg.warmup_epochs": 0})
  m = get(method)(cfg, Setup(MODS, 3, steps_per_epoch=2, window="whole", threshold=0.04))
  tx = optax.chain(*m.transforms(labels), optax.sgd(0.01, momentum=0.9))
  state = create_state(net, tx, m, batch["inputs"], jax.random.key(0))
  step = jax.jit(make_train_step(net, tx, m, resolve_labels(labels, params)))
  return net, tx, state, step, batch, labels


def test_metrics_and_gradient_squared_norms():
  net, tx, state, step, batch, labels = setup()
  new_state, metrics = step(state, batch, jax.random.key(1))
  for k in ("loss", "acc", "loss_audio", "acc_visual", "grad_sq_audio", "grad_sq_visual",
            "alpha_audio", "window_visual"):
    assert np.ndim(metrics[k]) == 0, k

  # grad_sq_m is the squared norm of the fused loss' gradient on encoder m (Eq. 7).
  def loss(p):
    out, _ = net.apply({"params": p, "batch_stats": state.batch_stats}, batch["inputs"],
                       train=True, mutable=["batch_stats"])
    return optax.softmax_cross_entropy_with_integer_labels(out["logits"], batch["label"]).mean()
  grads = jax.grad(loss)(state.params)
  want = optax.tree.norm(grads["audio"], squared=True)
  np.testing.assert_allclose(metrics["grad_sq_audio"], want, rtol=1e-4)
  assert int(new_state.step) == 1
  assert not np.allclose(new_state.params["audio"]["SmallCNN_0"]["conv0"]["kernel"],
                         state.params["audio"]["SmallCNN_0"]["conv0"]["kernel"])


def test_no_recompilation_and_regulation_in_the_step():
  _, _, state, step, batch, _ = setup()
  alphas = []
  for i in range(6):
    state, metrics = step(state, batch, jax.random.key(i))
    alphas.append(float(metrics["alpha_audio"]) + float(metrics["alpha_visual"]))
  assert step._cache_size() == 1
  assert max(alphas) > 1.0  # the leading modality was regulated inside the jitted step


def test_eval_step_counts_only_unmasked():
  net, _, state, _, batch, _ = setup("joint")
  eval_step = jax.jit(make_eval_step(net, MODS))
  mask = jnp.asarray([1, 1, 1, 1, 1, 0, 0, 0], jnp.float32)
  out = eval_step(state, {**batch, "mask": mask})
  assert float(out["count"]) == 5
  logits = net.apply({"params": state.params, "batch_stats": state.batch_stats},
                     batch["inputs"])["logits"]
  want = np.sum((np.argmax(logits, -1) == batch["label"])[:5])
  assert float(out["acc"]) == want
