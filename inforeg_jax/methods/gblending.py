"""G-Blending (Wang, Tran, Feiszli, CVPR 2020, Sec. 3, Prop. 1, Alg. 2), as BalanceBenchmark's
trainer runs it (GeWu-Lab/BalanceBenchmark @ 4c1482f: balancemm/trainer/GBlending_trainer.py,
balancemm/models/avclassify_model.py): the loss ``w_fused L_fused + sum_m w_m L_m`` with
weights from each head's overfitting-to-generalization ratio, recomputed before epoch 0 and
every super-epoch (GB 92-95).

- The unimodal outputs of the loss are slices of the shared head, ``f_m W_m + b / M`` (AV
  277-301), as every concat head here (`models.ConcatHead`): no separate heads.
- A recompute (``super_epoch_origin``, GB 306-376) runs one trial per head: for modality m a
  copy of the model (parameters and batch statistics) trained on the fused output with the
  other modalities' inputs zeroed (AV 267-269; every parameter learns), for the fused head a
  copy trained as usual, each for ``super_epoch`` epochs with a fresh optimizer (GB 313-314:
  the main one's kind at its base learning rate). ``T``: the sum over an epoch's training
  steps of their batch-mean losses, collected while it trains; ``V``: the sum over the held-out
  batches of their batch-mean losses, in evaluation mode with the same inputs zeroed; both
  after the trial's first epoch ("pre") and its last ("post") (GB 330-360).
- ``w_k = |dG_k / dO_k^2|``, ``dG = V_post - V_pre``, ``dO = (V - T)_post - (V - T)_pre``,
  normalised to sum 1 (GB 361-373).

Named differences: the held-out set is the validation split (BalanceBenchmark holds out the
test set when a dataset has none, DU 16-21; here a run without a validation split is refused,
and every dataset's preparation carves one); the trial's data order is an independent shuffle
per trial epoch; a zero dO or all-zero weights fall back to equal weights (BalanceBenchmark
divides by zero); ``--gblending.weight_scale=heads`` scales the weights to sum to the number of
heads, the loss scale of joint training* (three losses of weight 1), where the official weights
sum to 1 and so train with a third of joint training*'s gradient scale.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from inforeg_jax.methods.base import Method, Objective


def blend_weights(pre_train, pre_val, post_train, post_val) -> np.ndarray:
  """w_k = |dG_k / dO_k^2| over the heads (last axis), normalised to sum 1."""
  pt, pv = np.asarray(pre_train, float), np.asarray(pre_val, float)
  at, av = np.asarray(post_train, float), np.asarray(post_val, float)
  delta_g = av - pv
  delta_o = (av - at) - (pv - pt)
  w = np.abs(delta_g / np.maximum(delta_o**2, 1e-12))
  total = w.sum(axis=-1, keepdims=True)
  equal = np.full_like(w, 1.0 / w.shape[-1])
  return np.where(total > 0, w / np.where(total > 0, total, 1.0), equal)


class GBlending(Method):
  needs_validation = True

  @property
  def heads(self) -> tuple[str, ...]:
    return ("fused",) + self.modalities

  def init_state(self, params, outputs):
    k, m = len(self.heads), len(self.modalities)
    return {"weights": jnp.full([k], 1.0 / k, jnp.float32),
            "keep": jnp.ones([m], jnp.float32)}  # a trial's inputs: 0 zeroes a modality

  def objective(self, fwd, params, method_state, batch, ctx):
    keep = method_state["keep"]
    inputs = {m: x * keep[i].astype(x.dtype)
              for i, m in enumerate(self.modalities) for x in [batch["inputs"][m]]}
    out, batch_stats = fwd(params, inputs)
    fused, uni = self.losses(out, batch["label"])
    w = method_state["weights"]
    loss = w[0] * fused + sum(w[1 + i] * uni[m] for i, m in enumerate(self.modalities))
    metrics = {f"weight_{h}": w[i] for i, h in enumerate(self.heads)}
    return Objective(loss[None], out, batch_stats, fused, uni, out["unimodal_logits"], metrics)

  def trial(self, loop, state, head: int, epoch: int):
    """One head's trial on a copy of every member: (T, V) after its first and last epochs,
    arrays [2, N]."""
    n, m = loop.members, len(self.modalities)
    keep = np.ones([m], np.float32) if head == 0 else np.eye(m, dtype=np.float32)[head - 1]
    zeroed = [x for i, x in enumerate(self.modalities) if not keep[i]]
    fused_only = np.eye(len(self.heads), dtype=np.float32)[0]
    trial = jax.tree.map(jnp.copy, state)
    trial = trial.replace(
        opt_state=loop.init_opt_state(trial.params),
        method_state={**trial.method_state,
                      "weights": loop.place(np.tile(fused_only, (n, 1))),
                      "keep": loop.place(np.tile(keep, (n, 1)))})
    batch = self.cfg.batch_size
    held_out = loop.dataset.val
    batches = len(held_out["label"]) // batch  # BalanceBenchmark's loader drops the last
    measured = []
    epochs = self.options.super_epoch
    for e in range(epochs):
      trial, records = loop.train_epoch(trial, epoch * 1000 + head * 100 + e + 1)
      if e in (0, epochs - 1):
        t = np.sum(np.stack([r["fused_loss"] for r in loop.step_records(records)]), 0)
        v = loop.evaluate(trial, held_out, zeroed=zeroed, limit=batches * batch)["loss"] * batches
        measured.append((t, v))
    return np.asarray(measured)  # [2 (pre, post), 2 (T, V), N]

  def recompute(self, loop, state, epoch: int):
    """New weights for every member from a trial per head (Alg. 2); the state unchanged."""
    trials = np.stack([self.trial(loop, state, k, epoch) for k in range(len(self.heads))],
                      axis=-1)  # [2, 2, N, K]
    w = blend_weights(trials[0, 0], trials[0, 1], trials[1, 0], trials[1, 1])  # [N, K]
    if self.options.weight_scale == "heads":
      w = w * len(self.heads)
    return state.replace(method_state={**state.method_state,
                                       "weights": loop.place(w.astype(np.float32))})

  def on_start(self, loop, state):
    return self.recompute(loop, state, 0)

  def on_epoch_end(self, loop, state, epoch):
    if (epoch + 1) % self.options.super_epoch == 0 and epoch + 1 < self.cfg.epochs:
      state = self.recompute(loop, state, epoch + 1)
    return state, {}
