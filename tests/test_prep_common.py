"""data_prep.common: the audio front-ends against the released preprocessing (goldens from
librosa and torchaudio, tests/golden/make_stft.py), the input checks and the strict flags."""

import io
import json
import os

import numpy as np
import pytest
import soundfile

from data_prep import common, kinetics_sounds

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden", "stft.json")


@pytest.fixture(scope="module")
def golden():
  with open(GOLDEN) as f:
    return json.load(f)


@pytest.mark.parametrize("pad_mode", ["constant", "reflect"])
def test_log_spectrogram_matches_librosa_stft(golden, pad_mode):
  g = golden["stft"]
  x = np.asarray(g["signal"], np.float32)
  ours = common.log_spectrogram(x, g["n_fft"], g["hop"], pad_mode=pad_mode)
  want = np.asarray(g["log_magnitude"][pad_mode])
  assert ours.shape == want.shape == (257, 1 + len(x) // 353)
  np.testing.assert_allclose(ours, want, atol=2e-4)
  # batched input gives the same rows
  np.testing.assert_allclose(common.log_spectrogram(np.stack([x, x]), 512, 353,
                                                    pad_mode=pad_mode)[1], ours, atol=1e-6)


def test_padding_modes_differ_only_at_the_edges(golden):
  g = golden["stft"]["log_magnitude"]
  diff = np.abs(np.asarray(g["constant"]) - np.asarray(g["reflect"])).max(axis=0)
  assert diff[0] > 0.1 and diff[-1] > 0.1 and diff[1:-1].max() == 0


def test_kinetics_fbank_matches_torchaudio_kaldi(golden):
  g = golden["kaldi_fbank"]
  x = np.asarray(g["signal"], np.float32)
  ours = kinetics_sounds.kaldi_fbank(x - x.mean())
  want = np.asarray(g["fbank"])
  assert ours.shape == want.shape == (1 + (len(x) - 400) // 160, 128)
  np.testing.assert_allclose(ours, want, atol=1e-3)
  padded = kinetics_sounds.log_fbank(x)  # the release: pad to 1,024 frames, then normalise
  assert padded.shape == (1024, 128)
  np.testing.assert_allclose(padded[:len(want)], (want + 4.503877) / (2 * 5.141276), atol=1e-3)
  np.testing.assert_allclose(padded[len(want):], 4.503877 / (2 * 5.141276), atol=1e-6)


def test_area_matrix_averages_spans():
  np.testing.assert_allclose(common.area_matrix(5, 5), np.eye(5), atol=1e-7)
  m = common.area_matrix(129, 32)
  assert m.shape == (32, 129)
  np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-6)
  np.testing.assert_allclose(m.sum(axis=0), 32 / 129, atol=1e-5)  # every bin counted equally


def test_wav_checks(tmp_path):
  buf = io.BytesIO()
  soundfile.write(buf, np.zeros(4000, np.float32), 8000, format="WAV", subtype="PCM_16")
  whole = buf.getvalue()
  (tmp_path / "ok.wav").write_bytes(whole)
  (tmp_path / "half.wav").write_bytes(whole[:len(whole) // 2])
  assert common.wav_data_shortfall(str(tmp_path / "ok.wav")) is None
  assert common.wav_data_shortfall(str(tmp_path / "half.wav")) == (8000, len(whole) // 2 - 44)
  with pytest.raises(ValueError, match="truncated wav"):
    common.read_audio(str(tmp_path / "half.wav"))
  wave, rate = common.read_audio(str(tmp_path / "ok.wav"), 8000)
  assert rate == 8000 and wave.shape == (4000,) and wave.dtype == np.float32
  with pytest.raises(ValueError, match="sample rate 8000"):
    common.read_audio(str(tmp_path / "ok.wav"), 16000)
  soundfile.write(tmp_path / "nan.wav", np.array([0.1, np.nan, np.inf], np.float32), 8000,
                  subtype="FLOAT")
  with pytest.raises(ValueError, match="2 non-finite samples"):
    common.read_audio(str(tmp_path / "nan.wav"))


def test_flags_are_strict_and_documented(capsys):
  spec = {"out_dir": dict(help="where"), "seed": dict(default=0, type=common.nonnegative_int,
                                                      help="the seed"),
          "mode": dict(default="a", choices=["a", "b"], help="a mode")}
  args = common.flags("demo", "Demo.", spec, ["--out_dir=x y", "--seed=3"])
  assert (args.out_dir, args.seed, args.mode) == ("x y", 3, "a")
  assert args.command == "python -m data_prep.demo '--out_dir=x y' --seed=3"
  for bad in (["--out=x"], ["--out_dir=x", "--seed=-1"], ["--out_dir=x", "--mode=c"], [],
              ["--out_dir=x", "--seed=1.5"]):
    with pytest.raises(SystemExit) as e:
      common.flags("demo", "Demo.", spec, bad)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
  with pytest.raises(SystemExit) as e:
    common.flags("demo", "Demo.", spec, ["--help"])
  out = capsys.readouterr().out
  assert e.value.code == 0 and out.startswith("usage: python -m data_prep.demo")
  assert "the seed (default: 0)" in out and "{a,b}" in out
