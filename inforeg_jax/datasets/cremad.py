"""CREMA-D (`data_prep.cremad`), the paper's main dataset; its settings (Sec. 4.1)."""

from inforeg_jax.datasets import DatasetEntry

DATASET = DatasetEntry(
    "cremad",
    preset={"epochs": 50, "learning_rate": 0.002, "encoder": "resnet18", "width": 64},
    prep="python -m data_prep.cremad --raw_dir=CREMA-D --out_dir={d}")
