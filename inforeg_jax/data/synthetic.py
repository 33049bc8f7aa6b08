"""A synthetic audio-visual dataset that shows the paper's imbalance (Fig. 1, Table 1).

Each class c has, per modality, a random local template (k x k x channels). A sample is
Gaussian noise with the class template stamped at random places:

- ``audio`` [F, T] "spectrogram": the information-sufficient modality. A strong template,
  stamped often, so a conv encoder learns it within an epoch or two; but for a fraction
  ``audio_confusion`` of the samples the template of a random other class is stamped, so
  audio alone cannot reach full accuracy.
- ``visual`` [frames, H, W, 3]: the information-insufficient modality. A faint template,
  stamped rarely, in heavy noise: a unimodal model learns it well, slowly; trained jointly,
  the fast audio branch fits the labels first and the visual branch is starved.

Everything is generated from ``seed`` with NumPy: no download.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
  """Generator knobs (defaults: the built-in ``synthetic`` dataset)."""

  num_classes: int = 6
  num_train: int = 3000
  num_test: int = 1000
  audio_shape: tuple[int, int] = (24, 24)  # F x T
  frames: int = 2
  image_size: int = 24
  template_size: int = 5
  audio_amplitude: float = 3.0  # template scale against unit noise
  audio_stamps: int = 6  # template copies per sample
  audio_confusion: float = 0.3  # fraction of samples whose audio shows another class
  visual_amplitude: float = 0.9
  visual_stamps: int = 3  # per frame
  visual_confusion: float = 0.3  # fraction of samples whose frames show another class
  seed: int = 0


def _stamp(rng, canvas, template, count):
  """Adds ``template`` at ``count`` random positions of each canvas (N, H, W, C) in place."""
  n, h, w, _ = canvas.shape
  k = template.shape[1]
  for _ in range(count):
    ys = rng.integers(0, h - k + 1, n)
    xs = rng.integers(0, w - k + 1, n)
    for i in range(n):
      canvas[i, ys[i]:ys[i] + k, xs[i]:xs[i] + k] += template[i]


def _confuse(rng, labels, num_classes, fraction):
  """The class each sample's template shows: its label, or for ``fraction`` another class."""
  n = len(labels)
  other = (labels + rng.integers(1, num_classes, n)) % num_classes
  return np.where(rng.random(n) < fraction, other, labels)


def _split(spec: SyntheticSpec, rng, templates, n):
  c = spec.num_classes
  labels = rng.integers(0, c, n)
  audio_class = _confuse(rng, labels, c, spec.audio_confusion)
  visual_class = _confuse(rng, labels, c, spec.visual_confusion)
  audio = rng.standard_normal((n, *spec.audio_shape, 1)).astype(np.float32)
  _stamp(rng, audio, spec.audio_amplitude * templates["audio"][audio_class], spec.audio_stamps)
  s = spec.image_size
  visual = rng.standard_normal((n * spec.frames, s, s, 3)).astype(np.float32)
  _stamp(rng, visual, spec.visual_amplitude * np.repeat(templates["visual"][visual_class], spec.frames,
                                                         axis=0), spec.visual_stamps)
  return {
      "audio": audio[..., 0],
      "visual": visual.reshape(n, spec.frames, s, s, 3),
      "label": labels.astype(np.int32),
  }


def make_synthetic(spec: SyntheticSpec = SyntheticSpec()) -> dict[str, dict[str, np.ndarray]]:
  """{'train': {...}, 'test': {...}}, each {'audio', 'visual', 'label'} NumPy arrays."""
  rng = np.random.default_rng(spec.seed)
  k = spec.template_size
  templates = {
      "audio": rng.standard_normal((spec.num_classes, k, k, 1)).astype(np.float32),
      "visual": rng.standard_normal((spec.num_classes, k, k, 3)).astype(np.float32),
  }
  return {"train": _split(spec, rng, templates, spec.num_train),
          "test": _split(spec, rng, templates, spec.num_test)}
