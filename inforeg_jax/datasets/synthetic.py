"""The built-in synthetic audio-visual data (`inforeg_jax.data.synthetic`): no preparation."""

from inforeg_jax.datasets import DatasetEntry, StudyData


def load(data_dir: str = "", seed: int = 0):
  from inforeg_jax.data.dataset import Dataset
  from inforeg_jax.data.synthetic import SyntheticSpec, make_synthetic
  del data_dir, seed  # built in, from its own generator seed
  splits = make_synthetic(SyntheticSpec())
  return Dataset("synthetic", splits["train"], splits["test"], SyntheticSpec.num_classes,
                 {"audio": "spectrogram", "visual": "frames"}, val=splits.get("val"))


# chosen on the validation split (docs/RESULTS.md), sized for a 2-core CPU
DATASET = DatasetEntry(
    "synthetic",
    preset={"epochs": 20, "learning_rate": 0.01, "lr_step_epochs": 15, "encoder": "small_cnn",
            "width": 12},
    load=load,
    study={"synthetic": StudyData(None)})
