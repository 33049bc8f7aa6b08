"""The jitted core: train state, one training step, one evaluation step.

``train_step(state, batch, rng) -> (state, metrics)``: one forward pass and one gradient (two
vector-Jacobian products for MMPareto), the optimizer (InfoReg or a baseline inside it) in the
same jit; metrics is a flat dict of scalars: loss, each modality's unimodal loss and
accuracy, each modality's gradient-squared norm (the batch estimate of Tr(F_m), Eq. 7) and,
where a rule is active, its coefficients and window flag. No host sync, no Python loop at run
time: the branches below are on the static method.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from inforeg_jax import balancing
from inforeg_jax.methods import Method, METHODS
from inforeg_jax.regulation import InfoRegState, grad_sq_norms, inforeg_diagnostics

Batch = dict[str, jax.Array]
Preprocess = Callable[[Batch, jax.Array, bool], Batch]


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  extra: Any = None  # method state outside the optimizer: window tracker, AGM, PMR, weights


@flax.struct.dataclass
class Rules:
  """Static settings of the balancing rules the step applies."""

  method: Method = flax.struct.field(pytree_node=False, default=METHODS["joint"])
  steps_per_epoch: int = flax.struct.field(pytree_node=False, default=1)
  window: str = flax.struct.field(pytree_node=False, default="prime")
  threshold: float = flax.struct.field(pytree_node=False, default=0.04)
  agm_alpha: float = flax.struct.field(pytree_node=False, default=1.0)
  pmr_alpha: float = flax.struct.field(pytree_node=False, default=1.0)
  num_classes: int = flax.struct.field(pytree_node=False, default=2)


def init_extra(rules: Rules, modalities: Sequence[str], feature_dims: Sequence[int]) -> dict:
  extra = {"window": balancing.window_init(len(modalities))}
  if rules.method.rule == "agm":
    extra["agm"] = jnp.zeros([len(modalities)], jnp.float32)  # running true-class scores
  if rules.method.rule == "pmr":
    extra["pmr"] = balancing.prototypes_init(rules.num_classes, feature_dims)
  if rules.method.rule == "gblending":
    extra["loss_weights"] = jnp.full([1 + len(modalities)], 1.0, jnp.float32)
  return extra


def create_state(model: nn.Module, tx: optax.GradientTransformation, example_inputs, rng,
                 rules: Rules | None = None):
  variables = model.init({"params": rng, "dropout": rng}, example_inputs, train=False)
  params = variables["params"]
  extra = None
  if rules is not None:
    out = model.apply(variables, example_inputs, train=False)
    dims = [f.shape[-1] for f in out["features"].values()]
    extra = init_extra(rules, list(out["features"]), dims)
  return TrainState(step=jnp.zeros([], jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                    extra=extra)


def cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels).mean()


def true_class_prob_sum(logits, labels):
  """OGM-GE / released-InfoReg score: batch sum of the true-class softmax probability."""
  p = jax.nn.softmax(logits.astype(jnp.float32))
  return jnp.take_along_axis(p, labels[:, None], axis=1).sum()


def accuracy(logits, labels):
  return jnp.mean(jnp.argmax(logits, -1) == labels)


def has_inforeg(opt_state) -> bool:
  return any(isinstance(s, InfoRegState) for s in
             jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, InfoRegState)))


def make_train_step(model: nn.Module, tx: optax.GradientTransformationExtraArgs,
                    flat_labels: Sequence, modalities: Sequence[str],
                    rules: Rules = Rules(), preprocess: Preprocess | None = None):
  """Builds ``train_step(state, batch, rng)``; jit it (see `trainer`). The default ``rules``
  are joint training: the fused loss alone, with whatever rule ``tx`` carries."""
  rule = rules.method.rule

  def losses_fn(params, state: TrainState, batch, rng, active):
    """(stack of [fused objective, weighted unimodal objective], aux)."""
    out, new_vars = model.apply({"params": params, "batch_stats": state.batch_stats},
                                batch["inputs"], train=True, mutable=["batch_stats"],
                                rngs={"dropout": rng})
    y = batch["label"]
    uni_logits = out["unimodal_logits"]
    uni = {m: cross_entropy(uni_logits[m], y) for m in modalities}
    logits, aux = out["logits"], {}
    if rule == "agm":
      coef = jnp.where(active, balancing.agm_coefficients(state.extra["agm"], rules.agm_alpha), 1.0)
      logits = balancing.agm_logits(balancing.agm_responses(logits, uni_logits), coef)
      aux["coef"] = coef
    fused = cross_entropy(logits, y)
    if rule == "gblending":
      w = state.extra["loss_weights"]
      multi = w[0] * fused
      unimodal = sum(w[1 + i] * uni[m] for i, m in enumerate(modalities))
    else:
      multi, unimodal = fused, rules.method.unimodal_weight * sum(uni.values())
    if rule == "pmr":
      protos = state.extra["pmr"]
      feats = [out["features"][m] for m in modalities]
      term, weights = balancing.pmr_loss(feats, protos.centroids, y, rules.pmr_alpha)
      use = active & protos.ready
      multi = multi + jnp.where(use, term, 0.0)
      aux["coef"] = jnp.where(use, weights, 0.0)
    aux.update(fused=fused, uni=uni, out=out,
               batch_stats=new_vars.get("batch_stats", state.batch_stats))
    return jnp.stack([multi, unimodal]), aux

  def train_step(state: TrainState, batch: Batch, rng: jax.Array):
    aug_rng, dropout_rng = jax.random.split(jax.random.fold_in(rng, state.step))
    if preprocess is not None:
      batch = preprocess(batch, aug_rng, True)
    tracker, in_window = balancing.window_now(state.extra["window"], rules.steps_per_epoch,
                                              rules.threshold) if state.extra else (None, False)
    active = balancing.gate(in_window, rules.window)

    f = lambda p: losses_fn(p, state, batch, dropout_rng, active)
    objectives, vjp_fn, aux = jax.vjp(f, state.params, has_aux=True)
    metrics = {}
    if rule == "mmpareto":
      g_multi, = vjp_fn(jnp.array([1.0, 0.0], objectives.dtype))
      g_uni, = vjp_fn(jnp.array([0.0, 1.0], objectives.dtype))
      combined, cos = balancing.mmpareto_combine(g_multi, g_uni, flat_labels, modalities)
      grads = jax.tree.map(lambda c, a, b: jnp.where(active, c, a + b), combined, g_multi, g_uni)
      for i, m in enumerate(modalities):
        metrics[f"cos_{m}"] = cos[i]
    else:
      grads, = vjp_fn(jnp.ones_like(objectives))

    y, out = batch["label"], aux["out"]
    scores = {m: true_class_prob_sum(out["unimodal_logits"][m], y) for m in modalities}
    updates, opt_state = tx.update(grads, state.opt_state, state.params,
                                   unimodal_losses=aux["uni"], unimodal_scores=scores,
                                   modulate=active)
    params = optax.apply_updates(state.params, updates)
    gsq = grad_sq_norms(grads, flat_labels, modalities)

    extra = state.extra
    if extra is not None:
      extra = {**extra, "window": balancing.window_add(tracker, gsq)}
      if rule == "agm":  # running mean of each response's true-class probability
        s = jnp.stack([scores[m] for m in modalities]) / y.shape[0]
        extra["agm"] = jnp.where(jnp.all(extra["agm"] == 0), s, 0.9 * extra["agm"] + 0.1 * s)
      if rule == "pmr":
        new_epoch = (state.step % rules.steps_per_epoch == 0) & (state.step > 0)
        extra["pmr"] = balancing.update_prototypes(
            extra["pmr"], [out["features"][m] for m in modalities], y, rules.num_classes,
            new_epoch)
      metrics["window"] = in_window.astype(jnp.float32)

    metrics.update(loss=jnp.sum(objectives), fused_loss=aux["fused"],
                   acc=accuracy(out["logits"], y))
    for i, m in enumerate(modalities):
      metrics[f"loss_{m}"] = aux["uni"][m]
      metrics[f"acc_{m}"] = accuracy(out["unimodal_logits"][m], y)
      metrics[f"grad_sq_{m}"] = gsq[i]
      if "coef" in aux:
        metrics[f"coef_{m}"] = aux["coef"][i]
    if has_inforeg(opt_state):
      diag = inforeg_diagnostics(opt_state, modalities)
      metrics.update({k: v for k, v in diag.items() if not k.startswith("trace_history")})
    for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(
        x, (balancing.OGMGEState, balancing.GreedyState))):
      if isinstance(s, balancing.OGMGEState):
        metrics.update({f"coef_{m}": s.coefficient[i] for i, m in enumerate(modalities)})
      elif isinstance(s, balancing.GreedyState):
        metrics.update({f"frozen_{m}": s.frozen[i].astype(jnp.float32)
                        for i, m in enumerate(modalities)})
    new_state = state.replace(step=state.step + 1, params=params,
                              batch_stats=aux["batch_stats"], opt_state=opt_state, extra=extra)
    return new_state, metrics

  return train_step


def make_eval_step(model: nn.Module, modalities: Sequence[str],
                   preprocess: Preprocess | None = None):
  """Builds ``eval_step(state, batch) -> metrics`` of per-batch *sums* over the examples
  that ``batch['mask']`` keeps (correct counts, summed losses, count), and the predictions."""

  def eval_step(state: TrainState, batch: Batch):
    if preprocess is not None:
      batch = preprocess(batch, jax.random.key(0), False)
    out = model.apply({"params": state.params, "batch_stats": state.batch_stats},
                      batch["inputs"], train=False)
    y, mask = batch["label"], batch["mask"]
    correct = lambda logits: jnp.sum((jnp.argmax(logits, -1) == y) * mask)
    ce = lambda logits: jnp.sum(optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), y) * mask)
    metrics = {"count": jnp.sum(mask), "loss": ce(out["logits"]),
               "acc": correct(out["logits"]), "pred": jnp.argmax(out["logits"], -1)}
    for m in modalities:
      metrics[f"acc_{m}"] = correct(out["unimodal_logits"][m])
      metrics[f"loss_{m}"] = ce(out["unimodal_logits"][m])
    return metrics

  return eval_step
