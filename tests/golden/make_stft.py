"""Golden audio front-ends: what the released preprocessing computes, on short fixed signals.

Run with an environment that has librosa (and, for the fbank, torch + torchaudio's
compliance/kaldi.py):

    /work/torchenv/bin/python tests/golden/make_stft.py     # writes tests/golden/stft.json

- ``stft``: ``np.log(np.abs(librosa.stft(x, n_fft=512, hop_length=353)) + 1e-7)``, the CREMA-D
  spectrogram of the released CramedDataset.py (InfoReg_CVPR2025, OGM-GE_CVPR2022), centred,
  for librosa's default padding (``constant``, librosa >= 0.10) and for ``reflect`` (the
  default of the librosa releases before 0.10).
- ``kaldi_fbank``: ``torchaudio.compliance.kaldi.fbank(x, htk_compat=True,
  sample_frequency=16000, use_energy=False, window_type='hanning', num_mel_bins=128,
  dither=0.0, frame_shift=10)`` after ``x - x.mean()``, the Kinetics-Sounds features of the
  OGM-GE release (data/KineticSound/process_audio.py, the AST recipe). torchaudio's compiled
  library need not load: kaldi.py uses torchaudio only for MFCCs, so a stub module stands in.

The signals are stored in the file (float32 values), so the test needs neither library.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import types

import numpy as np

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "stft.json")


def exact(x: np.ndarray) -> list:
  """float32 values in their shortest decimal form (read back bit-exactly)."""
  return [float(str(v)) for v in np.asarray(x, np.float32).reshape(-1)]


def rounded(x) -> list:
  return np.round(np.asarray(x, np.float64), 5).tolist()


def signal(n: int, rate: int, seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  t = np.arange(n) / rate
  chirp = 0.4 * np.sin(2 * np.pi * (200 + 1500 * t) * t)
  return (chirp + 0.05 * rng.standard_normal(n)).astype(np.float32)


def main() -> None:
  import librosa

  x = signal(3000, 22050, 0)
  out = {"librosa_version": librosa.__version__, "stft": {
      "signal": exact(x), "n_fft": 512, "hop": 353, "log_magnitude": {}}}
  for mode in ("constant", "reflect"):
    spec = librosa.stft(x, n_fft=512, hop_length=353, center=True, pad_mode=mode)
    out["stft"]["log_magnitude"][mode] = rounded(np.log(np.abs(spec) + 1e-7))

  import torch

  spec = importlib.util.find_spec("torchaudio")
  kaldi_py = os.path.join(os.path.dirname(spec.origin), "compliance", "kaldi.py")
  sys.modules.setdefault("torchaudio", types.ModuleType("torchaudio"))  # see the docstring
  loader = importlib.util.spec_from_file_location("kaldi_compliance", kaldi_py)
  kaldi = importlib.util.module_from_spec(loader)
  loader.loader.exec_module(kaldi)
  w = signal(4000, 16000, 1)
  centred = torch.from_numpy(w)[None] - torch.from_numpy(w).mean()
  fbank = kaldi.fbank(centred, htk_compat=True, sample_frequency=16000, use_energy=False,
                      window_type="hanning", num_mel_bins=128, dither=0.0, frame_shift=10)
  out["torch_version"] = torch.__version__
  out["kaldi_fbank"] = {"signal": exact(w), "rate": 16000, "fbank": rounded(fbank.numpy())}
  with open(OUT, "w") as f:
    json.dump(out, f)
  print(f"wrote {OUT}: stft {len(out['stft']['log_magnitude']['constant'])} x "
        f"{len(out['stft']['log_magnitude']['constant'][0])}, fbank {tuple(fbank.shape)}")


if __name__ == "__main__":
  main()
