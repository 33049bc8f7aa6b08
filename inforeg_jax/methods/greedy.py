"""Greedy (Wu et al., ICML 2022): balanced multi-modal learning with MMTM mid-level fusion and
re-balancing steps chosen by the conditional learning speed, as the official code runs it
(nyukat/greedy_multimodal_learning @ a190e03: src/balanced_mmtm.py, src/model.py,
src/callbacks.py, src/framework.py).

Model (model.py:15-108): the two encoders run stage by stage in lockstep, with an MMTM after
every stage but the first (ResNet-18: after layer2-4; our small CNN: after layers 1 and 2);
each branch has its own linear head; the prediction is the mean of the two logits and the loss
the sum of the two CEs.

MMTM (balanced_mmtm.py:16-154): ``z_m`` = each stream's spatial mean (frames: over time and
space), ``e = relu(fc_squeeze(concat(z_0, z_1)))``, ``s_m = sigmoid(fc_m(e))`` (no factor 2),
``Y_m = X_m * s_m``. A cumulative mean ``ravg_m`` of the batch-mean scale is kept; in a
re-balancing (curation) step the caring modality's scale is replaced by ``ravg`` (detached), so
its ``fc_m`` gets no gradient and the other stream's information stops flowing into it.

Conditional learning speed (callbacks.py:199-233), after backward and before the optimizer:
``M_bypass_m += sum ||g||^2 / sum ||w||^2`` over the MMTMs' ``fc_m`` and the shared
``fc_squeeze``, ``M_main_m`` likewise over encoder m and its head, cumulative over training;
``BDR_m = log10(M_bypass_m / M_main_m)``, ``d = BDR_0 - BDR_1``. Phases (callbacks.py:240-263):
after the warm-up epoch (``start_epoch``, 0-based 1), a step that is not in a phase adds to M and,
if ``|d| > threshold``, starts a phase of ``phase_steps`` curation steps caring for modality 0
if d > 0 else 1; phase steps add nothing to M. Nothing is frozen; every parameter learns.

Named differences: the running averages are kept per modality from each modality's own scale
with ``official_running_average=False``; by default (True) both come from modality 0's scale,
as the official code (balanced_mmtm.py:114); they are updated by training steps only, and
evaluation runs with curation off (the official code updates them in evaluation too and
evaluates with the last training step's flags). Two modalities, conv encoders only.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from inforeg_jax import model_zoo
from inforeg_jax.methods.base import Method, Objective
from inforeg_jax.models import dense_init


class MMTM(nn.Module):
  """Multimodal transfer module; ``dims`` the channel counts of the two streams, names the
  modalities (the excitation layers are ``fc_<name>``)."""

  names: Sequence[str]
  dims: Sequence[int]
  ratio: int = 4

  @nn.compact
  def __call__(self, squeezed: Sequence[jax.Array], running: jax.Array, count, curation,
               caring, official_running_average: bool = True):
    """(scales per stream [B, C_m], new running averages f32[2, C]) from the squeezed maps
    ``[B, C_m]``; ``running`` holds the running averages before this call, ``count`` how
    many calls they average."""
    dim_out = int(2 * sum(self.dims) / self.ratio)
    e = nn.relu(nn.Dense(dim_out, name="fc_squeeze")(jnp.concatenate(squeezed, axis=-1)))
    scales = [nn.sigmoid(nn.Dense(c, name=f"fc_{n}")(e)) for n, c in zip(self.names, self.dims)]
    means = [jax.lax.stop_gradient(jnp.mean(s, axis=0)) for s in scales]
    if official_running_average:
      means = [means[0], means[0]]
    new_running = (jnp.stack(means) + running * count) / (count + 1)
    out = [jnp.where(curation & (caring == i), new_running[i][None], s)
           for i, s in enumerate(scales)]
    return out, new_running


def _squeeze(x, frames: int):
  """[B*T, H, W, C] -> [B, C]: the mean over time and space of each sample."""
  return jnp.mean(x.reshape((-1, frames) + x.shape[1:]).astype(jnp.float32), axis=(1, 2, 3))


def _excite(x, scale, frames: int):
  b = scale.shape[0]
  y = x.reshape((b, frames) + x.shape[1:]) * scale[:, None, None, None, :].astype(x.dtype)
  return y.reshape(x.shape)


class GreedyNet(nn.Module):
  """Two conv trunks in lockstep with MMTMs between stages, a linear head per branch.

  In evaluation mode each modality's ``unimodal_logits`` are a probe comparable with the
  other methods' unimodal outputs: its branch head after a pass in which the MMTMs see the
  other modality's squeezed features replaced by their batch mean (held constant), so that
  no per-sample information crosses over (the official code's evaluation of one modality,
  balanced_mmtm.py:75-85, uses the other stream's training-set mean). The branch heads
  themselves read features gated by the other modality: not unimodal, never reported as such.
  """

  trunks: dict[str, Any]  # modality -> trunk module factory (ResNet18 / SmallCNN partial)
  kinds: dict[str, str]  # modality -> spectrogram | frames
  num_classes: int
  official_running_average: bool = True

  @nn.compact
  def __call__(self, inputs, train: bool = False, running=None, count=0.0, curation=False,
               caring=0):
    names = list(self.trunks)
    trunks = {m: self.trunks[m](name=m) for m in names}
    first = trunks[names[0]]
    num_stages = first.num_stages
    stage_dims = [first.width * 2**i if hasattr(first, "width") else first.widths[i]
                  for i in range(num_stages)]
    mmtms = {i: MMTM(names, [stage_dims[i]] * 2, name=f"mmtm{i}")
             for i in range(1, num_stages)}
    heads = BranchHeads(names, self.num_classes, name="head")

    def lockstep(probe: int | None = None):
      x, frames = {}, {}
      for m in names:  # fold frames into the batch; a spectrogram gets a channel axis
        v = inputs[m]
        if self.kinds[m] == "frames":
          frames[m] = v.shape[1]
          x[m] = v.reshape((-1,) + v.shape[2:])
        else:
          frames[m] = 1
          x[m] = v[..., None]
      new_running = []
      for i in range(num_stages):
        for m in names:
          x[m] = trunks[m](x[m], train, stages=[i])
        if i == 0:
          continue
        k = len(new_running)
        run = jnp.zeros([2, stage_dims[i]], jnp.float32) if running is None else running[k]
        squeezed = [_squeeze(x[m], frames[m]) for m in names]
        if probe is not None:  # the other stream's squeeze replaced by its batch mean
          other = 1 - probe
          mean = jax.lax.stop_gradient(jnp.mean(squeezed[other], 0, keepdims=True))
          squeezed[other] = jnp.broadcast_to(mean, squeezed[other].shape)
        scales, r = mmtms[i](squeezed, run, count, curation, caring,
                             self.official_running_average)
        new_running.append(r)
        for m, s in zip(names, scales):
          x[m] = _excite(x[m], s, frames[m])
      feats = {m: _squeeze(x[m], frames[m]) for m in names}
      return heads(feats), feats, tuple(new_running)

    branches, feats, new_running = lockstep()
    out = {"logits": sum(branches.values()) / len(names), "unimodal_logits": branches,
           "features": feats, "mmtm_running": new_running}
    if not train:
      out["unimodal_logits"] = {m: lockstep(probe=k)[0][m] for k, m in enumerate(names)}
    return out


class BranchHeads(nn.Module):
  """A linear head per branch, ``fc_<modality>`` (model.py:53-56)."""

  names: Sequence[str]
  num_classes: int

  @nn.compact
  def __call__(self, feats):
    return {m: nn.Dense(self.num_classes, kernel_init=dense_init, name=f"fc_{m}")(feats[m])
            for m in self.names}


def _group_norms(tree) -> jax.Array:
  return sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree))


def learning_speeds(grads, params, modalities) -> jax.Array:
  """f32[2, 2]: [bypass_m, main_m] ratios ``sum ||g||^2 / sum ||w||^2`` of this step, rows
  per modality; bypass = every MMTM's fc_m and the shared fc_squeeze, main = encoder m and
  its head (callbacks.py:199-233)."""
  mmtms = [k for k in params if k.startswith("mmtm")]
  rows = []
  for m in modalities:
    pick = lambda t: ([t[k][f"fc_{m}"] for k in mmtms] + [t[k]["fc_squeeze"] for k in mmtms])
    main = lambda t: [t[m], t["head"][f"fc_{m}"]]
    rows.append(jnp.stack([_group_norms(pick(grads)) / _group_norms(pick(params)),
                           _group_norms(main(grads)) / _group_norms(main(params))]))
  return jnp.stack(rows)


def bdr(cumulative: jax.Array) -> jax.Array:
  """f32[2]: BDR_m = log10(M_bypass_m / M_main_m)."""
  return jnp.log10(cumulative[:, 0] / cumulative[:, 1])


def next_phase(phase: dict, speeds: jax.Array, unlocked, threshold, window) -> dict:
  """One step of the phase machine (callbacks.py:240-263), after this step's backward.
  ``phase``: cumulative f32[2, 2], curation bool, caring int32, curation_step int32."""
  curating = phase["curation"] & unlocked
  cumulative = jnp.where(curating, phase["cumulative"], phase["cumulative"] + speeds)
  d = bdr(cumulative)[0] - bdr(cumulative)[1]
  start = unlocked & ~curating & (jnp.abs(d) > threshold)
  step = jnp.where(curating, phase["curation_step"] + 1, 0)
  still = curating & (step < window)
  return {"cumulative": cumulative, "curation": start | still,
          "caring": jnp.where(start, jnp.where(d > 0, 0, 1), phase["caring"] * curating),
          "curation_step": step.astype(jnp.int32), "d": d}


class Greedy(Method):

  def __init__(self, cfg, setup):
    super().__init__(cfg, setup)
    if len(self.modalities) != 2:
      raise ValueError("--method=greedy (MMTM fusion) is defined for two modalities")
    if cfg.encoder not in ("small_cnn", "resnet18") or cfg.fusion != "concat":
      raise ValueError("--method=greedy needs --encoder=small_cnn or resnet18 and its own "
                       "MMTM fusion (leave --fusion=concat)")

  def build_model(self, dataset):
    trunk = model_zoo.trunk(self.cfg)
    return GreedyNet({m: trunk for m in self.modalities}, dict(dataset.kinds),
                     dataset.num_classes, self.options.official_running_average)

  def init_state(self, params, outputs):
    return {"running": tuple(jnp.zeros_like(r) for r in outputs["mmtm_running"]),
            "count": jnp.zeros([], jnp.float32),
            "phase": {"cumulative": jnp.zeros([2, 2], jnp.float32),
                      "curation": jnp.asarray(False), "caring": jnp.zeros([], jnp.int32),
                      "curation_step": jnp.zeros([], jnp.int32), "d": jnp.zeros([], jnp.float32)}}

  def objective(self, fwd, params, method_state, batch, ctx):
    phase = method_state["phase"]
    out, batch_stats = fwd(params, batch["inputs"], running=method_state["running"],
                           count=method_state["count"], curation=phase["curation"],
                           caring=phase["caring"])
    fused, branch = self.losses(out, batch["label"])
    metrics = {"curation": phase["curation"].astype(jnp.float32),
               **{f"caring_{m}": (phase["curation"] & (phase["caring"] == i))
                  .astype(jnp.float32) for i, m in enumerate(self.modalities)}}
    # the objective is the branches' summed CE; the branch heads read features gated by the
    # other modality, so they are not logged as unimodal accuracies (unimodal_logits=None)
    return Objective((branch[self.modalities[0]] + branch[self.modalities[1]])[None], out,
                     batch_stats, fused, branch, None, metrics,
                     carry=jax.lax.stop_gradient(params))

  def after_step(self, method_state, objective, grads, ctx):
    o = self.options
    speeds = learning_speeds(grads, objective.carry, self.modalities)
    unlocked = (ctx.epoch >= o.start_epoch) & ctx.active
    phase = next_phase(method_state["phase"], speeds, unlocked, ctx.hyper.method.threshold,
                       o.phase_steps)
    return {"running": objective.outputs["mmtm_running"], "count": method_state["count"] + 1,
            "phase": phase}

  def step_metrics(self, opt_state, method_state):
    return {"bdr_gap": method_state["phase"]["d"]}
