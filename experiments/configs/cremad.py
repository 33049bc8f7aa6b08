"""The CREMA-D preset as an ml_collections config (the Flax examples' habit)::

  python -m experiments.run --config=experiments/configs/cremad.py
      [--config.<name>=value ...]

is ``--dataset=cremad``: the numbers are its `inforeg_jax.datasets` entry's (kept in one place), and
the methods' own defaults on this dataset follow from ``dataset`` as from the flag. Its values,
like flags, override ``--tiny``: a smoke run is ``--dataset=cremad --tiny``.
"""

import ml_collections

from inforeg_jax import datasets


def get_config() -> ml_collections.ConfigDict:
  """The hyperparameters of a run on the CREMA-D preset."""
  return ml_collections.ConfigDict({"dataset": "cremad", **datasets.get("cremad").preset})
