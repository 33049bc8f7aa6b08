"""AV-MNIST from FSDD and MNIST (`data_prep.avmnist`): the easy variant (ours) and the hard
one (speakers held out, six folds; closer to the published construction)."""

from inforeg_jax.datasets import DatasetEntry, StudyData

PREP = "python -m data_prep.avmnist --fsdd_dir=FSDD --mnist_dir=MNIST --out_dir={d}"
RECORDINGS = "data_prep.avmnist:recordings_of_test_pairs"  # each clip serves several test pairs

# chosen on the validation split (docs/RESULTS.md), sized for a 2-core CPU
DATASET = DatasetEntry(
    "avmnist",
    preset={"epochs": 20, "learning_rate": 0.01, "lr_step_epochs": 15, "encoder": "small_cnn",
            "width": 8, "stem_stride": 2},
    prep=PREP,
    study={"avmnist": StudyData("avmnist", PREP.format(d="DIR"), recordings=RECORDINGS),
           # tuned on fold 0's validation speaker (jackson), but fold 1, whose test speaker
           # that is, on its own (docs/RESULTS.md, protocol v2)
           "avmnist_hard": StudyData("avmnist_hard", "python -m data_prep.avmnist --variant=hard "
                                     "--fold=FOLD --fsdd_dir=FSDD --mnist_dir=MNIST --out_dir=DIR",
                                     folds=6, tuned_on=(0, 1, 0, 0, 0, 0),
                                     recordings=RECORDINGS)})
