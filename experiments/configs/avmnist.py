"""The AV-MNIST preset as an ml_collections config (the Flax examples' habit)::

  python -m experiments.run --config=experiments/configs/avmnist.py
      [--config.<name>=value ...]

is ``--dataset=avmnist``: the numbers are its `inforeg_jax.datasets` entry's (kept in one place),
and the methods' own defaults on this dataset follow from ``dataset`` as from the flag. Its
values, like flags, override ``--tiny``: a smoke run is ``--dataset=avmnist --tiny``.
"""

import ml_collections

from inforeg_jax import datasets


def get_config() -> ml_collections.ConfigDict:
  """The hyperparameters of a run on the AV-MNIST preset."""
  return ml_collections.ConfigDict({"dataset": "avmnist", **datasets.get("avmnist").preset})
