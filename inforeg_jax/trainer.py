"""The training loop, top to bottom: mesh, input, model and optimizer, sharding, step,
eval, loop. ``train(cfg)`` writes ``metrics.jsonl``, ``summary.json``, plots, TensorBoard
events and checkpoints into the workdir.

Accuracies are fractions in [0, 1] everywhere.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable

import jax
import jax.experimental.multihost_utils
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
from sklearn.metrics import f1_score
from tqdm.auto import tqdm

from inforeg_jax import balancing, checkpoint
from inforeg_jax.config import Config
from inforeg_jax.data import Dataset, load_dataset, pipeline, select_modalities
from inforeg_jax.methods import METHODS
from inforeg_jax.model_zoo import build_model
from inforeg_jax.models import modality_labels
from inforeg_jax.regulation import inforeg_transform, resolve_labels
from inforeg_jax.reporting import Reporter
from inforeg_jax.train import (Rules, TrainState, create_state, make_eval_step,
                               make_train_step)


def make_rules(cfg: Config, steps_per_epoch: int, num_classes: int) -> Rules:
  method = METHODS[cfg.method]
  if method.rule == "inforeg" and cfg.variant == "official":  # the released code adds them
    method = dataclasses.replace(method, unimodal_weight=1.0)
  return Rules(method=method, steps_per_epoch=steps_per_epoch, window=cfg.window,
               threshold=cfg.threshold, agm_alpha=cfg.agm_alpha, pmr_alpha=cfg.pmr_alpha,
               num_classes=num_classes)


def make_optimizer(cfg: Config, labels, steps_per_epoch: int,
                   modalities) -> optax.GradientTransformationExtraArgs:
  """[balancing rule] -> weight decay -> SGD with momentum and StepLR, as the released code."""
  schedule = optax.piecewise_constant_schedule(
      cfg.learning_rate,
      {k * cfg.lr_step_epochs * steps_per_epoch: cfg.lr_decay
       for k in range(1, cfg.epochs // max(cfg.lr_step_epochs, 1) + 1)})
  rule = METHODS[cfg.method].rule
  chain = []
  if rule == "inforeg":
    # --variant=official takes the released code's K and warm-up unless the flags were changed
    paper = Config()
    official = cfg.variant == "official"
    threshold = None if official and cfg.threshold == paper.threshold else cfg.threshold
    warmup = None if official and cfg.warmup_epochs == paper.warmup_epochs else cfg.warmup_epochs
    chain.append(inforeg_transform(labels, steps_per_epoch=steps_per_epoch, beta=cfg.beta,
                                   threshold=threshold, warmup_epochs=warmup,
                                   variant=cfg.variant, window=cfg.window,
                                   modalities=modalities))
  elif rule == "ogm_ge":
    chain.append(balancing.ogm_ge_transform(labels, steps_per_epoch, alpha=cfg.ogm_alpha,
                                            noise=cfg.ogm_noise, start_epoch=cfg.ogm_start,
                                            end_epoch=cfg.ogm_end, seed=cfg.seed,
                                            modalities=modalities))
  elif rule == "greedy":
    chain.append(balancing.greedy_transform(labels, threshold=cfg.greedy_threshold,
                                            modalities=modalities))
  chain += [optax.add_decayed_weights(cfg.weight_decay), optax.sgd(schedule, cfg.momentum)]
  return optax.chain(*chain)


def _epoch_metrics(records: list[dict]) -> tuple[dict[str, float], dict[str, list[float]]]:
  """One host transfer per epoch: the means of the step metrics, and the per-step series
  of the rule's coefficients (alpha_<m>, coef_<m>) for the plots."""
  stacked = jax.device_get(records)
  means = {k: float(np.mean([r[k] for r in stacked])) for k in stacked[0]}
  series = {k: [float(r[k]) for r in stacked] for k in stacked[0]
            if k.startswith(("alpha_", "coef_"))}
  return means, series


def split_holdout(arrays, fraction: float, seed: int):
  """(train, holdout): a seeded ``fraction`` of the examples held out (G-Blending)."""
  n = pipeline.num_examples(arrays)
  perm = np.random.default_rng([seed, 7]).permutation(n)
  cut = max(1, int(round(n * fraction)))
  hold, keep = np.sort(perm[:cut]), np.sort(perm[cut:])
  return ({k: np.asarray(v[keep]) for k, v in arrays.items()},
          {k: np.asarray(v[hold]) for k, v in arrays.items()})


def gblending_losses(run_eval, state, train_arrays, holdout, modalities) -> dict:
  """Per-head losses [fused, modality...] on a training subset the size of the holdout
  and on the holdout."""
  n = pipeline.num_examples(holdout)
  sub = {k: v[:n] for k, v in train_arrays.items()}
  heads = lambda r: [r["loss"]] + [r[f"test_loss_{m}"] for m in modalities]
  return {"train": heads(run_eval(state, sub)), "holdout": heads(run_eval(state, holdout))}


def reweight_gblending(run_eval, state, train_arrays, holdout, modalities, last, mesh):
  """New G-Blending loss weights from the losses now and at the last super-epoch."""
  now = gblending_losses(run_eval, state, train_arrays, holdout, modalities)
  weights = balancing.gblending_weights(now["train"], now["holdout"], last["train"],
                                        last["holdout"])
  # scaled so that the weights sum to 1 + M, the scale of joint training with unimodal losses
  scaled = jnp.asarray(weights * len(weights), jnp.float32)
  extra = {**state.extra, "loss_weights": jax.device_put(scaled, NamedSharding(mesh, P()))}
  return state.replace(extra=extra), now, [float(w) for w in weights]


def evaluate(eval_step, state, arrays, batch_size, data_sharding, modalities) -> dict[str, float]:
  """Fused and per-modality accuracy, loss and macro-F1 of the fused prediction."""
  sums, preds = None, []
  for batch in pipeline.eval_batches(arrays, batch_size, jax.process_index(), jax.process_count()):
    out = eval_step(state, to_global(batch, data_sharding))
    preds.append(out.pop("pred"))
    sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
  sums = jax.device_get(sums)
  n = sums.pop("count")
  metrics = {k: float(v / n) for k, v in sums.items()}
  for m in modalities:  # test losses of each head
    metrics[f"test_loss_{m}"] = metrics.pop(f"loss_{m}")
  pred = np.concatenate([np.asarray(jax.experimental.multihost_utils.process_allgather(p, tiled=True))
                         for p in preds])[:pipeline.num_examples(arrays)]
  metrics["f1_macro"] = float(f1_score(np.asarray(arrays["label"]), pred, average="macro"))
  return metrics


def to_global(batch, sharding):
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


@dataclasses.dataclass
class Program:
  """What a run executes: the model, its optimizer, the sharded state and the jitted steps."""

  model: Any
  tx: optax.GradientTransformationExtraArgs
  state: TrainState
  train_step: Callable  # (state, batch, rng) -> (state, metrics); the state is donated
  eval_step: Callable  # (state, batch) -> metric sums


def build_program(cfg: Config, dataset: Dataset, steps_per_epoch: int, mesh) -> Program:
  """Model and optimizer from ``cfg``, the state replicated over ``mesh``, the steps jitted
  with the batch sharded along its "data" axis."""
  replicated, data_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  modalities = dataset.modalities
  model = build_model(cfg, dataset)
  example = {m: jnp.zeros((2,) + v.shape[1:], v.dtype) for m, v in dataset.train.items()
             if m != "label"}
  if dataset.preprocess is not None:
    example = dataset.preprocess({"inputs": example}, jax.random.key(0), False)["inputs"]
  init_rng = jax.random.key(cfg.seed)
  params_shape = jax.eval_shape(lambda: model.init({"params": init_rng, "dropout": init_rng},
                                                   example, train=False))["params"]
  labels = modality_labels(params_shape, modalities)
  tx = make_optimizer(cfg, labels, steps_per_epoch, modalities)
  rules = make_rules(cfg, steps_per_epoch, dataset.num_classes)
  state = jax.jit(lambda r: create_state(model, tx, example, r, rules),
                  out_shardings=replicated)(init_rng)
  train_step = jax.jit(
      make_train_step(model, tx, resolve_labels(labels, params_shape), modalities, rules,
                      dataset.preprocess),
      in_shardings=(replicated, data_sharding, replicated),
      out_shardings=(replicated, replicated), donate_argnums=0)
  eval_step = jax.jit(make_eval_step(model, modalities, dataset.preprocess),
                      in_shardings=(replicated, data_sharding))
  return Program(model, tx, state, train_step, eval_step)


def make_mesh():
  """Data parallelism over every device of every process."""
  return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))


def train(cfg: Config, dataset: Dataset | None = None, progress: bool = True) -> dict:
  """Trains ``cfg``; returns the summary it also writes to ``<workdir>/summary.json``."""
  mesh = make_mesh()
  data_sharding = NamedSharding(mesh, P("data"))
  if cfg.batch_size % jax.device_count() or cfg.eval_batch_size % jax.device_count():
    raise ValueError(f"--batch_size and --eval_batch_size must be multiples of the "
                     f"{jax.device_count()} devices")

  # Input.
  dataset = dataset or load_dataset(cfg.dataset, cfg.data_dir, cfg.seed)
  if cfg.modalities:
    dataset = select_modalities(dataset, cfg.modalities.split(","))
  train_arrays = dataset.train
  if cfg.limit_train:
    train_arrays = {k: v[:cfg.limit_train] for k, v in train_arrays.items()}
  steps = pipeline.steps_per_epoch(train_arrays, cfg.batch_size)
  modalities = dataset.modalities

  # Model, optimizer, sharded state, jitted steps.
  program = build_program(cfg, dataset, steps, mesh)
  state, train_step, eval_step = program.state, program.train_step, program.eval_step
  step_rng = jax.random.fold_in(jax.random.key(cfg.seed), 1)

  # G-Blending measures its heads on a held-out part of the training set.
  holdout = None
  if METHODS[cfg.method].rule == "gblending":
    train_arrays, holdout = split_holdout(train_arrays, cfg.gb_holdout, cfg.seed)
    steps = pipeline.steps_per_epoch(train_arrays, cfg.batch_size)

  # Model, optimizer, sharded state, jitted steps.
  program = build_program(cfg, dataset, steps, mesh)
  state, train_step, eval_step = program.state, program.train_step, program.eval_step
  step_rng = jax.random.fold_in(jax.random.key(cfg.seed), 1)
  run_eval = lambda st, arrays: evaluate(eval_step, st, arrays, cfg.eval_batch_size,
                                         data_sharding, modalities)

  # Checkpoints: resume from the latest when asked.
  os.makedirs(cfg.workdir, exist_ok=True)
  ckpt = checkpoint.manager(cfg.workdir)
  loop = {"history": [], "series": {}}
  if cfg.resume:
    restored = checkpoint.restore_latest(ckpt, state)
    if restored is not None:
      state, loop = restored
  history = list(loop["history"])
  first_epoch = history[-1]["epoch"] + 1 if history else 0
  reporter = Reporter(cfg.workdir, modalities, history, loop.get("series"))
  if holdout is not None and "gb_last" not in loop:
    loop["gb_last"] = gblending_losses(run_eval, state, train_arrays, holdout, modalities)

  bar = tqdm(total=cfg.epochs * steps, initial=first_epoch * steps, unit="step",
             desc=f"{cfg.dataset}/{cfg.method}", disable=not progress or jax.process_index() != 0)
  t0 = time.time()
  for epoch in range(first_epoch, cfg.epochs):
    records = []
    for batch in pipeline.train_batches(train_arrays, cfg.batch_size, cfg.seed, epoch,
                                        process_index=jax.process_index(),
                                        process_count=jax.process_count()):
      state, m = train_step(state, to_global(batch, data_sharding), step_rng)
      records.append(m)
      bar.update()
    train_m, series = _epoch_metrics(records)
    test_m = run_eval(state, dataset.test)
    row = {"epoch": epoch, "train_loss": train_m["loss"], "train_acc": train_m["acc"],
           "test_loss": test_m.pop("loss"), **test_m}
    for m in modalities:
      row[f"train_acc_{m}"] = train_m[f"acc_{m}"]
      row[f"trace_{m}"] = train_m[f"grad_sq_{m}"]  # Tr(F_m) of this epoch, Eq. 7
    # epoch means of the rule's per-step state: alpha/window (InfoReg), coef, frozen, cos
    row.update({k: v for k, v in train_m.items()
                if k == "window" or k.startswith(("alpha_", "window_", "coef_", "frozen_",
                                                   "cos_"))})
    if holdout is not None and (epoch + 1) % cfg.gb_every == 0:
      state, loop["gb_last"], weights = reweight_gblending(
          run_eval, state, train_arrays, holdout, modalities, loop["gb_last"], mesh)
      row.update({f"gb_weight_{k}": w for k, w in zip(["fused", *modalities], weights)})
    row["time_s"] = round(time.time() - t0, 2)
    reporter.epoch(row, series)
    loop["series"] = reporter.series
    loop["history"] = history
    checkpoint.save(ckpt, epoch, state, loop)
    bar.set_postfix(acc=f"{row['acc']:.3f}",
                    **{m[:1]: f"{row[f'acc_{m}']:.3f}" for m in modalities})
  bar.close()
  reporter.close()

  best = max(history, key=lambda r: r["acc"])
  summary = {
      "dataset": cfg.dataset, "method": cfg.method, "seed": cfg.seed, "epochs": cfg.epochs,
      "num_devices": jax.device_count(), "num_processes": jax.process_count(),
      "accuracy_unit": "fraction",
      "final": {k: v for k, v in history[-1].items()
                if k in ("acc", "f1_macro") or k.startswith("acc_")},
      "best": {"acc": best["acc"], "epoch": best["epoch"]},
      "train_seconds": round(time.time() - t0, 2),
      "config": dataclasses.asdict(cfg),
  }
  if jax.process_index() == 0:
    with open(os.path.join(cfg.workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
  return summary
