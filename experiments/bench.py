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
import platform
import sys
import tempfile
import time

import jax
import numpy as np

from inforeg_jax.config import DATASETS, make_config
from inforeg_jax.methods import NAMES as METHOD_NAMES

try:  # orbax, tqdm, matplotlib, ...: the [train] extra
  from inforeg_jax.data import Dataset, load_dataset
  from inforeg_jax.data.augment import frames_preprocess
  from inforeg_jax.trainer import build_program, make_mesh, to_global
except ModuleNotFoundError as e:
  if (e.name or "").split(".")[0] in ("inforeg_jax", "experiments"):
    raise
  raise SystemExit("error: experiments.bench needs the [train] extra: "
                   "pip install -e '.[train]'") from None
from jax.sharding import NamedSharding, PartitionSpec as P

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


def bench_step(args) -> list[dict]:
  rng = np.random.default_rng(0)
  batch_size = args.batch_size or (8 if args.tiny else 64)
  if args.dataset in SHAPES and not args.data_dir:
    ds = fake_dataset(args.dataset, batch_size, args.tiny, rng)
  else:  # the dataset's own examples: the first batch of its training split
    ds = load_dataset(args.dataset, args.data_dir)
    first = {k: np.asarray(v[:batch_size]) for k, v in ds.train.items()}
    ds = dataclasses.replace(ds, train=first, test=first, val=None)
  encoder = {k: v for k, v in (("width", args.width), ("stem_stride", args.stem_stride)) if v}
  mesh = make_mesh()
  data = NamedSharding(mesh, P("data"))
  batch = to_global({"inputs": {k: v for k, v in ds.train.items() if k != "label"},
                      "label": ds.train["label"]}, data)
  rows = []
  for dtype in args.dtypes.split(","):
    for method in args.methods.split(","):
      cfg = make_config(args.dataset, tiny=args.tiny, method=method, compute_dtype=dtype,
                        batch_size=batch_size, window="whole", **encoder,
                        **{"inforeg.warmup_epochs": 0})
      program = build_program(cfg, ds, steps_per_epoch=1000, mesh=mesh)
      state, step, key = program.state, program.train_step, jax.random.key(0)
      compiled = step.lower(state, batch, key).compile()
      cost = compiled.cost_analysis()
      cost = cost[0] if isinstance(cost, (list, tuple)) else cost
      flops = float(cost.get("flops", 0.0)) if cost else 0.0
      for _ in range(args.warmup):
        state, m = step(state, batch, key)
      jax.block_until_ready(state)
      t0 = time.perf_counter()
      for _ in range(args.steps):
        state, m = step(state, batch, key)
      jax.block_until_ready(state)
      dt = (time.perf_counter() - t0) / args.steps
      peak = peak_flops()
      rows.append({"dataset": args.dataset, "method": method, "compute_dtype": dtype,
                   "batch_size": batch_size, "width": cfg.width, "stem_stride": cfg.stem_stride,
                   "step_ms": round(dt * 1e3, 3), "samples_per_s": round(batch_size / dt, 1),
                   "step_gflop": round(flops / 1e9, 2),
                   "mfu": round(flops / dt / peak, 4) if peak and flops else None,
                   "regulated": float(m.get("alpha_audio", 0)) + float(m.get("alpha_visual", 0)) > 0})
      print(json.dumps(rows[-1]), flush=True)
  return rows


def bench_input(args) -> list[dict]:
  from inforeg_jax.data import pipeline, records
  batch_size = args.batch_size or 64
  if args.data_dir:
    arrays = records.load_prepared(args.dataset, args.data_dir).train
  else:
    tmp = tempfile.mkdtemp()
    n = 256 if args.tiny else 2048
    arrays = records.write_fake_records(tmp, fake_dataset(args.dataset, n, args.tiny,
                                                          np.random.default_rng(0)).train)
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
  p = argparse.ArgumentParser(prog="python -m experiments.bench", description=__doc__.split("\n")[0])
  p.add_argument("--mode", choices=["step", "input"], default="step")
  p.add_argument("--dataset", choices=DATASETS, default="cremad")
  p.add_argument("--methods", default="joint,inforeg")
  p.add_argument("--dtypes", default="float32,bfloat16")
  p.add_argument("--batch_size", type=int, default=0)
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--threads", type=int, default=2)
  p.add_argument("--data_dir", default="", help="prepared records (required for avmnist and mosi)")
  p.add_argument("--width", type=int, default=0, help="step mode: encoder width (0: preset)")
  p.add_argument("--stem_stride", type=int, default=0, help="step mode: small_cnn's first-convolution stride (0: preset)")
  p.add_argument("--tiny", action="store_true")
  p.add_argument("--out", default="")
  args = p.parse_args(argv)
  for flag, least in (("steps", 1), ("warmup", 0), ("batch_size", 0), ("threads", 1),
                      ("width", 0), ("stem_stride", 0)):
    if getattr(args, flag) < least:
      p.error(f"--{flag}={getattr(args, flag)} must be >= {least}")
  for flag, known in (("methods", METHOD_NAMES), ("dtypes", DTYPES)):
    bad = [v for v in getattr(args, flag).split(",") if v not in known]
    if bad:
      p.error(f"--{flag}: unknown {', '.join(map(repr, bad))}; choose from {', '.join(known)}")
  built_in = args.dataset == "synthetic" and args.mode == "step"  # input mode reads records
  if args.dataset not in SHAPES and not built_in and not args.data_dir:
    p.error(f"--mode={args.mode} --dataset={args.dataset} needs --data_dir (prepared by "
            f"data_prep.{args.dataset})")
  rows = bench_step(args) if args.mode == "step" else bench_input(args)
  meta = {"command": "python -m experiments.bench " + " ".join(argv or sys.argv[1:]),
          "date": time.strftime("%Y-%m-%d"), "device": jax.devices()[0].device_kind,
          "num_devices": jax.device_count(), "host": platform.node(), "jax": jax.__version__,
          "args": vars(args), "rows": rows}
  if args.out:
    with open(args.out, "w") as f:
      json.dump(meta, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
