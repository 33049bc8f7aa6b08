"""experiments.sweep and experiments.analyze on tiny runs."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from experiments import analyze, run, runs, sweep

TINY = ["--tiny", "--epochs=2", "--limit_train=128"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("run")
  assert run.main([*TINY, "--method=joint", f"--workdir={workdir}"]) == 0
  return str(workdir)


@pytest.mark.slow
def test_traces_figure(tiny_run, tmp_path):
  numbers = analyze.traces([tiny_run], str(tmp_path / "fig1"))
  rows = runs.rows(tiny_run)
  assert numbers["joint seed 0/audio"]["trace"] == [r["trace_audio"] for r in rows]
  assert numbers["joint seed 0/audio"]["window"] == [r["window"] > 0.5 for r in rows]
  assert (tmp_path / "fig1.png").stat().st_size > 1000


@pytest.mark.slow
def test_window_statistics(tmp_path):
  workdir = tmp_path / "inforeg"
  assert run.main([*TINY, "--epochs=4", "--window=whole", "--inforeg.warmup_epochs=1",
                   f"--workdir={workdir}"]) == 0
  numbers = analyze.windows([str(workdir)], str(tmp_path / "windows"))
  rows = runs.rows(str(workdir))
  stats = numbers["runs"]["inforeg warmup_epochs=1 seed 0"]  # the label names changed options
  for m in ("audio", "visual"):
    assert stats[m]["epochs_regulated"] == sum(r[f"alpha_{m}"] > 0 for r in rows)
    assert stats[m]["epochs_open"] == sum(r[f"window_{m}"] > 0.5 for r in rows)
  assert rows[0]["alpha_audio"] + rows[0]["alpha_visual"] == 0  # the warm-up epoch
  assert stats["audio"]["epochs_regulated"] + stats["visual"]["epochs_regulated"] >= 3


@pytest.mark.slow
def test_gradient_cosine_figure(tiny_run, tmp_path):
  numbers = analyze.gradcos(tiny_run, "visual", 3, str(tmp_path / "fig4"))
  cos = np.array(numbers["cosine"])
  assert cos.shape == (3, 3)
  np.testing.assert_allclose(np.diag(cos), 1.0, rtol=1e-5)
  np.testing.assert_allclose(cos, cos.T, rtol=1e-6)
  assert json.loads((tmp_path / "fig4.json").read_text())["modality"] == "visual"


@pytest.mark.slow
def test_tsne_figure(tiny_run, tmp_path):
  numbers = analyze.tsne(tiny_run, "audio", 60, str(tmp_path / "fig6"))
  assert np.array(numbers["xy"]).shape == (60, 2) and len(numbers["label"]) == 60
  assert (tmp_path / "fig6.png").exists()


@pytest.mark.slow
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
  # another sweep into the same folder tabulates its own runs only
  assert sweep.main([f"--out={tmp_path}", "--seeds=1", "--grid=inforeg.beta=0.9", *TINY,
                     "--epochs=1"]) == 0
  table = (tmp_path / "table.md").read_text()
  rows = [line for line in table.splitlines() if line.startswith("| synthetic")]
  assert len(rows) == 1 and "| 0.9 |" in rows[0] and rows[0].endswith("| 1 |")
  # new settings for the same folders are refused before anything trains, not pooled
  with pytest.raises(SystemExit) as e:
    sweep.main([*flags, "--epochs=2"])
  assert str(e.value).startswith(f"error: {tmp_path}/inforeg.beta=0.5/seed0 holds a run of "
                                 "another config (--epochs=1 -> 2)")
  assert "== inforeg.beta" not in capsys.readouterr().out


@pytest.mark.parametrize("seeds,says", [("0,x", "'x' is not a seed"), ("-1", "'-1' is not"),
                                        ("0,1,0", "seed 0 is given twice"), ("", "'' is not")])
def test_sweep_refuses_a_bad_seed_list(tmp_path, seeds, says):
  with pytest.raises(SystemExit, match=says):
    sweep.main([f"--out={tmp_path}", f"--seeds={seeds}", *TINY])
  assert not os.listdir(tmp_path)


@pytest.mark.parametrize("flags,says", [
    (["--grid=learning_rate=0.1,0.10"], "would be one run"),  # one value written twice
    (["--grid=learning_rate=0.1", "--learning_rate=0.2"], "both set it: give one"),
])
def test_sweep_refuses_a_grid_that_names_one_run_twice(tmp_path, flags, says):
  with pytest.raises(SystemExit, match=says):
    sweep.main([f"--out={tmp_path}", *TINY, *flags])
  assert not os.listdir(tmp_path)


def test_a_sweep_over_a_config_files_setting_tabulates_it(tmp_path, monkeypatch):
  # --grid=config.epochs=... trained every run, then its table refused "config.epochs"
  from tests.test_runs import write_run
  monkeypatch.setattr(sweep, "train", lambda cfg: write_run(
      cfg.workdir, seed=cfg.seed, epochs=cfg.epochs, method=cfg.method))
  cfg = tmp_path / "cfg.py"
  cfg.write_text("config = dict(epochs=1)\n")
  out = tmp_path / "s"
  assert sweep.main([f"--out={out}", "--grid=config.epochs=1,2", f"--config={cfg}", "--tiny",
                     "--limit_train=128"]) == 0
  assert "| epochs |" in (out / "table.md").read_text()
  for flags, says in ((["--epochs=3"], "both set it"), (["--grid=epochs=4"], "given twice"),
                      (["--config.seed=1"], "the sweep sets --seed")):
    with pytest.raises(SystemExit, match=says):
      sweep.main([f"--out={tmp_path}/t", "--grid=config.epochs=1,2", f"--config={cfg}", *flags])


def test_sweep_without_the_data_is_one_line(tmp_path):
  with pytest.raises(SystemExit) as e:
    sweep.main([f"--out={tmp_path}", "--dataset=cremad", f"--data_dir={tmp_path}/nothing"])
  assert str(e.value).startswith("error: ") and "python -m data_prep.cremad" in str(e.value)
  assert "\n" not in str(e.value)


def snapshot(folder):
  return {os.path.relpath(os.path.join(d, f), folder): os.stat(os.path.join(d, f)).st_mtime_ns
          for d, dirs, files in os.walk(folder) for f in files + dirs}


@pytest.mark.slow
def test_gradcos_skips_a_damaged_latest_checkpoint_and_writes_nothing_into_the_run(
    tiny_run, tmp_path, capsys):
  run_dir = str(tmp_path / "run")
  shutil.copytree(tiny_run, run_dir)
  for folder, _, files in os.walk(os.path.join(run_dir, "checkpoints", "1")):
    for f in files:
      if f != "_CHECKPOINT_METADATA":
        with open(os.path.join(folder, f), "wb") as fh:
          fh.write(b"\x00garbage")
  before = snapshot(run_dir)
  numbers = analyze.gradcos(run_dir, "audio", 2, str(tmp_path / "fig4"))
  assert np.array(numbers["cosine"]).shape == (2, 2)
  assert "could not read checkpoint 1" in capsys.readouterr().err
  assert snapshot(run_dir) == before  # the damaged checkpoint kept, nothing added


@pytest.mark.slow
def test_analyses_refuse_bad_runs_and_flags_in_one_line(tiny_run, tmp_path):
  def fails(says, fn, *args):
    with pytest.raises(SystemExit) as e:
      fn(*args)
    assert str(e.value).startswith("error: ") and "\n" not in str(e.value), str(e.value)
    assert says in str(e.value), str(e.value)

  out = str(tmp_path / "fig")
  fails(f"{tmp_path} holds no run", analyze.traces, [str(tmp_path)], out)  # no run files
  damaged = tmp_path / "damaged"
  shutil.copytree(tiny_run, damaged)
  text = (damaged / "metrics.jsonl").read_text()
  (damaged / "metrics.jsonl").write_text(text[:-20])  # the last line cut short
  fails(f"{damaged}/metrics.jsonl: line 2 is not", analyze.windows, [str(damaged)], out)
  (damaged / "metrics.jsonl").write_text("")
  fails("holds no epoch", analyze.traces, [str(damaged)], out)
  (damaged / "summary.json").write_text("{")
  fails(f"{damaged}/summary.json is not valid JSON", analyze.gradcos, str(damaged), "audio", 2,
        out)
  (damaged / "summary.json").unlink()
  fails("has no summary.json", analyze.gradcos, str(damaged), "audio", 2, out)
  fails("--modality=vision: ", analyze.gradcos, tiny_run, "vision", 2, out)
  fails("--modality=vision: ", analyze.tsne, tiny_run, "vision", 50, out)
  fails("--batches=1: ", analyze.gradcos, tiny_run, "audio", 1, out)
  fails("has 8 batches of 16; pass --batches=8", analyze.gradcos, tiny_run, "audio", 9, out)
  assert not os.path.exists(out + ".json")


@pytest.mark.slow
def test_analyze_cli_error_is_one_line_without_traceback(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "experiments.analyze", "gradcos", str(tmp_path),
                         "--modality=audio", f"--out={tmp_path}/fig"],
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0 and "Traceback" not in proc.stderr
  assert proc.stderr.strip().splitlines() == [f"error: {tmp_path} has no summary.json (not a "
                                              "finished run folder; analyses need the run's "
                                              "config)"]


def test_curve_plots_a_swept_table_against_joint_training(tmp_path):
  row = lambda name, acc: {"name": name, "runs": [{"seed": 0}, {"seed": 1}],
                           "acc": {"mean": acc, "std": 0.01},
                           "acc_audio": {"mean": acc - 0.2, "std": 0.02}}
  doc = {"dataset": "synthetic",  # experiments.results' format
         "tables": {"tuned": {"rows": [row("joint default", 0.8)], "descriptive": []},
                    "beta": {"rows": [row("inforeg beta=0.1", 0.7), row("inforeg beta=0.9", 0.9)],
                             "descriptive": []}}}
  path = tmp_path / "r.json"
  path.write_text(json.dumps(doc))
  numbers = analyze.curve(str(path), "beta", str(tmp_path / "fig7"))
  assert numbers["x_name"] == "beta" and numbers["x"] == [0.1, 0.9]
  assert numbers["acc"]["mean"] == [0.7, 0.9] and numbers["acc"]["joint"] == 0.8
  assert numbers["acc_audio"]["mean"] == pytest.approx([0.5, 0.7])
  assert (tmp_path / "fig7.png").stat().st_size > 0
  with pytest.raises(SystemExit, match="no finished 'threshold' table"):
    analyze.curve(str(path), "threshold", str(tmp_path / "fig8"))
  # a reference over other folds (a --folds=0 table beside one over every fold) is none
  doc["tables"]["tuned"]["folds"], doc["tables"]["beta"]["folds"] = [0, 1, 2], [0]
  path.write_text(json.dumps(doc))
  numbers = analyze.curve(str(path), "beta", str(tmp_path / "fig7"))
  assert numbers["acc"]["joint"] is None


def test_analyze_takes_no_abbreviations(tmp_path, capsys):
  for argv in (["windows", str(tmp_path), "--ou=x"], ["gradcos", str(tmp_path), "--mod=audio",
                                                       "--out=x"]):
    with pytest.raises(SystemExit) as e:  # (was read as --out, --modality)
      analyze.main(argv)
    assert e.value.code == 2 and "the following arguments are required" in capsys.readouterr().err


def test_eq11_noise_tells_learning_from_estimation_noise():
  from experiments.analyze import eq11_noise
  rows = [{"trace_audio": t, "trace_se_audio": se} for t, se in
          ((1.0, 0.01), (1.10, 0.01), (1.12, 0.01), (1.40, 0.2), (1.50, 0.2))]
  out = eq11_noise(rows, "audio", 0.04)
  e = {x["epoch"]: x for x in out["epochs"]}
  # epoch 2 reads epochs 0 -> 1: a rise of 0.0909 above K with noise 0.0129: learning
  assert e[2]["open"] and not e[2]["within_noise"]
  assert e[2]["rise"] == round(0.1 / 1.1, 4)
  # epoch 4 reads epochs 2 -> 3: a rise of 0.2 with noise 0.164: could be estimation noise
  assert e[4]["open"] and e[4]["within_noise"]
  assert (out["decisions"], out["opened"], out["opened_within_noise"]) == (3, 2, 1)
  assert eq11_noise([{"trace_audio": 1.0}], "audio", 0.04) == {}  # runs without trace_se


def test_sweep_keeps_a_finished_run_only_of_its_config_and_data(tmp_path):
  from inforeg_jax.data.records import identity
  from inforeg_jax.flags import parse_flags
  from tests.test_runs import write_run
  data_dir, workdir = tmp_path / "data", str(tmp_path / "w")
  data_dir.mkdir()
  manifest = {"version": "v-1", "name": "avmnist", "files": {"train/x.npy": {"sha256": "00"}}}
  (data_dir / "manifest.json").write_text(json.dumps(manifest))
  cfg, _ = parse_flags(["--dataset=avmnist", f"--data_dir={data_dir}", f"--workdir={workdir}"])
  config = {k: v for k, v in cfg.to_dict().items() if k != "seed"}
  write_run(workdir, seed=0, data=identity(manifest), **config)
  assert sweep.check_existing(workdir, cfg) == "done"
  manifest["version"] = "v-2"  # the data prepared again since
  (data_dir / "manifest.json").write_text(json.dumps(manifest))
  with pytest.raises(SystemExit) as e:
    sweep.check_existing(workdir, cfg)
  assert str(e.value) == (f"error: {workdir} holds a run on other data (avmnist v-1; {data_dir} "
                          "holds avmnist v-2): sweep into another --out, or remove that folder "
                          "to rerun it")
  write_run(workdir, seed=1, data=identity(manifest), **config)  # another seed's run
  with pytest.raises(SystemExit, match="holds a run of another config .--seed=1 -> 0"):
    sweep.check_existing(workdir, cfg)
  write_run(workdir, seed=0, rows=2, data=identity(manifest), **{**config, "epochs": 4})
  os.remove(os.path.join(workdir, "summary.json"))  # cut short, before its first checkpoint
  assert sweep.check_existing(workdir, cfg) == "fresh"


def test_a_file_where_an_output_folder_belongs_is_named_in_one_line(tmp_path):
  from experiments import os_error_line
  (tmp_path / "out").write_text("a file")
  for make in (lambda: os.makedirs(tmp_path / "out" / "sub"),  # EEXIST on the file itself
               lambda: open(tmp_path / "out" / "sub" / "fig.json", "w")):  # ENOTDIR below it
    with pytest.raises(OSError) as e:
      make()
    line = os_error_line(e.value)
    assert line.startswith(f"error: {tmp_path / 'out'} is a file where a folder is wanted"), line
  with pytest.raises(OSError) as e:  # other errors keep the OS's words
    open(tmp_path / "missing" / "x")
  assert os_error_line(e.value) == f"error: No such file or directory: {tmp_path}/missing/x"
