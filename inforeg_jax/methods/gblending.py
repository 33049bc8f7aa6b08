"""G-Blending (Wang, Tran, Feiszli, CVPR 2020, Sec. 3, Prop. 1, Alg. 2): the loss
``sum_k w_k L_k`` over the fused head and a separate linear head per modality, with weights
from each head's overfitting-to-generalization ratio, recomputed at epoch 0 and every
super-epoch.

At a recompute, for each head k: a copy of the model (parameters and batch statistics) with a
fresh optimizer is trained ``trial_epochs`` epochs on L_k alone; with the held-out loss L^V and
the training loss L^T of that head before and after the trial,
``DeltaG_k = L^V_before - L^V_after`` and ``DeltaO_k = O_after - O_before``, ``O = L^V - L^T``,
``w_k = |DeltaG_k| / DeltaO_k^2``, normalised to sum 1 (BalanceBenchmark @ 4c1482f,
GBlending_trainer.py:306-373, whose ``abs`` keeps every head, the fused one included, unless
its held-out loss did not move; all zero falls back to equal weights). The main model is
untouched by the trials.

Named differences from BalanceBenchmark (the code reference; the authors' VMZ code has only
fixed weights): separate unimodal heads, as the paper and VMZ (BalanceBenchmark uses slices of
the fused head and zeroed inputs); losses are means measured by evaluation passes before and
after the trial (BalanceBenchmark: sums of batch losses, "before" after one trial epoch); the
held-out set is the validation split (a ``holdout`` fraction of the training set if there is
none), not the test set.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from inforeg_jax.data import pipeline
from inforeg_jax.methods.base import Method


def blend_weights(before_train, before_val, after_train, after_val) -> np.ndarray:
  """w_k proportional to |DeltaG_k| / DeltaO_k^2 over the heads, summing to 1."""
  bt, bv = np.asarray(before_train, float), np.asarray(before_val, float)
  at, av = np.asarray(after_train, float), np.asarray(after_val, float)
  delta_g = bv - av
  delta_o = (av - at) - (bv - bt)
  w = np.abs(delta_g) / np.maximum(delta_o**2, 1e-12)
  return w / w.sum() if w.sum() > 0 else np.full(len(w), 1.0 / len(w))


class GBlending(Method):
  unimodal_heads = True

  @classmethod
  def split_data(cls, cfg, dataset):
    """Holds out a seeded ``holdout`` fraction of the training set when there is no
    validation split (our choice; the run's selection then also uses it)."""
    if getattr(dataset, "val", None) is not None:
      return dataset
    n = pipeline.num_examples(dataset.train)
    perm = np.random.default_rng([cfg.seed, 7]).permutation(n)
    cut = max(1, int(round(n * cfg.gblending.holdout)))
    hold, keep = np.sort(perm[:cut]), np.sort(perm[cut:])
    take = lambda idx: {k: np.asarray(v[idx]) for k, v in dataset.train.items()}
    return dataclasses.replace(dataset, train=take(keep), val=take(hold))

  @property
  def heads(self) -> tuple[str, ...]:
    return ("fused",) + self.modalities

  def init_state(self, params, outputs):
    k = len(self.heads)
    return {"weights": jnp.full([k], 1.0 / k, jnp.float32)}

  def objective(self, fwd, params, method_state, batch, ctx):
    out, batch_stats = fwd(params, batch["inputs"])
    fused, uni = self.losses(out, batch["label"])
    w = method_state["weights"]
    loss = w[0] * fused + sum(w[1 + i] * uni[m] for i, m in enumerate(self.modalities))
    metrics = {f"weight_{h}": w[i] for i, h in enumerate(self.heads)}
    return loss[None], {"out": out, "batch_stats": batch_stats, "fused": fused, "uni": uni,
                        "metrics": metrics}

  def head_losses(self, loop, state, arrays) -> np.ndarray:
    """Each head's mean loss on ``arrays`` (evaluation mode)."""
    r = loop.evaluate(state, arrays)
    return np.array([r["loss"]] + [r[f"loss_{m}"] for m in self.modalities])

  def recompute(self, loop, state, epoch: int):
    """New weights from a trial per head (Alg. 2), the main state unchanged."""
    val = loop.dataset.val
    n = pipeline.num_examples(val)
    train_sample = {k: v[:n] for k, v in loop.dataset.train.items()}
    before = (self.head_losses(loop, state, train_sample), self.head_losses(loop, state, val))
    after_train, after_val = [], []
    for k in range(len(self.heads)):
      trial = jax.tree.map(jnp.copy, state)
      trial = trial.replace(
          opt_state=loop.replicate(loop.program.tx.init(trial.params)),
          method_state={**trial.method_state,
                        "weights": loop.replicate(jax.nn.one_hot(k, len(self.heads)))})
      for e in range(self.options.trial_epochs):
        trial, _ = loop.train_epoch(trial, epoch * 1000 + e + 1)  # an independent data order
      after_train.append(self.head_losses(loop, trial, train_sample)[k])
      after_val.append(self.head_losses(loop, trial, val)[k])
    w = blend_weights(before[0], before[1], after_train, after_val)
    return state.replace(method_state={**state.method_state,
                                       "weights": loop.replicate(jnp.asarray(w, jnp.float32))})

  def on_start(self, loop, state):
    return self.recompute(loop, state, 0)

  def on_epoch_end(self, loop, state, epoch):
    if (epoch + 1) % self.options.super_epoch == 0 and epoch + 1 < self.cfg.epochs:
      state = self.recompute(loop, state, epoch + 1)
    return state, {}
