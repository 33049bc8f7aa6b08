"""The prepared-records format: one unit (a kill at any point leaves the old or the new
dataset), checked once at load (every damage is one DataError naming the file), the optional
validation split, the synthetic generator's, and the on-device frame sampling."""

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from inforeg_jax.data import Dataset, load_dataset, records, select_modalities
from inforeg_jax.data.augment import frame_indices, frames_preprocess
from inforeg_jax.data.synthetic import SyntheticSpec, make_synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WRITER = r"""
import os, signal, sys
import numpy as np
from inforeg_jax.data import records

out, value, point = sys.argv[1], float(sys.argv[2]), sys.argv[3]
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
files = [0]
finish = records.Preparation._finish_file
def finish_file(self, rel):
  finish(self, rel)
  files[0] += 1
  if point == "after_first_file" and files[0] == 1 or point == "after_train" and files[0] == 2:
    die()
records.Preparation._finish_file = finish_file
replace = os.replace
def replace_(src, dst):
  if point == "before_swap" and dst.endswith("manifest.json"):
    die()
  replace(src, dst)
os.replace = replace_
if point == "after_swap":
  records.remove_old_versions = lambda *a, **k: die()
with records.Preparation(out) as prep:
  for split, n in (("train", 6), ("val", 2), ("test", 3)):
    prep.write_split(split, {"x": np.full((n, 4), value, np.float32),
                             "label": np.arange(n, dtype=np.int32) % 2})
  prep.commit({"name": "mosi", "num_classes": 2, "kinds": {"x": "sequence"},
               "frame_crop": None, "counts": {"train": {"total": 6}, "val": {"total": 2},
                                              "test": {"total": 3}}})
"""


def write(out, value=1.0, point="none"):
  return subprocess.run([sys.executable, "-c", WRITER, str(out), str(value), point], cwd=ROOT,
                        capture_output=True, text=True)


def prepare(out, arrays=None, counts=None, num_classes=2, **extra):
  """A small prepared dataset written in-process; ``arrays`` {split: {name: array}}."""
  arrays = arrays or {s: {"x": np.full((n, 4), 1.0, np.float32),
                          "label": np.arange(n, dtype=np.int32) % 2}
                      for s, n in (("train", 6), ("val", 2), ("test", 3))}
  with records.Preparation(str(out)) as prep:
    for split, a in arrays.items():
      prep.write_split(split, a)
    return prep.commit({"name": "mosi", "num_classes": num_classes, "kinds": {"x": "sequence"},
                        "frame_crop": None, "command": f"python -m data_prep.mosi --out_dir={out}",
                        "counts": counts or {s: {"total": len(a["label"])}
                                             for s, a in arrays.items()}, **extra})


def npy(out, rel):
  manifest = json.loads((out / "manifest.json").read_text())
  return out / manifest["version"] / rel


def data_error(out, match):
  with pytest.raises(records.DataError, match=match) as e:
    records.load_prepared("mosi", str(out))
  message = str(e.value)
  assert "\n" not in message and "prepare the data again: python -m data_prep.mosi" in message
  return message


def test_writes_a_version_and_loads_every_split(tmp_path):
  out = tmp_path / "d"
  m = prepare(out)
  assert m["format"] == records.FORMAT and (out / m["version"] / "val" / "x.npy").exists()
  assert set(m["files"]) == {f"{s}/{k}.npy" for s in ("train", "val", "test")
                             for k in ("x", "label")}
  assert m["files"]["train/x.npy"] == {"bytes": (out / m["version"] / "train" / "x.npy")
                                       .stat().st_size, "shape": [6, 4], "dtype": "<f4",
                                       "sha256": m["files"]["train/x.npy"]["sha256"]}
  data = records.load_prepared("mosi", str(out))
  assert isinstance(data, Dataset) and data.val is not None
  assert (len(data.train["label"]), len(data.val["label"]), len(data.test["label"])) == (6, 2, 3)
  assert select_modalities(data, ["x"]).val.keys() == {"x", "label"}
  assert m["splits"]["val"] == {"dir": f"{m['version']}/val", "rows": 2}
  # write_dataset: the same from in-memory splits, counts filled in
  w = records.write_dataset(str(tmp_path / "w"), {s: {"x": np.ones((4, 4), np.float32),
                                                      "label": np.array([0, 1, 1, 1], np.int32)}
                                                  for s in ("train", "test")},
                            {"name": "mosi", "num_classes": 2, "kinds": {"x": "sequence"},
                             "frame_crop": None})
  assert w["counts"]["test"] == {"total": 4, "per_class": [1, 3]}
  assert records.load_prepared("mosi", str(tmp_path / "w")).val is None
  # without a val split the field stays None
  out2 = tmp_path / "noval"
  prepare(out2, {s: {"x": np.ones((3, 4), np.float32), "label": np.zeros(3, np.int32)}
                 for s in ("train", "test")})
  assert records.load_prepared("mosi", str(out2)).val is None


@pytest.mark.parametrize("point", ["after_first_file", "after_train", "before_swap",
                                   "after_swap", "none"])
def test_a_kill_at_any_point_leaves_the_old_or_the_new_dataset(tmp_path, point):
  out = tmp_path / "d"
  assert write(out, 1.0).returncode == 0
  proc = write(out, 2.0, point)
  assert proc.returncode == (0 if point == "none" else -signal.SIGKILL), proc.stderr
  data = records.load_prepared("mosi", str(out))
  values = {float(np.asarray(split["x"]).mean()) for split in (data.train, data.val, data.test)}
  assert values == ({2.0} if point in ("after_swap", "none") else {1.0})
  # the next preparation completes and leaves one version folder
  assert write(out, 3.0).returncode == 0
  assert len([p for p in out.iterdir() if p.name.startswith("v-")]) == 1
  assert float(np.asarray(records.load_prepared("mosi", str(out)).test["x"]).mean()) == 3.0


def test_a_failed_preparation_removes_its_version(tmp_path):
  out = tmp_path / "d"
  prepare(out)
  with pytest.raises(RuntimeError):
    with records.Preparation(str(out)) as prep:
      prep.write_split("train", {"x": np.zeros((2, 4), np.float32)})
      raise RuntimeError("disk full")
  assert len([p for p in out.iterdir() if p.name.startswith("v-")]) == 1
  records.load_prepared("mosi", str(out))


def test_damaged_manifest(tmp_path):
  out = tmp_path / "d"
  prepare(out)
  text = (out / "manifest.json").read_text()
  (out / "manifest.json").write_text(text[:len(text) // 2])
  message = data_error(out, "manifest.json is damaged")
  assert str(out / "manifest.json") in message


@pytest.mark.parametrize("field,value", [("num_classes", 3), ("kinds", {"x": "frames"}),
                                         ("splits", {})])
def test_a_manifest_field_edited_by_hand_is_caught(tmp_path, field, value):
  """The manifest's own fields (classes, kinds, splits) are covered by its checksum, as the
  files are by theirs: an edit is one line at load, never a run on a changed definition."""
  out = tmp_path / "d"
  prepare(out)
  manifest = json.loads((out / "manifest.json").read_text())
  manifest[field] = value
  (out / "manifest.json").write_text(json.dumps(manifest))
  data_error(out, "do not match its checksum")


def test_older_format_is_refused(tmp_path):
  out = tmp_path / "d"
  (out / "train").mkdir(parents=True)
  (out / "manifest.json").write_text(json.dumps({"name": "mosi", "num_classes": 2,
                                                 "kinds": {"x": "sequence"}}))
  data_error(out, "older data_prep")


@pytest.mark.parametrize("damage", ["truncated", "header", "bytes", "missing"])
def test_damaged_npy_names_the_file(tmp_path, damage):
  out = tmp_path / "d"
  prepare(out)
  path = npy(out, "train/x.npy")
  raw = bytearray(path.read_bytes())
  if damage == "truncated":
    path.write_bytes(raw[:len(raw) - 10])
    match = "has .* bytes, the manifest says"
  elif damage == "header":
    raw[:6] = b"garbag"
    path.write_bytes(raw)
    match = "not a readable .npy"
  elif damage == "bytes":
    raw[-8:] = np.random.default_rng(0).bytes(8)
    path.write_bytes(raw)
    match = "sha256 differs"
  else:
    path.unlink()
    match = "is missing"
  assert str(path) in data_error(out, match)


@pytest.mark.parametrize("label", [200, -3])
def test_labels_out_of_range(tmp_path, label):
  out = tmp_path / "d"
  arrays = {s: {"x": np.ones((3, 4), np.float32), "label": np.array([0, label, 1], np.int32)}
            for s in ("train", "test")}
  prepare(out, arrays)
  assert str(npy(out, "test/label.npy")) in data_error(out, f"label {label} \\(row 1\\)")


def test_non_finite_inputs_and_unequal_rows(tmp_path):
  x = np.ones((3, 4), np.float32)
  x[2, 1] = np.nan
  prepare(tmp_path / "nan", {s: {"x": x, "label": np.zeros(3, np.int32)}
                             for s in ("train", "test")})
  data_error(tmp_path / "nan", "non-finite values \\(row 2\\)")
  prepare(tmp_path / "rows", {s: {"x": np.ones((4, 4), np.float32),
                                  "label": np.zeros(3, np.int32)} for s in ("train", "test")})
  data_error(tmp_path / "rows", "x.npy has 4 rows, test/label.npy has 3")
  prepare(tmp_path / "counts", counts={"train": {"total": 7}, "val": {"total": 2},
                                       "test": {"total": 3}})
  data_error(tmp_path / "counts", "the manifest counts 7")


def test_checked_once_then_only_when_a_file_changes(tmp_path, monkeypatch):
  out = tmp_path / "d"
  prepare(out)
  calls = []
  real = records.sha256_file
  monkeypatch.setattr(records, "sha256_file", lambda p: calls.append(p) or real(p))
  records.load_prepared("mosi", str(out))
  assert len(calls) == 6 and (out / records.STAMP).exists()
  calls.clear()
  records.load_prepared("mosi", str(out))
  assert calls == []
  os.utime(npy(out, "val/x.npy"), ns=(1, 1))  # same bytes, another mtime: rehashed once
  records.load_prepared("mosi", str(out))
  assert calls == [str(npy(out, "val/x.npy"))]


def test_run_prints_one_error_line(tmp_path, capsys):
  from experiments import run

  out = tmp_path / "d"
  prepare(out)
  raw = bytearray(npy(out, "train/x.npy").read_bytes())
  raw[-4:] = b"\xff\xff\xff\xff"
  npy(out, "train/x.npy").write_bytes(raw)
  assert run.main(["--dataset=mosi", f"--data_dir={out}", "--tiny", "--epochs=1",
                   f"--workdir={tmp_path / 'w'}"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ") and "train/x.npy" in err[0]


def test_synthetic_val_split_leaves_train_and_test_unchanged():
  spec = SyntheticSpec(num_train=60, num_test=20, num_val=30)
  with_val, without = make_synthetic(spec), make_synthetic(SyntheticSpec(num_train=60,
                                                                        num_test=20, num_val=0))
  assert "val" not in without and len(with_val["val"]["label"]) == 30
  for split in ("train", "test"):
    for key in ("audio", "visual", "label"):
      np.testing.assert_array_equal(with_val[split][key], without[split][key])
  data = load_dataset("synthetic")
  assert len(data.val["label"]) == SyntheticSpec().num_val == 1000


def test_frame_sampling():
  key = jax.random.key(0)
  indices = jax.jit(frame_indices, static_argnums=(1, 2, 3, 4))
  idx = np.asarray(indices(key, 64, 9, 3, True))
  assert idx.shape == (64, 3) and (np.diff(idx, axis=1) > 0).all() and idx.max() <= 8
  assert len({tuple(r) for r in idx}) > 20  # random per example
  np.testing.assert_array_equal(np.asarray(indices(key, 2, 9, 3, False)), [[1, 4, 7], [1, 4, 7]])
  np.testing.assert_array_equal(np.asarray(indices(key, 1, 3, 3, True)), [[0, 1, 2]])
  frames = np.arange(2 * 9, dtype=np.uint8).reshape(2, 9, 1, 1, 1) * np.ones((1, 1, 8, 8, 3),
                                                                             np.uint8)
  batch = {"inputs": {"visual": frames}, "label": np.zeros(2, np.int32)}
  sampled, plain = frames_preprocess("visual", 4, 3), frames_preprocess("visual", 4)

  @jax.jit
  def run(batch, key):
    return (sampled(batch, key, False)["inputs"]["visual"], plain(batch, key, False)["inputs"]
            ["visual"], sampled(batch, key, True)["inputs"]["visual"])

  evaluation, everything, train = map(np.asarray, run(batch, key))
  assert evaluation.shape == (2, 3, 4, 4, 3)
  assert everything.shape == (2, 9, 4, 4, 3)  # datasets without frames_per_sample: as before
  np.testing.assert_allclose(evaluation[1], everything[1, [1, 4, 7]], atol=1e-6)
  assert train.shape == (2, 3, 4, 4, 3) and np.isfinite(train).all()


def test_an_interrupt_right_after_the_swap_keeps_the_new_version(tmp_path, monkeypatch):
  out = tmp_path / "d"
  prepare(out)
  real = os.replace

  def replace(src, dst):  # Ctrl-C lands between the manifest's swap and `committed = True`
    real(src, dst)
    if str(dst).endswith(records.MANIFEST):
      raise KeyboardInterrupt

  monkeypatch.setattr(records.os, "replace", replace)
  with pytest.raises(KeyboardInterrupt):
    prepare(out, {s: {"x": np.full((n, 4), 5.0, np.float32), "label": np.zeros(n, np.int32)}
                  for s, n in (("train", 4), ("test", 2))})
  monkeypatch.setattr(records.os, "replace", real)
  data = records.load_prepared("mosi", str(out))  # the manifest's version was not removed
  assert float(np.asarray(data.train["x"]).mean()) == 5.0


def test_stale_versions(tmp_path):
  out = tmp_path / "d"
  m = prepare(out)
  (out / "v-stale" / "train").mkdir(parents=True)
  records.remove_stale_versions(str(out))
  assert [p.name for p in out.glob("v-*")] == [m["version"]]
  (out / "v-stale").mkdir()
  (out / records.MANIFEST).write_text("{ damaged")  # unsure what is live: nothing removed
  records.remove_stale_versions(str(out))
  assert sorted(p.name for p in out.glob("v-*")) == sorted([m["version"], "v-stale"])
  (out / records.MANIFEST).unlink()  # no dataset yet: every version folder is partial
  records.remove_stale_versions(str(out))
  assert not list(out.glob("v-*"))
