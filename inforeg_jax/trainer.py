"""The training loop, top to bottom: mesh, input, model and optimizer, sharding, step,
eval, loop. ``train(cfg)`` writes ``metrics.jsonl`` and ``summary.json`` into the workdir.

Accuracies are fractions in [0, 1] everywhere.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import jax.experimental.multihost_utils
from sklearn.metrics import f1_score
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
from tqdm.auto import tqdm

from inforeg_jax import checkpoint
from inforeg_jax.config import Config
from inforeg_jax.data import Dataset, load_dataset, select_modalities
from inforeg_jax.data import pipeline
from inforeg_jax.model_zoo import build_model
from inforeg_jax.models import modality_labels
from inforeg_jax.regulation import inforeg_transform, resolve_labels
from inforeg_jax.train import TrainState, create_state, make_eval_step, make_train_step


def uses_unimodal_losses(cfg: Config) -> bool:
  """Starred rows of Table 3, and the released code (which always adds them)."""
  return cfg.method.endswith("_uni") or (cfg.method.startswith("inforeg")
                                          and cfg.variant == "official")


def make_optimizer(cfg: Config, labels, steps_per_epoch: int,
                   modalities) -> optax.GradientTransformationExtraArgs:
  """[regulation] -> weight decay -> SGD with momentum and StepLR, as the released code."""
  schedule = optax.piecewise_constant_schedule(
      cfg.learning_rate,
      {k * cfg.lr_step_epochs * steps_per_epoch: cfg.lr_decay
       for k in range(1, cfg.epochs // max(cfg.lr_step_epochs, 1) + 1)})
  chain = []
  if cfg.method.startswith("inforeg"):
    chain.append(inforeg_transform(labels, steps_per_epoch=steps_per_epoch, beta=cfg.beta,
                                   threshold=cfg.threshold, warmup_epochs=cfg.warmup_epochs,
                                   variant=cfg.variant, window=cfg.window,
                                   modalities=modalities))
  chain += [optax.add_decayed_weights(cfg.weight_decay), optax.sgd(schedule, cfg.momentum)]
  return optax.chain(*chain)


def _mean_records(records: list[dict]) -> dict[str, float]:
  stacked = jax.device_get(records)
  return {k: float(np.mean([r[k] for r in stacked])) for k in stacked[0]}


def evaluate(eval_step, state, arrays, batch_size, data_sharding, modalities) -> dict[str, float]:
  """Fused and per-modality accuracy, loss and macro-F1 of the fused prediction."""
  sums, preds = None, []
  for batch in pipeline.eval_batches(arrays, batch_size, jax.process_index(), jax.process_count()):
    out = eval_step(state, _to_global(batch, data_sharding))
    preds.append(out.pop("pred"))
    sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
  sums = jax.device_get(sums)
  n = sums.pop("count")
  metrics = {k: float(v / n) for k, v in sums.items()}
  pred = np.concatenate([np.asarray(jax.experimental.multihost_utils.process_allgather(p, tiled=True))
                         for p in preds])[:pipeline.num_examples(arrays)]
  metrics["f1_macro"] = float(f1_score(np.asarray(arrays["label"]), pred, average="macro"))
  return metrics


def _to_global(batch, sharding):
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
  state = jax.jit(lambda r: create_state(model, tx, example, r),
                  out_shardings=replicated)(init_rng)
  train_step = jax.jit(
      make_train_step(model, tx, resolve_labels(labels, params_shape), modalities,
                      1.0 if uses_unimodal_losses(cfg) else 0.0, dataset.preprocess),
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

  # Checkpoints: resume from the latest when asked.
  os.makedirs(cfg.workdir, exist_ok=True)
  ckpt = checkpoint.manager(cfg.workdir)
  history, first_epoch = [], 0
  if cfg.resume:
    restored = checkpoint.restore_latest(ckpt, state)
    if restored is not None:
      state, loop = restored
      history, first_epoch = loop["history"], loop["history"][-1]["epoch"] + 1

  metrics_path = os.path.join(cfg.workdir, "metrics.jsonl")
  bar = tqdm(total=cfg.epochs * steps, initial=first_epoch * steps, unit="step",
             desc=f"{cfg.dataset}/{cfg.method}", disable=not progress or jax.process_index() != 0)
  t0 = time.time()
  with open(metrics_path, "w") as log:
    for row in history:
      log.write(json.dumps(row) + "\n")
    for epoch in range(first_epoch, cfg.epochs):
      records = []
      for batch in pipeline.train_batches(train_arrays, cfg.batch_size, cfg.seed, epoch,
                                          process_index=jax.process_index(),
                                          process_count=jax.process_count()):
        state, m = train_step(state, _to_global(batch, data_sharding), step_rng)
        records.append(m)
        bar.update()
      train_m = _mean_records(records)
      test_m = evaluate(eval_step, state, dataset.test, cfg.eval_batch_size, data_sharding,
                        modalities)
      row = {"epoch": epoch, "train_loss": train_m["loss"], "train_acc": train_m["acc"],
             "test_loss": test_m.pop("loss"), **test_m}
      for m in modalities:
        row[f"train_acc_{m}"] = train_m[f"acc_{m}"]
        row[f"trace_{m}"] = train_m[f"grad_sq_{m}"]  # Tr(F_m) of this epoch, Eq. 7
        for k in ("alpha", "window"):  # epoch means of the regulation's per-step state
          if f"{k}_{m}" in train_m:
            row[f"{k}_{m}"] = train_m[f"{k}_{m}"]
      row["time_s"] = round(time.time() - t0, 2)
      history.append(row)
      log.write(json.dumps(row) + "\n")
      log.flush()
      checkpoint.save(ckpt, epoch, state, {"history": history})
      bar.set_postfix(acc=f"{row['acc']:.3f}",
                      **{m[:1]: f"{row[f'acc_{m}']:.3f}" for m in modalities})
  bar.close()

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
