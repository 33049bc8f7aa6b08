"""The dataset presets as ml_collections config files, the Flax examples' habit::

  python -m experiments.run --config=experiments/configs/<dataset>.py [--config.<name>=value ...]

is ``--dataset=<dataset>``: the numbers are the dataset's `inforeg_jax.datasets` entry's (kept
in one place), and the methods' own defaults on it follow from ``dataset`` as from the flag. A
file's values, like flags, override ``--tiny``: a smoke run is ``--dataset=<dataset> --tiny``.
"""


def preset_config(dataset: str):
  """The hyperparameters of a run on ``dataset``'s preset, as an ``ml_collections.ConfigDict``."""
  import ml_collections

  from inforeg_jax import datasets
  return ml_collections.ConfigDict({"dataset": dataset, **datasets.get(dataset).preset})
