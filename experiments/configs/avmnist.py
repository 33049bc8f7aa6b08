"""The preset of AV-MNIST (``--dataset=avmnist``) as an ml_collections config
(`experiments.configs`)."""

from experiments.configs import preset_config


def get_config():
  return preset_config("avmnist")
