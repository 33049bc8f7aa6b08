"""The preset of Kinetics-Sounds (``--dataset=kinetics_sounds``) as an ml_collections config
(`experiments.configs`)."""

from experiments.configs import preset_config


def get_config():
  return preset_config("kinetics_sounds")
