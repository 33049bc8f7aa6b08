"""G-Blending's held-out split (the official weight numbers are in test_golden_gblending.py)."""

import numpy as np

from inforeg_jax.config import make_config
from inforeg_jax.data import Dataset
from inforeg_jax.methods.gblending import GBlending


def dataset(n, val=None):
  train = {"audio": np.arange(n, dtype=np.float32)[:, None], "label": np.arange(n) % 3}
  return Dataset("synthetic", train, train, 3, {"audio": "spectrogram"}, val=val)


def test_a_validation_split_is_used_as_it_is():
  d = dataset(20, val={"audio": np.zeros((4, 1), np.float32), "label": np.zeros(4, int)})
  assert GBlending.split_data(make_config(method="gblending"), d) is d


def test_without_one_a_seeded_fraction_is_held_out():
  cfg = make_config(method="gblending", **{"gblending.holdout": 0.2})
  out = GBlending.split_data(cfg, dataset(50))
  held, kept = out.val["audio"][:, 0], out.train["audio"][:, 0]
  assert len(held) == 10 and len(kept) == 40  # round(50 * 0.2)
  assert sorted(np.concatenate([held, kept]).tolist()) == list(range(50))  # disjoint, all
  np.testing.assert_array_equal(out.val["label"], held.astype(int) % 3)  # rows stay whole
  again = GBlending.split_data(cfg, dataset(50))
  np.testing.assert_array_equal(again.val["audio"], out.val["audio"])  # seeded
  other = GBlending.split_data(make_config(method="gblending", seed=1,
                                           **{"gblending.holdout": 0.2}), dataset(50))
  assert not np.array_equal(other.val["audio"], out.val["audio"])
  tiny = GBlending.split_data(make_config(method="gblending", **{"gblending.holdout": 0.01}),
                              dataset(10))
  assert len(tiny.val["audio"]) == 1  # at least one example


def test_the_published_heads():
  assert GBlending.unimodal_heads  # a head per modality (Wang et al.)
