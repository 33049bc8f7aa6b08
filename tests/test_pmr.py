"""PMR's prototype passes read the right epoch's batches (the official numbers are in
test_golden_pmr.py)."""

import types

import jax
import jax.numpy as jnp
import numpy as np

from inforeg_jax.methods.base import Setup
from inforeg_jax.methods.options import PMROptions
from inforeg_jax.methods.pmr import PMR
from inforeg_jax.train import TrainState

C, D = 3, 2


class FakeLoop:
  """Records which epoch's batches each prototype pass reads; features = one-hot class + epoch,
  for a population of two members whose second has features and momentum of its own."""

  def __init__(self, momentum=(0.5, 0.0)):
    self.epochs = []
    self.hyper = types.SimpleNamespace(
        method=types.SimpleNamespace(momentum=np.asarray(momentum, np.float32)))

  def map_members(self, fn, *trees):
    return jax.vmap(fn)(*trees)

  def predict_batches(self, state, epoch, num_batches, augment=False):
    self.epochs.append((epoch, num_batches, augment))
    labels = jnp.array([0, 1, 2, 0])
    feats = jnp.asarray(np.eye(C)[np.array(labels)][:, :D] + epoch, jnp.float32)
    feats = jnp.stack([feats, 10 * feats])  # [members, batch, D]
    for _ in range(num_batches):
      yield {"features": {"audio": feats, "visual": 2 * feats}}, jnp.stack([labels, labels])

  def place(self, tree):
    return tree


def test_prototype_passes_read_the_next_epochs_first_tenth():
  method = PMR(types.SimpleNamespace(options=PMROptions()),
               Setup(modalities=("audio", "visual"), num_classes=C, steps_per_epoch=25,
                     window="whole"))
  zeros = {m: jnp.zeros([2, C, D]) for m in ("audio", "visual")}
  state = TrainState(step=jnp.int32(0), params={}, batch_stats={}, opt_state=(),
                     method_state={"prototypes": zeros})
  loop = FakeLoop()
  state = method.on_start(loop, state)
  # before epoch 0: epoch 0's order, 25 // 10 = 2 batches, with the training augmentation
  assert loop.epochs == [(0, 2, True)]
  np.testing.assert_allclose(state.method_state["prototypes"]["audio"][0],
                             np.eye(C)[:, :D] + 0.0)  # a plain mean: no EMA yet
  state, row = method.on_epoch_end(loop, state, 0)
  assert loop.epochs[-1] == (1, 2, True) and row == {}
  np.testing.assert_allclose(state.method_state["prototypes"]["visual"][0],
                             2 * (np.eye(C)[:, :D] + 1.0))  # after epoch 0: still no EMA
  state, _ = method.on_epoch_end(loop, state, 1)
  assert loop.epochs[-1] == (2, 2, True)
  # from epoch 1 on, EMA with each member's momentum over its previous prototypes
  np.testing.assert_allclose(state.method_state["prototypes"]["audio"][0],
                             0.5 * (np.eye(C)[:, :D] + 2.0) + 0.5 * (np.eye(C)[:, :D] + 1.0))
  np.testing.assert_allclose(state.method_state["prototypes"]["audio"][1],
                             10 * (np.eye(C)[:, :D] + 2.0))  # momentum 0: a fresh mean


def test_prototype_fraction_sets_the_batches():
  from inforeg_jax.methods.pmr import prototype_batches
  assert [prototype_batches(n, 0.1) for n in (5, 10, 25, 46, 70, 105)] == [
      n // 10 or 1 for n in (5, 10, 25, 46, 70, 105)]  # the official max(1, len // 10)
  assert prototype_batches(46, 0.5) == 23 and prototype_batches(46, 1.0) == 46
  method = PMR(types.SimpleNamespace(options=PMROptions(prototype_fraction=0.4)),
               Setup(modalities=("audio", "visual"), num_classes=C, steps_per_epoch=25,
                     window="whole"))
  loop = FakeLoop()
  zeros = {m: jnp.zeros([2, C, D]) for m in ("audio", "visual")}
  method.on_start(loop, TrainState(step=jnp.int32(0), params={}, batch_stats={}, opt_state=(),
                                   method_state={"prototypes": zeros}))
  assert loop.epochs == [(0, 10, True)]
