"""experiments.sweep and experiments.analyze on tiny runs."""

import json

import numpy as np
import pytest

from experiments import analyze, run, sweep

TINY = ["--tiny", "--epochs=2", "--limit_train=128"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("run")
  assert run.main([*TINY, "--method=joint", f"--workdir={workdir}"]) == 0
  return str(workdir)


def test_traces_figure(tiny_run, tmp_path):
  numbers = analyze.traces([tiny_run], str(tmp_path / "fig1"))
  rows = analyze.read_rows(tiny_run)
  assert numbers["joint seed 0/audio"]["trace"] == [r["trace_audio"] for r in rows]
  assert numbers["joint seed 0/audio"]["window"] == [r["window"] > 0.5 for r in rows]
  assert (tmp_path / "fig1.png").stat().st_size > 1000


def test_window_statistics(tmp_path):
  workdir = tmp_path / "inforeg"
  assert run.main([*TINY, "--epochs=4", "--window=whole", "--inforeg.warmup_epochs=1",
                   f"--workdir={workdir}"]) == 0
  numbers = analyze.windows([str(workdir)], str(tmp_path / "windows"))
  rows = analyze.read_rows(str(workdir))
  stats = numbers["runs"]["inforeg warmup_epochs=1 seed 0"]  # the label names changed options
  for m in ("audio", "visual"):
    assert stats[m]["epochs_regulated"] == sum(r[f"alpha_{m}"] > 0 for r in rows)
    assert stats[m]["epochs_open"] == sum(r[f"window_{m}"] > 0.5 for r in rows)
  assert rows[0]["alpha_audio"] + rows[0]["alpha_visual"] == 0  # the warm-up epoch
  assert stats["audio"]["epochs_regulated"] + stats["visual"]["epochs_regulated"] >= 3


def test_gradient_cosine_figure(tiny_run, tmp_path):
  numbers = analyze.gradcos(tiny_run, "visual", 3, str(tmp_path / "fig4"))
  cos = np.array(numbers["cosine"])
  assert cos.shape == (3, 3)
  np.testing.assert_allclose(np.diag(cos), 1.0, rtol=1e-5)
  np.testing.assert_allclose(cos, cos.T, rtol=1e-6)
  assert json.loads((tmp_path / "fig4.json").read_text())["modality"] == "visual"


def test_tsne_figure(tiny_run, tmp_path):
  numbers = analyze.tsne(tiny_run, "audio", 60, str(tmp_path / "fig6"))
  assert np.array(numbers["xy"]).shape == (60, 2) and len(numbers["label"]) == 60
  assert (tmp_path / "fig6.png").exists()


def test_sweep_runs_the_grid_over_seeds_and_resumes(tmp_path, capsys):
  flags = [f"--out={tmp_path}", "--seeds=0,1", "--grid=inforeg.beta=0.5,0.9", *TINY, "--epochs=1"]
  assert sweep.main(flags) == 0
  summaries = sorted(p.parent.name + "/" + p.parent.parent.name
                     for p in tmp_path.rglob("summary.json"))
  assert summaries == ["seed0/inforeg.beta=0.5", "seed0/inforeg.beta=0.9", "seed1/inforeg.beta=0.5",
                       "seed1/inforeg.beta=0.9"]
  table = (tmp_path / "table.md").read_text()
  assert "| inforeg.beta |" in table and table.count("| 2 |") == 2
  capsys.readouterr()
  assert sweep.main(flags) == 0  # everything done: no run starts again
  assert "== inforeg.beta" not in capsys.readouterr().out


def test_curve_plots_a_swept_table_against_joint_training(tmp_path):
  row = lambda name, acc: {"name": name, "seeds": [0, 1], "acc": {"mean": acc, "std": 0.01},
                           "acc_audio": {"mean": acc - 0.2, "std": 0.02}}
  doc = {"dataset": "synthetic",
         "tables": {"methods": [row("joint", 0.8)],
                    "beta": [row("inforeg beta=0.1", 0.7), row("inforeg beta=0.9", 0.9)]}}
  path = tmp_path / "r.json"
  path.write_text(json.dumps(doc))
  numbers = analyze.curve(str(path), "beta", str(tmp_path / "fig7"))
  assert numbers["x_name"] == "beta" and numbers["x"] == [0.1, 0.9]
  assert numbers["acc"]["mean"] == [0.7, 0.9] and numbers["acc"]["joint"] == 0.8
  assert numbers["acc_audio"]["mean"] == pytest.approx([0.5, 0.7])
  assert (tmp_path / "fig7.png").stat().st_size > 0
  with pytest.raises(SystemExit, match="no finished 'threshold' table"):
    analyze.curve(str(path), "threshold", str(tmp_path / "fig8"))
