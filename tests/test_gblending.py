"""G-Blending reads a validation split: a run without one is refused, with one line (the
official numbers are in test_golden_gblending.py)."""

import pytest

from inforeg_jax import trainer
from inforeg_jax.config import make_config
from inforeg_jax.data import Dataset
from inforeg_jax.data.synthetic import SyntheticSpec, make_synthetic
from inforeg_jax.methods.gblending import GBlending


def test_a_run_without_a_validation_split_is_refused(tmp_path):
  assert GBlending.needs_validation
  spec = SyntheticSpec(num_train=32, num_test=16, num_val=0, audio_shape=(8, 8), image_size=8,
                       template_size=3)
  s = make_synthetic(spec)
  ds = Dataset("synthetic", s["train"], s["test"], spec.num_classes,
               {"audio": "spectrogram", "visual": "frames"})
  cfg = make_config(method="gblending", tiny=True, workdir=str(tmp_path / "g"))
  with pytest.raises(trainer.RunError, match="reads a validation split"):
    trainer.train(cfg, ds, progress=False)
  assert not (tmp_path / "g" / "metrics.jsonl").exists()
