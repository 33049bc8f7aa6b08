"""python -m experiments.bench --mode=step|input [--dataset=cremad] [--name=value ...]

``--mode=step``: times the jitted joint and InfoReg training steps at the paper's CREMA-D
shapes (batch 64, two ResNet-18, 3 frames of uint8 frames cropped on the device to 224 x 224,
audio 257 x 188) in fp32 and bf16 compute, and prints samples/s and model FLOP utilisation
(FLOPs from XLA's cost analysis of the compiled step, over the device's peak). With
``--dataset=synthetic`` or ``--data_dir`` it times the dataset's own preset on its first
batch instead (``--width``/``--stem_stride`` override the preset's encoder).
``--mode=input``: times the grain input pipeline over prepared records (real ones with
``--data_dir``, else records of the real shapes written to a temporary folder), samples/s,
against the per-example grain recipe (read, shuffle, stack) on the same records.
``--tiny`` shrinks everything for a CPU smoke run. ``--out=FILE`` also writes the JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time

import jax
import numpy as np

from experiments import cli
from inforeg_jax.config import make_config
from inforeg_jax.datasets import names as dataset_names
from inforeg_jax.methods import names as method_names

from inforeg_jax.data import Dataset, load_dataset
from inforeg_jax.data.augment import frames_preprocess
from inforeg_jax.program import build_program, to_global
from jax.sharding import NamedSharding, PartitionSpec as P


def train_extra():
  """The trainer (whole runs: orbax, tqdm, matplotlib, ...), or one line naming the [train]
  extra: the step bench needs the core install only (a bare GPU image has no grain)."""
  try:
    import grain  # noqa: F401

    from inforeg_jax.trainer import train
  except ModuleNotFoundError as e:
    if (e.name or "").split(".")[0] in ("inforeg_jax", "experiments"):
      raise
    raise SystemExit("error: experiments.bench needs the [train] extra: "
                     "pip install -e '.[train]'") from None
  return train

DTYPES = ("float32", "bfloat16")

# Dense bf16 peak per device, TFLOP/s (vendor datasheets, SXM parts).
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}

SHAPES = {  # dataset: (audio F x T, frames, stored frame size, crop, classes)
    "cremad": ((257, 188), 3, 256, 224, 6),
    "kinetics_sounds": ((128, 1024), 3, 256, 224, 31),
}


def fake_dataset(dataset: str, n: int, tiny: bool, rng) -> Dataset:
  (f, t), frames, stored, crop, classes = SHAPES[dataset]
  if tiny:
    (f, t), stored, crop = (33, 24), 40, 32
  arrays = {"audio": rng.normal(size=(n, f, t)).astype(np.float32),
            "visual": rng.integers(0, 256, size=(n, frames, stored, stored, 3), dtype=np.uint8),
            "label": rng.integers(0, classes, n).astype(np.int32)}
  return Dataset(dataset, arrays, arrays, classes, {"audio": "spectrogram", "visual": "frames"},
                 frames_preprocess("visual", crop))


def peak_flops() -> float | None:
  kind = jax.devices()[0].device_kind
  for name, tflops in PEAK_TFLOPS.items():
    if name in kind:
      return tflops * 1e12 * jax.device_count()
  return None


def bench_dataset(args, examples: int):
  """The dataset a step or population bench runs on: fake records of the paper's shapes
  (CREMA-D, Kinetics-Sounds), else the dataset's own first ``examples`` training examples."""
  if args.dataset in SHAPES and not args.data_dir:
    return fake_dataset(args.dataset, examples, args.tiny, np.random.default_rng(0))
  ds = load_dataset(args.dataset, args.data_dir)
  first = {k: np.asarray(v[:examples]) for k, v in ds.train.items()}
  return dataclasses.replace(ds, train=first, test=first, val=None)


def member_configs(args, method: str, members: int, **overrides):
  """``members`` configs of ``method`` that differ in their seed (the bench's population)."""
  encoder = {k: v for k, v in (("width", args.width), ("stem_stride", args.stem_stride),
                               ("steps_per_call", getattr(args, "steps_per_call", 0))) if v}
  own = {"inforeg.warmup_epochs": 0} if method.startswith("inforeg") else {}
  return [make_config(args.dataset, tiny=args.tiny, method=method, window="whole", seed=s,
                      **encoder, **own, **overrides) for s in range(members)]


def step_inputs(program):
  """(state, hyper) as ``program``'s compiled step takes them: the stacked population's when
  vectorised, else member 0's."""
  if program.vectorised:
    return program.state, program.place(program.hyper)
  return program.unstack(program.state)[0], program.member_hypers()[0]


def time_steps(program, batch, warmup: int, steps: int):
  """(seconds a step, the last step's metrics) of ``program``'s train step on ``batch``."""
  step = program._train_step
  state, hp = step_inputs(program)
  for _ in range(warmup):
    state, m = step(state, batch, hp)
  jax.block_until_ready(state)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, m = step(state, batch, hp)
  jax.block_until_ready(state)
  return (time.perf_counter() - t0) / steps, m


def population_batch(program, ds, members: int):
  """The first batch as the program reads it: every member's, [members, B, ...], when
  vectorised, else one member's."""
  one = {"inputs": {k: v for k, v in ds.train.items() if k != "label"},
         "label": ds.train["label"]}
  if not program.vectorised:
    return to_global(one, NamedSharding(program.mesh, P("data")))
  stacked = jax.tree.map(lambda x: np.stack([x] * members), one)
  return to_global(stacked, NamedSharding(program.mesh, P("pop", "data")))


def bench_step(args) -> list[dict]:
  batch_size = args.batch_size or (8 if args.tiny else 64)
  ds = bench_dataset(args, batch_size)
  rows = []
  for dtype in args.dtypes.split(","):
    for method in args.methods.split(","):
      [cfg] = member_configs(args, method, 1, compute_dtype=dtype, batch_size=batch_size)
      program = build_program(cfg, ds, steps_per_epoch=1000)
      batch = population_batch(program, ds, 1)
      cost = program._train_step.lower(*step_inputs(program)[:1], batch,
                                       step_inputs(program)[1]).compile().cost_analysis()
      cost = cost[0] if isinstance(cost, (list, tuple)) else cost
      flops = float(cost.get("flops", 0.0)) if cost else 0.0
      dt, m = time_steps(program, batch, args.warmup, args.steps)
      peak = peak_flops()
      regulated = float(np.sum(m.get("alpha_audio", 0)) + np.sum(m.get("alpha_visual", 0)))
      rows.append({"dataset": args.dataset, "method": method, "compute_dtype": dtype,
                   "batch_size": batch_size, "width": cfg.width, "stem_stride": cfg.stem_stride,
                   "step_ms": round(dt * 1e3, 3), "samples_per_s": round(batch_size / dt, 1),
                   "step_gflop": round(flops / 1e9, 2),
                   "mfu": round(flops / dt / peak, 4) if peak and flops else None,
                   "regulated": regulated > 0})
      print(json.dumps(rows[-1]), flush=True)
  return rows


def bench_population(args) -> list[dict]:
  """Training samples/s of N members in one program against N single runs one after another
  (the same compiled single-run program, in this process), for each N of --members; with
  --run_epochs, also whole runs (`trainer.train`: evaluation, checkpoints, outputs) of the N
  members against N single runs in turn. And the peer, a PyTorch eager loop of the same
  AV-MNIST preset model, when torch is installed."""
  train = train_extra()
  batch_size = args.batch_size or (8 if args.tiny else 64)
  ds = bench_dataset(args, batch_size)
  rows = []
  for method in args.methods.split(","):
    [single_cfg] = member_configs(args, method, 1, batch_size=batch_size)
    single = build_program(single_cfg, ds, steps_per_epoch=1000, execution="sequential")
    single_dt, _ = time_steps(single, population_batch(single, ds, 1), args.warmup, args.steps)
    for n in [int(x) for x in args.members.split(",")]:
      cfgs = member_configs(args, method, n, batch_size=batch_size)
      program = build_program(cfgs, ds, steps_per_epoch=1000, execution="vectorised")
      dt, _ = time_steps(program, population_batch(program, ds, n), args.warmup, args.steps)
      row = {"dataset": args.dataset, "method": method, "members": n,
             "batch_size": batch_size, "width": cfgs[0].width,
             "population_step_ms": round(dt * 1e3, 2),
             "population_samples_per_s": round(n * batch_size / dt, 1),
             "sequential_samples_per_s": round(batch_size / single_dt, 1),
             "step_speedup": round(n * single_dt / dt, 2)}
      if args.run_epochs:
        row.update(bench_runs(args, method, n, batch_size, train))
      rows.append(row)
      print(json.dumps(row), flush=True)
  if args.torch_peer:
    rows.append(torch_peer(args, ds, batch_size))
    print(json.dumps(rows[-1]), flush=True)
  return rows


def time_call(fn, args, repeats: int) -> float:
  """Seconds of one call of a compiled ``fn`` (after warm-up), in a tight loop."""
  for _ in range(2):
    jax.block_until_ready(fn(*args))
  t0 = time.perf_counter()
  for _ in range(repeats):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - t0) / repeats


def bench_wall(args) -> list[dict]:
  """Where a run's wall clock goes, against what its compiled programs cost: for each N of
  --members, one population of N seeds trained by `trainer.train` (--run_epochs, default
  the preset's epochs; its summary's session gives the split: start-up, training steps, the
  method's end-of-epoch work, evaluation, writing), beside the run's own compiled calls (a
  chunk of training steps, the evaluation of the test split) timed in a tight loop on the
  same data, times the calls the run makes."""
  from experiments.run import enable_compilation_cache
  from inforeg_jax.loop import Loop
  train = train_extra()
  enable_compilation_cache()  # as experiments.run: a program compiled once is loaded after
  full = load_dataset(args.dataset, args.data_dir)
  rows = []
  for method in args.methods.split(","):
    [cfg] = member_configs(args, method, 1, execution="sequential")
    steps = len(full.train["label"]) // cfg.batch_size
    program = build_program(cfg, full, steps_per_epoch=steps)
    loop = Loop(cfg, full, program)
    k = loop.steps_per_call()
    state, hyper = program.unstack(program.state)[0], program.member_hypers()[0]
    chunk = next(iter(loop.train_chunks(0)))[0]
    carry = [state]  # the chunk program donates its state: each call takes the last's

    def chunk_call():
      carry[0], metrics = program._train_chunk(carry[0], chunk, hyper)
      return metrics
    step_s = time_call(chunk_call, (), args.steps) / k
    from inforeg_jax.data import pipeline
    from inforeg_jax.loop import stack_np
    test = list(pipeline.eval_batches(full.test, cfg.eval_batch_size))
    test = to_global(stack_np(test), NamedSharding(program.mesh, P(None, "data")))
    eval_s = time_call(program._eval_chunk, (carry[0], test), args.steps) / len(test["label"])
    eval_batches = sum(-(-len(s["label"]) // cfg.eval_batch_size)
                       for s in (full.val, full.test) if s is not None)
    for n in [int(x) for x in args.members.split(",")]:
      tmp = tempfile.mkdtemp()
      epochs = args.run_epochs or cfg.epochs
      members = member_configs(args, method, n, execution="sequential", epochs=epochs,
                               checkpoint_every=args.checkpoint_every, plots=args.plots)
      members = [dataclasses.replace(c, workdir=f"{tmp}/{c.seed}") for c in members]
      t0 = time.perf_counter()
      summaries = train(members, full, progress=False)
      total = time.perf_counter() - t0
      wall = summaries[0]["sessions"][-1]["wall_s"]
      compiled = n * epochs * (steps * step_s + eval_batches * eval_s)
      rows.append({"dataset": args.dataset, "method": method, "members": n, "epochs": epochs,
                   "checkpoint_every": args.checkpoint_every, "plots": args.plots,
                   "steps_per_call": k, "step_ms": round(step_s * 1e3, 3),
                   "eval_batch_ms": round(eval_s * 1e3, 3),
                   "compiled_s": round(compiled, 2), "wall_s": round(total, 2),
                   "split_s": wall, "wall_over_compiled": round(total / compiled, 3)})
      print(json.dumps(rows[-1]), flush=True)
  return rows


def bench_runs(args, method: str, n: int, batch_size: int, train) -> dict:
  """Whole runs of --run_epochs epochs on the dataset: the N members as one population, and
  N single runs in turn, in this process (compile cache warm for both)."""
  full = load_dataset(args.dataset, args.data_dir) if args.dataset not in SHAPES else None
  tmp = tempfile.mkdtemp()
  common = dict(batch_size=batch_size, epochs=args.run_epochs,
                lr_step_epochs=max(args.run_epochs, 1))
  warm = member_configs(args, method, 1, workdir=f"{tmp}/warm", **common)
  train(warm, full, progress=False)  # compiles the single-run programs once
  members = [dataclasses.replace(c, workdir=f"{tmp}/pop/{c.seed}")
             for c in member_configs(args, method, n, **common)]
  t0 = time.perf_counter()
  train(members, full, progress=False)
  population = time.perf_counter() - t0
  t0 = time.perf_counter()
  for c in member_configs(args, method, n, **common):
    train(dataclasses.replace(c, workdir=f"{tmp}/seq/{c.seed}"), full, progress=False)
  sequential = time.perf_counter() - t0
  examples = n * args.run_epochs * (len(full.train["label"]) // batch_size) * batch_size
  return {"run_epochs": args.run_epochs, "population_run_s": round(population, 1),
          "sequential_runs_s": round(sequential, 1),
          "population_run_samples_per_s": round(examples / population, 1),
          "sequential_run_samples_per_s": round(examples / sequential, 1),
          "run_speedup": round(sequential / population, 2)}


def torch_peer(args, ds, batch_size: int) -> dict:
  """The AV-MNIST preset model and recipe (two small CNNs, concat head, SGD 0.9 / 1e-4) as a
  plain PyTorch eager loop, one run at a time as the released code trains: samples/s."""
  try:
    import torch
    from torch import nn
  except ModuleNotFoundError:
    return {"peer": "pytorch eager", "skipped": "torch is not installed (pip install torch)"}
  [cfg] = member_configs(args, "joint", 1, batch_size=batch_size)
  torch.manual_seed(0)
  torch.set_num_threads(os.cpu_count() or 1)

  def cnn(channels):
    layers, c = [], channels
    for i, w in enumerate((cfg.width, 2 * cfg.width, 4 * cfg.width)):
      stride = cfg.stem_stride if i == 0 else 2
      layers += [nn.Conv2d(c, w, 3, stride, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
      c = w
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten()), c

  audio, da = cnn(1)
  visual, dv = cnn(ds.train["visual"].shape[-1])
  head = nn.Linear(da + dv, ds.num_classes)
  model = nn.ModuleList([audio, visual, head])
  opt = torch.optim.SGD(model.parameters(), lr=cfg.learning_rate, momentum=0.9,
                        weight_decay=1e-4)
  a = torch.as_tensor(np.asarray(ds.train["audio"][:batch_size], np.float32))[:, None]
  v = np.asarray(ds.train["visual"][:batch_size], np.float32)
  v = torch.as_tensor(v.reshape((-1,) + v.shape[2:])).permute(0, 3, 1, 2)
  frames = ds.train["visual"].shape[1]
  y = torch.as_tensor(np.asarray(ds.train["label"][:batch_size], np.int64))

  def step():
    fa = audio(a)
    fv = visual(v).reshape(batch_size, frames, -1).mean(1)
    loss = nn.functional.cross_entropy(head(torch.cat([fa, fv], 1)), y)
    opt.zero_grad()
    loss.backward()
    opt.step()

  for _ in range(args.warmup):
    step()
  t0 = time.perf_counter()
  for _ in range(args.steps):
    step()
  dt = (time.perf_counter() - t0) / args.steps
  return {"peer": "pytorch eager", "torch": torch.__version__, "dataset": args.dataset,
          "batch_size": batch_size, "step_ms": round(dt * 1e3, 2),
          "samples_per_s": round(batch_size / dt, 1), "threads": torch.get_num_threads()}


def bench_input(args) -> list[dict]:
  from inforeg_jax.data import pipeline, records
  train_extra()  # grain
  batch_size = args.batch_size or 64
  if args.data_dir:
    arrays = records.load_prepared(args.dataset, args.data_dir).train
  else:
    n = 256 if args.tiny else 2048  # records of the real shapes, memory-mapped as prepared ones
    folder = os.path.join(tempfile.mkdtemp(), "train")
    os.makedirs(folder)
    for key, value in fake_dataset(args.dataset, n, args.tiny,
                                   np.random.default_rng(0)).train.items():
      np.save(os.path.join(folder, f"{key}.npy"), value)
    arrays = records.read_split(folder)
  rows = []
  for name, it in (("batch_gather", pipeline.train_batches(arrays, batch_size, seed=0, epoch=0,
                                                          prefetch_threads=args.threads)),
                   ("per_example", per_example_batches(arrays, batch_size, args.threads))):
    next(it)
    t0, n = time.perf_counter(), 0
    for batch in it:
      n += len(batch["label"])
      if n >= args.steps * batch_size:
        break
    dt = time.perf_counter() - t0
    rows.append({"pipeline": name, "dataset": args.dataset, "batch_size": batch_size,
                 "threads": args.threads, "samples_per_s": round(n / dt, 1),
                 "real_data": bool(args.data_dir)})
    print(json.dumps(rows[-1]))
  return rows


def per_example_batches(arrays, batch_size: int, threads: int):
  """The usual grain recipe for comparison (what a TFDS/array_record source fed to grain
  does): read one example at a time, shuffle, then stack a batch."""
  import grain

  class Source:
    def __len__(self):
      return len(arrays["label"])

    def __getitem__(self, i):
      return {k: np.asarray(v[i]) for k, v in arrays.items()}

  ds = grain.MapDataset.source(Source()).shuffle(seed=0).batch(batch_size, drop_remainder=True)
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=4)))


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m experiments.bench",
                              description=__doc__.split("\n")[0])
  p.add_argument("--mode", choices=["step", "input", "population", "wall"], default="step")
  p.add_argument("--members", default="1,2,4,8,16",
                 help="population mode: the population sizes N to time")
  p.add_argument("--run_epochs", type=int, default=0,
                 help="population mode: also time whole runs of this many epochs (0: steps "
                 "only)")
  p.add_argument("--checkpoint_every", type=int, default=1,
                 help="wall mode: the runs' --checkpoint_every")
  p.add_argument("--plots", type=lambda s: s.lower() in ("1", "true", "yes"), default=True,
                 help="wall mode: the runs' --plots (true/false)")
  p.add_argument("--steps_per_call", type=int, default=0,
                 help="wall mode: the runs' --steps_per_call (0: the default)")
  p.add_argument("--torch_peer", action="store_true",
                 help="population mode: also time the same model as a PyTorch eager loop")
  p.add_argument("--dataset", choices=dataset_names(), default="cremad")
  p.add_argument("--methods", default="joint,inforeg")
  p.add_argument("--dtypes", default="float32,bfloat16")
  p.add_argument("--batch_size", type=int, default=0)
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--threads", type=int, default=2)
  p.add_argument("--data_dir", default="", help="prepared records (required for avmnist and mosi)")
  p.add_argument("--width", type=int, default=0, help="step mode: encoder width (0: preset)")
  p.add_argument("--stem_stride", type=int, default=0,
                 help="step mode: small_cnn's first-convolution stride (0: preset)")
  p.add_argument("--tiny", action="store_true")
  p.add_argument("--out", default="")
  args = p.parse_args(argv)
  for flag, least in (("steps", 1), ("warmup", 0), ("batch_size", 0), ("threads", 1),
                      ("width", 0), ("stem_stride", 0), ("steps_per_call", 0)):
    if getattr(args, flag) < least:
      p.error(f"--{flag}={getattr(args, flag)} must be >= {least}")
  for flag, known in (("methods", method_names()), ("dtypes", DTYPES)):
    bad = [v for v in getattr(args, flag).split(",") if v not in known]
    if bad:
      p.error(f"--{flag}: unknown {', '.join(map(repr, bad))}; choose from {', '.join(known)}")
  built_in = args.dataset == "synthetic" and args.mode != "input"  # input mode reads records
  if args.dataset not in SHAPES and not built_in and not args.data_dir:
    p.error(f"--mode={args.mode} --dataset={args.dataset} needs --data_dir (prepared by "
            f"data_prep.{args.dataset})")
  rows = {"step": bench_step, "input": bench_input, "population": bench_population,
          "wall": bench_wall}[args.mode](args)
  meta = {"command": "python -m experiments.bench " + " ".join(argv or sys.argv[1:]),
          "date": time.strftime("%Y-%m-%d"), "device": jax.devices()[0].device_kind,
          "num_devices": jax.device_count(), "host": platform.node(), "jax": jax.__version__,
          "args": vars(args), "rows": rows}
  if args.out:
    with open(args.out, "w") as f:
      json.dump(meta, f, indent=2)
  return 0


if __name__ == "__main__":
  cli(main)
