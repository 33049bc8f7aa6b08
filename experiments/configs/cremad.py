"""The preset of CREMA-D (``--dataset=cremad``) as an ml_collections config
(`experiments.configs`)."""

from experiments.configs import preset_config


def get_config():
  return preset_config("cremad")
