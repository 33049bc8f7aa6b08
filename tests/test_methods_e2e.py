"""Every method and fusion end to end on tiny presets: the synthetic data and AV-MNIST."""

import json

import pytest

from experiments import run
from inforeg_jax.methods import names
from tests.test_prep_avmnist import make_fixture, prep

TINY = ["--tiny", "--epochs=2"]


def own(method):
  """The method's own options for a tiny run (an option of another method is refused)."""
  return ["--inforeg.warmup_epochs=0"] if method.startswith("inforeg") else []


@pytest.fixture(scope="module")
def avmnist_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("avmnist")
  fsdd, mnist = make_fixture(root)
  out = root / "out"
  assert prep(f"--fsdd_dir={fsdd}", f"--mnist_dir={mnist}", f"--out_dir={out}").returncode == 0
  return out


def summary_of(workdir):
  with open(workdir / "summary.json") as f:
    return json.load(f)


@pytest.mark.parametrize("method", names())
def test_every_method_on_synthetic(tmp_path, method):
  assert run.main([*TINY, *own(method), f"--method={method}", "--limit_train=128",
                   "--window=whole", f"--workdir={tmp_path}"]) == 0
  s = summary_of(tmp_path)
  assert s["method"] == method and 0 <= s["final"]["acc"] <= 1
  for png in ("accuracy.png", "trace.png"):
    assert (tmp_path / png).stat().st_size > 1000
  assert any((tmp_path / "tensorboard").iterdir())


@pytest.mark.parametrize("method", ["inforeg", "agm", "greedy"])  # the others: synthetic
def test_methods_on_avmnist(tmp_path, avmnist_dir, method):
  assert run.main([*TINY, *own(method), f"--method={method}", "--dataset=avmnist",
                   "--batch_size=8", f"--data_dir={avmnist_dir}", f"--workdir={tmp_path}"]) == 0
  assert summary_of(tmp_path)["dataset"] == "avmnist"


@pytest.mark.parametrize("fusion", ["sum", "film", "gated"])
def test_every_fusion(tmp_path, fusion):
  assert run.main([*TINY, *own("inforeg"), "--method=inforeg", f"--fusion={fusion}",
                   "--limit_train=128", f"--workdir={tmp_path}"]) == 0
  assert set(summary_of(tmp_path)["final"]) >= {"acc", "acc_audio", "acc_visual"}


@pytest.mark.parametrize("window", ["prime", "other"])
def test_window_modes_gate_a_baseline(tmp_path, window):
  assert run.main([*TINY, "--method=ogm_ge", f"--window={window}", "--limit_train=128",
                   f"--workdir={tmp_path}"]) == 0
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  # two epochs: no trace history yet, so never in the window; "prime" never modulates
  coef = [r["coef_audio"] for r in rows] + [r["coef_visual"] for r in rows]
  if window == "prime":
    assert all(c == 1.0 for c in coef)
  else:
    assert any(c < 1.0 for c in coef)
