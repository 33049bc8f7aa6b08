"""The CMU-MOSI preset as an ml_collections config (the Flax examples' habit)::

  python -m experiments.run --config=experiments/configs/mosi.py
      [--config.<name>=value ...]

is ``--dataset=mosi``: the numbers are its `inforeg_jax.datasets` entry's (kept in one place), and
the methods' own defaults on this dataset follow from ``dataset`` as from the flag. Its values,
like flags, override ``--tiny``: a smoke run is ``--dataset=mosi --tiny``.
"""

import ml_collections

from inforeg_jax import datasets


def get_config() -> ml_collections.ConfigDict:
  """The hyperparameters of a run on the CMU-MOSI preset."""
  return ml_collections.ConfigDict({"dataset": "mosi", **datasets.get("mosi").preset})
