"""PMR's prototype passes read the right epoch's batches (the official numbers are in
test_golden_pmr.py)."""

import types

import jax.numpy as jnp
import numpy as np

from inforeg_jax.methods.base import Setup
from inforeg_jax.methods.options import PMROptions
from inforeg_jax.methods.pmr import PMR
from inforeg_jax.train import TrainState

C, D = 3, 2


class FakeLoop:
  """Records which epoch's batches each prototype pass reads; features = one-hot class + epoch."""

  def __init__(self):
    self.epochs = []

  def predict_batches(self, state, epoch, num_batches, augment=False):
    self.epochs.append((epoch, num_batches, augment))
    labels = jnp.array([0, 1, 2, 0])
    feats = jnp.asarray(np.eye(C)[np.array(labels)][:, :D] + epoch, jnp.float32)
    for _ in range(num_batches):
      yield {"features": {"audio": feats, "visual": 2 * feats}}, labels

  def replicate(self, tree):
    return tree


def test_prototype_passes_read_the_next_epochs_first_tenth():
  method = PMR(types.SimpleNamespace(options=PMROptions(momentum=0.5)),
               Setup(modalities=("audio", "visual"), num_classes=C, steps_per_epoch=25,
                     window="whole", threshold=0.04))
  zeros = {m: jnp.zeros([C, D]) for m in ("audio", "visual")}
  state = TrainState(step=jnp.int32(0), params={}, batch_stats={}, opt_state=(),
                     method_state={"prototypes": zeros})
  loop = FakeLoop()
  state = method.on_start(loop, state)
  # before epoch 0: epoch 0's order, 25 // 10 = 2 batches, with the training augmentation
  assert loop.epochs == [(0, 2, True)]
  np.testing.assert_allclose(state.method_state["prototypes"]["audio"],
                             np.eye(C)[:, :D] + 0.0)  # a plain mean: no EMA yet
  state, row = method.on_epoch_end(loop, state, 0)
  assert loop.epochs[-1] == (1, 2, True) and row == {}
  np.testing.assert_allclose(state.method_state["prototypes"]["visual"],
                             2 * (np.eye(C)[:, :D] + 1.0))  # after epoch 0: still no EMA
  state, _ = method.on_epoch_end(loop, state, 1)
  assert loop.epochs[-1] == (2, 2, True)
  # from epoch 1 on, EMA with momentum 0.5 over the previous prototypes
  np.testing.assert_allclose(state.method_state["prototypes"]["audio"],
                             0.5 * (np.eye(C)[:, :D] + 2.0) + 0.5 * (np.eye(C)[:, :D] + 1.0))
