"""The synthetic-data preset as an ml_collections config (the Flax examples' habit)::

  python -m experiments.run --config=experiments/configs/synthetic.py
      [--config.<name>=value ...]

is ``--dataset=synthetic``: the numbers are its `inforeg_jax.datasets` entry's (kept in one place),
and the methods' own defaults on this dataset follow from ``dataset`` as from the flag. Its
values, like flags, override ``--tiny``: a smoke run is ``--dataset=synthetic --tiny``.
"""

import ml_collections

from inforeg_jax import datasets


def get_config() -> ml_collections.ConfigDict:
  """The hyperparameters of a run on the synthetic-data preset."""
  return ml_collections.ConfigDict({"dataset": "synthetic", **datasets.get("synthetic").preset})
