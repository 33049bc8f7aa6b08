"""Direct tests of the input pipeline (inforeg_jax/data/pipeline.py): the order of each epoch,
what drop-remainder drops, the process shards, resuming, and the eval batches and masks.

Every example carries its own index (``ids``), so a batch says exactly which examples it holds;
the label and a second modality are functions of the index, so a batch whose arrays were
gathered with different indices shows up too. No jit: seconds in all.
"""

import numpy as np
import pytest

from inforeg_jax.data import pipeline

N, CLASSES = 23, 5


def make_arrays(n=N):
  i = np.arange(n)
  return {"ids": i.astype(np.float32),
          "audio": np.stack([i, -i], 1).astype(np.float32).reshape(n, 2, 1),
          "label": (i % CLASSES).astype(np.int64)}


def ids_of(batch):
  """The example indices in a batch, after checking that its arrays belong together."""
  ids = batch["inputs"]["ids"].astype(int)
  np.testing.assert_array_equal(batch["inputs"]["audio"][:, 0, 0], ids)
  np.testing.assert_array_equal(batch["inputs"]["audio"][:, 1, 0], -ids)
  np.testing.assert_array_equal(batch["label"], ids % CLASSES)
  assert batch["label"].dtype == np.int32
  assert set(batch["inputs"]) == {"ids", "audio"}
  return ids


def epoch(arrays, batch, seed, e, **kw):
  """The batches of one epoch as a list of id arrays."""
  return [ids_of(b) for b in pipeline.train_batches(arrays, batch, seed, e, **kw)]


# ---- steps_per_epoch ----

@pytest.mark.parametrize("n,batch,steps", [(23, 4, 5), (24, 4, 6), (23, 23, 1), (23, 1, 23),
                                           (24, 12, 2), (24, 13, 1)])
def test_steps_per_epoch_counts_full_batches(n, batch, steps):
  assert pipeline.num_examples(make_arrays(n)) == n
  assert pipeline.steps_per_epoch(make_arrays(n), batch) == steps


def test_steps_per_epoch_rejects_a_split_smaller_than_a_batch():
  with pytest.raises(ValueError, match="23 examples.*batch of 24.*--batch_size"):
    pipeline.steps_per_epoch(make_arrays(), 24)
  with pytest.raises(ValueError):
    pipeline.train_batches(make_arrays(), 24, 0, 0)


# ---- one epoch ----

@pytest.mark.parametrize("batch", [4, 5, 23])
def test_an_epoch_is_full_batches_of_distinct_examples(batch):
  arrays = make_arrays()
  for e in range(3):
    batches = epoch(arrays, batch, seed=3, e=e)
    assert len(batches) == N // batch == pipeline.steps_per_epoch(arrays, batch)
    assert all(len(b) == batch for b in batches)
    seen = np.concatenate(batches)
    assert len(set(seen.tolist())) == len(seen) == N // batch * batch  # none twice
    assert set(seen.tolist()) <= set(range(N))


def test_order_is_a_function_of_seed_and_epoch():
  arrays = make_arrays()
  runs = {(s, e): epoch(arrays, 4, s, e) for s in (0, 1) for e in (0, 1, 2)}
  for (s, e), batches in runs.items():  # the same (seed, epoch): the same batches
    again = epoch(arrays, 4, s, e)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))
  keys = list(runs)
  as_sets = {k: [frozenset(b.tolist()) for b in runs[k]] for k in keys}
  for i, a in enumerate(keys):  # any other (seed, epoch): another order
    for b in keys[i + 1:]:
      assert as_sets[a] != as_sets[b], (a, b)


def test_every_epoch_a_new_permutation():
  arrays = make_arrays(24)  # no remainder: each epoch is a permutation of all 24
  orders = []
  for e in range(6):
    order = np.concatenate(epoch(arrays, 4, seed=7, e=e))
    np.testing.assert_array_equal(np.sort(order), np.arange(24))
    orders.append([frozenset(b.tolist()) for b in np.split(order, 6)])
  for i in range(6):
    for j in range(i):
      assert orders[i] != orders[j], (i, j)


def test_drop_remainder_drops_a_different_tail_each_epoch():
  arrays = make_arrays()
  dropped, used = [], set()
  for e in range(12):
    seen = set(np.concatenate(epoch(arrays, 4, seed=0, e=e)).tolist())
    dropped.append(frozenset(set(range(N)) - seen))
    used |= seen
  assert all(len(d) == N % 4 for d in dropped)
  assert len(set(dropped)) > 6  # not the same tail every time
  assert used == set(range(N))  # over epochs every example is trained on


# ---- resume ----

@pytest.mark.parametrize("start", [0, 1, 3, 5])
def test_start_batch_resumes_at_that_batch(start):
  arrays = make_arrays()
  full = epoch(arrays, 4, seed=2, e=1)
  rest = epoch(arrays, 4, seed=2, e=1, start_batch=start)
  assert len(rest) == len(full) - start
  assert all(np.array_equal(a, b) for a, b in zip(full[start:], rest))


def test_start_batch_resumes_each_process_shard():
  arrays = make_arrays(32)
  for p in range(2):
    full = epoch(arrays, 8, 4, 2, process_index=p, process_count=2)
    rest = epoch(arrays, 8, 4, 2, start_batch=2, process_index=p, process_count=2)
    assert len(rest) == 2 and all(np.array_equal(a, b) for a, b in zip(full[2:], rest))


# ---- process shards ----

@pytest.mark.parametrize("count", [2, 4])
@pytest.mark.parametrize("n", [32, 35])
def test_process_shards_are_disjoint_and_make_the_global_batch(count, n):
  arrays = make_arrays(n)
  global_batches = epoch(arrays, 8, seed=5, e=3)
  shards = [epoch(arrays, 8, seed=5, e=3, process_index=p, process_count=count)
            for p in range(count)]
  for b, whole in enumerate(global_batches):
    parts = [shards[p][b] for p in range(count)]
    assert all(len(part) == 8 // count for part in parts)
    together = np.concatenate(parts)
    assert len(set(together.tolist())) == 8  # disjoint
    assert set(together.tolist()) == set(whole.tolist())  # exactly the global batch
  assert all(len(s) == len(global_batches) == n // 8 for s in shards)


def test_process_count_must_divide_the_batch():
  with pytest.raises(ValueError, match="not divisible by 4"):
    pipeline.train_batches(make_arrays(), 6, 0, 0, process_index=0, process_count=4)
  pipeline.train_batches(make_arrays(), 8, 0, 0, process_index=0, process_count=4)


# ---- reads ----

class RecordingArray:
  """An array-like that records the indices it is read with (as a memory map would be)."""

  def __init__(self, data, reads):
    self.data, self.reads = data, reads

  def __len__(self):
    return len(self.data)

  def __getitem__(self, idx):
    self.reads.append(np.asarray(idx))
    return self.data[idx]


def test_a_batch_is_read_with_one_sorted_index_per_array():
  reads = []
  arrays = {k: RecordingArray(v, reads) for k, v in make_arrays().items()}
  batches = [ids_of(b) for b in pipeline.train_batches(arrays, 4, 0, 0, prefetch_threads=0)]
  assert len(reads) == 3 * len(batches)  # one fancy index per array and batch
  for idx in reads:
    assert len(idx) == 4 and np.all(np.diff(idx) > 0)  # sequential reads


# ---- eval ----

def eval_list(arrays, batch, **kw):
  return list(pipeline.eval_batches(arrays, batch, **kw))


@pytest.mark.parametrize("n,batch", [(23, 8), (24, 8), (23, 23), (5, 8), (23, 1)])
def test_eval_covers_every_example_once_in_order_with_exact_masks(n, batch):
  arrays = make_arrays(n)
  batches = eval_list(arrays, batch)
  assert len(batches) == -(-n // batch)
  kept = []
  for i, b in enumerate(batches):
    ids = ids_of(b)
    assert len(ids) == len(b["mask"]) == batch
    assert b["mask"].dtype == np.float32
    real = min(batch, n - i * batch)
    np.testing.assert_array_equal(b["mask"], [1.0] * real + [0.0] * (batch - real))
    np.testing.assert_array_equal(ids[:real], np.arange(i * batch, i * batch + real))
    kept.append(ids[b["mask"] > 0])
  np.testing.assert_array_equal(np.concatenate(kept), np.arange(n))
  assert sum(b["mask"].sum() for b in batches) == n


@pytest.mark.parametrize("count", [2, 4])
@pytest.mark.parametrize("n", [23, 24, 5])
def test_eval_process_slices_make_the_batch(count, n):
  arrays = make_arrays(n)
  whole = eval_list(arrays, 8)
  slices = [eval_list(arrays, 8, process_index=p, process_count=count) for p in range(count)]
  assert all(len(s) == len(whole) for s in slices)
  for b, batch in enumerate(whole):
    parts = [s[b] for s in slices]
    for p in parts:
      assert len(p["label"]) == len(p["mask"]) == len(p["inputs"]["ids"]) == 8 // count
      ids_of(p)
    np.testing.assert_array_equal(np.concatenate([p["mask"] for p in parts]), batch["mask"])
    np.testing.assert_array_equal(np.concatenate([p["label"] for p in parts]), batch["label"])
    for k in batch["inputs"]:
      np.testing.assert_array_equal(np.concatenate([p["inputs"][k] for p in parts]),
                                    batch["inputs"][k])
