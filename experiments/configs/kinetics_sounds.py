"""The Kinetics-Sounds preset as an ml_collections config (the Flax examples' habit)::

  python -m experiments.run --config=experiments/configs/kinetics_sounds.py
      [--config.<name>=value ...]

is ``--dataset=kinetics_sounds``: the numbers are its `inforeg_jax.datasets` entry's (kept in one
place), and the methods' own defaults on this dataset follow from ``dataset`` as from the flag.
Its values, like flags, override ``--tiny``: a smoke run is ``--dataset=kinetics_sounds
--tiny``.
"""

import ml_collections

from inforeg_jax import datasets


def get_config() -> ml_collections.ConfigDict:
  """The hyperparameters of a run on the Kinetics-Sounds preset."""
  preset = datasets.get("kinetics_sounds").preset
  return ml_collections.ConfigDict({"dataset": "kinetics_sounds", **preset})
