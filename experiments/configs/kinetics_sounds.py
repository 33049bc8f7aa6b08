"""The Kinetics-Sounds preset as an ml_collections config (the Flax examples' habit)::

  python -m experiments.run --config=experiments/configs/kinetics_sounds.py
      [--config.<name>=value ...]

is ``--dataset=kinetics_sounds``: the numbers are `inforeg_jax.config.PRESETS`'s (kept in one
place), and the methods' own defaults on this dataset follow from ``dataset`` as from the flag.
Its values, like flags, override ``--tiny``: a smoke run is ``--dataset=kinetics_sounds
--tiny``.
"""

import ml_collections

from inforeg_jax.config import PRESETS


def get_config() -> ml_collections.ConfigDict:
  """The hyperparameters of a run on the Kinetics-Sounds preset."""
  return ml_collections.ConfigDict({"dataset": "kinetics_sounds", **PRESETS["kinetics_sounds"]})
