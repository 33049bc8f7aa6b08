"""The preset of CMU-MOSI (``--dataset=mosi``) as an ml_collections config
(`experiments.configs`)."""

from experiments.configs import preset_config


def get_config():
  return preset_config("mosi")
