"""grain input pipelines over random-access arrays (in memory or memory-mapped records).

A batch is gathered with one fancy index per array instead of stacking samples one by one:
the pipeline is a ``grain.MapDataset`` over batch indices of a seeded per-epoch permutation,
prefetched by grain's threads. Its position is just ``(epoch, batch)``, so resuming is exact.
Augmentation runs on the device inside the jitted step (see ``augment``).
"""

from __future__ import annotations

from typing import Iterator, Mapping

import numpy as np

Arrays = Mapping[str, np.ndarray]


def num_examples(arrays: Arrays) -> int:
  return len(arrays["label"])


def steps_per_epoch(arrays: Arrays, global_batch_size: int) -> int:
  n = num_examples(arrays) // global_batch_size
  if n < 1:
    raise ValueError(f"the training split has {num_examples(arrays)} examples, fewer than one "
                     f"batch of {global_batch_size}: lower --batch_size")
  return n


def _gather(arrays: Arrays, idx: np.ndarray, presorted: bool = False) -> dict:
  idx = idx if presorted else np.sort(idx)  # sequential reads from memory-mapped files
  return {"inputs": {k: np.asarray(v[idx]) for k, v in arrays.items() if k != "label"},
          "label": np.asarray(arrays["label"][idx], np.int32)}


def train_chunks(arrays: Arrays, global_batch_size: int, seed: int, epoch: int,
                 steps_per_call: int = 1, start_batch: int = 0, process_index: int = 0,
                 process_count: int = 1, prefetch_threads: int = 2) -> Iterator[dict]:
  """One epoch of shuffled, drop-remainder batches, ``steps_per_call`` consecutive batches at
  a time (every leaf [k, B / processes, ...], the last chunk shorter when they do not divide
  the epoch): this process's slice of each global batch.

  The order depends only on (seed, epoch): the same on any number of processes or devices,
  and whatever the chunking.
  """
  if global_batch_size % process_count:
    raise ValueError(f"batch size {global_batch_size} is not divisible by {process_count} "
                     "processes")
  per_process = global_batch_size // process_count
  perm = np.random.default_rng([seed, epoch]).permutation(num_examples(arrays))
  n = steps_per_epoch(arrays, global_batch_size)
  starts = list(range(start_batch, n, steps_per_call))

  def load(c: int) -> dict:
    lo = starts[c]
    rows = [perm[b * global_batch_size + process_index * per_process:][:per_process]
            for b in range(lo, min(lo + steps_per_call, n))]
    batch = _gather(arrays, np.concatenate([np.sort(r) for r in rows]), presorted=True)
    return jax_tree_reshape(batch, (len(rows), per_process))

  import grain  # imported here: the step benchmark runs where grain is not installed

  ds = grain.MapDataset.range(len(starts)).map(load)
  options = grain.ReadOptions(num_threads=prefetch_threads, prefetch_buffer_size=4)
  return iter(ds.to_iter_dataset(options))


def jax_tree_reshape(batch: dict, lead: tuple[int, int]) -> dict:
  """Every array of a gathered batch with its leading axis split into ``lead``."""
  return {"inputs": {k: v.reshape(lead + v.shape[1:]) for k, v in batch["inputs"].items()},
          "label": batch["label"].reshape(lead)}


def train_batches(arrays: Arrays, global_batch_size: int, seed: int, epoch: int,
                  start_batch: int = 0, process_index: int = 0, process_count: int = 1,
                  prefetch_threads: int = 2) -> Iterator[dict]:
  """`train_chunks` one batch at a time (every leaf [B / processes, ...])."""
  chunks = train_chunks(arrays, global_batch_size, seed, epoch, 1, start_batch, process_index,
                        process_count, prefetch_threads)
  return ({"inputs": {k: v[0] for k, v in c["inputs"].items()}, "label": c["label"][0]}
          for c in chunks)


def eval_batches(arrays: Arrays, batch_size: int, process_index: int = 0,
                 process_count: int = 1) -> Iterator[dict]:
  """Every example once, in order, the last batch padded and masked (``mask``)."""
  n = num_examples(arrays)
  for lo in range(0, n, batch_size):
    idx = np.arange(lo, min(lo + batch_size, n))
    batch = _gather(arrays, idx)
    pad = batch_size - len(idx)
    if pad:
      batch = {"inputs": {k: np.concatenate([v, np.repeat(v[-1:], pad, 0)])
                          for k, v in batch["inputs"].items()},
               "label": np.concatenate([batch["label"], np.repeat(batch["label"][-1:], pad)])}
    batch["mask"] = (np.arange(batch_size) < len(idx)).astype(np.float32)
    per = batch_size // process_count
    yield {"inputs": {k: v[process_index * per:(process_index + 1) * per]
                      for k, v in batch["inputs"].items()},
           "label": batch["label"][process_index * per:(process_index + 1) * per],
           "mask": batch["mask"][process_index * per:(process_index + 1) * per]}
