"""Kinetics-Sounds (`data_prep.kinetics_sounds`); the paper's settings (Sec. 4.1)."""

from inforeg_jax.datasets import DatasetEntry

DATASET = DatasetEntry(
    "kinetics_sounds",
    preset={"epochs": 50, "learning_rate": 0.002, "encoder": "resnet18", "width": 64},
    prep=("python -m data_prep.kinetics_sounds --raw_dir=KS --out_dir={d} "
          "--train_list=my_train.txt --test_list=my_test.txt"))
