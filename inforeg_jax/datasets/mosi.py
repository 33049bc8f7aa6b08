"""CMU-MOSI (`data_prep.mosi`): three feature-sequence modalities, transformer encoders."""

from inforeg_jax.datasets import DatasetEntry

DATASET = DatasetEntry(
    "mosi",
    preset={"epochs": 30, "learning_rate": 1e-3, "encoder": "transformer", "width": 64,
            "batch_size": 32},
    prep="python -m data_prep.mosi --raw_dir=MOSI --out_dir={d}")
