"""The preset of the built-in synthetic data (``--dataset=synthetic``) as an ml_collections config
(`experiments.configs`)."""

from experiments.configs import preset_config


def get_config():
  return preset_config("synthetic")
