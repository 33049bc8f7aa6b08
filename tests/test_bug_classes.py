"""Bug classes that got past a review with planted bugs: each section covers one class (the
kind of mistake, not the one line), through the public entry points: `trainer.train`,
`make_config`, the models, the method registry and `data_prep.avmnist`'s functions.

1. validation metrics computed on the wrong split;
2. a baseline's modulation window losing its first or last epoch (or gaining one);
3. a fusion's unimodal loss training the other modality's encoder;
4. ``--overwrite`` losing the old run when the new one saves no epoch;
5. the AV-MNIST image PCA fitted on more than the training images.
"""

import dataclasses
import os
import shutil
import signal
import typing

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from data_prep import avmnist
from inforeg_jax import checkpoint, methods, model_zoo, models, trainer
from inforeg_jax.data import records
from tests.test_trainer_runs import rows, tiny, tiny_dataset


# ---- 1. validation metrics on the wrong split ---------------------------------------------------

RUN = dict(method="joint", epochs=3, learning_rate=0.05)


def distinct_splits():
  """The tiny dataset with its validation labels rotated by one class: a trained model scores
  differently on train, validation and test, so that a swapped split shows."""
  ds = tiny_dataset()
  val = dict(ds.val)
  val["label"] = ((val["label"] + 1) % ds.num_classes).astype(np.int32)
  return dataclasses.replace(ds, val=val)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """One tiny joint run of 3 epochs (every checkpoint kept): (workdir, dataset, summary)."""
  workdir = tmp_path_factory.mktemp("bug_classes") / "run"
  ds = distinct_splits()
  summary = trainer.train(tiny(workdir, **RUN), ds, progress=False)
  return workdir, ds, summary


def restore_state(workdir, epoch):
  mngr = checkpoint.manager(str(workdir))
  try:
    assert epoch in mngr.all_steps(), (epoch, mngr.all_steps())
    return mngr.restore(epoch, args=ocp.args.Composite(
        state=ocp.args.StandardRestore()))["state"]
  finally:
    mngr.close()


def evaluate(workdir, ds, epoch):
  """{split: {"acc", "loss", "acc_<m>", "loss_<m>", "pred"}} of the checkpoint of ``epoch``."""
  state = restore_state(workdir, epoch)
  model = model_zoo.build_model(tiny(workdir, **RUN), ds)
  variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
  out = {}
  for split in ("train", "val", "test"):
    arrays = getattr(ds, split)
    y = np.asarray(arrays["label"])
    o = model.apply(variables, {m: jnp.asarray(arrays[m]) for m in ds.modalities}, train=False)
    ce = lambda z: float(optax.softmax_cross_entropy_with_integer_labels(
        jnp.asarray(z, jnp.float32), y).mean())
    acc = lambda z: float(np.mean(np.argmax(np.asarray(z), -1) == y))
    out[split] = {"acc": acc(o["logits"]), "loss": ce(o["logits"]),
                  "pred": np.argmax(np.asarray(o["logits"]), -1)}
    for m in ds.modalities:
      out[split][f"acc_{m}"] = acc(o["unimodal_logits"][m])
      out[split][f"loss_{m}"] = ce(o["unimodal_logits"][m])
  return out


@pytest.fixture(scope="module")
def evaluations(trained):
  workdir, ds, _ = trained
  return [evaluate(workdir, ds, e) for e in range(RUN["epochs"])]


def test_logged_validation_and_test_metrics_are_those_splits(trained, evaluations):
  """Class 1: the loop evaluates the wrong split where the validation (or test) metrics belong:
  test or train where val belongs, val where test belongs, and the summary's model selection by
  another split than validation. Every logged number is checked against an independent
  evaluation (``model.apply``) of that epoch's checkpoint on each split."""
  workdir, ds, _ = trained
  last = evaluations[-1]
  # the data tells the splits apart (else a swapped split could not show)
  scores = {s: (last[s]["acc"], round(last[s]["loss"], 4)) for s in ("train", "val", "test")}
  assert len(set(scores.values())) == 3, scores
  history = rows(workdir)
  assert [r["epoch"] for r in history] == list(range(RUN["epochs"]))
  for row, ev in zip(history, evaluations):
    e = row["epoch"]
    assert row["val_acc"] == pytest.approx(ev["val"]["acc"], abs=1e-6), e
    assert row["val_loss"] == pytest.approx(ev["val"]["loss"], rel=1e-4), e
    assert row["acc"] == pytest.approx(ev["test"]["acc"], abs=1e-6), e
    assert row["test_loss"] == pytest.approx(ev["test"]["loss"], rel=1e-4), e
    for m in ds.modalities:
      assert row[f"val_acc_{m}"] == pytest.approx(ev["val"][f"acc_{m}"], abs=1e-6), (e, m)
      assert row[f"acc_{m}"] == pytest.approx(ev["test"][f"acc_{m}"], abs=1e-6), (e, m)
      assert row[f"test_loss_{m}"] == pytest.approx(ev["test"][f"loss_{m}"], rel=1e-4), (e, m)
  # the last epoch's saved test predictions are the test split's
  np.testing.assert_array_equal(np.load(workdir / "test_predictions.npy"), last["test"]["pred"])


def test_summary_selects_the_best_validation_epoch(trained, evaluations):
  """Class 1, the summary: 'selected' is the best epoch by the independent validation
  accuracy, with that epoch's validation and test accuracies; 'final' and 'best' as well."""
  _, _, summary = trained
  val = [ev["val"]["acc"] for ev in evaluations]
  test = [ev["test"]["acc"] for ev in evaluations]
  chosen = int(np.argmax(val))  # the first best, as max() over the history
  assert summary["selected"]["by"] == "val_acc"
  assert summary["selected"]["epoch"] == chosen
  assert summary["selected"]["val_acc"] == pytest.approx(val[chosen], abs=1e-6)
  assert summary["selected"]["acc"] == pytest.approx(test[chosen], abs=1e-6)
  assert summary["final"]["val_acc"] == pytest.approx(val[-1], abs=1e-6)
  assert summary["final"]["acc"] == pytest.approx(test[-1], abs=1e-6)
  assert summary["best"] == {"acc": pytest.approx(max(test), abs=1e-6),
                             "epoch": int(np.argmax(test))}
  # the data makes selection by validation and by test differ (else the two could mix up)
  assert np.argmax(val) != np.argmax(test), (val, test)


# ---- 2. the baselines' modulation windows are inclusive -----------------------------------------

WINDOWED = [n for n in methods.names() if methods.REGISTRY[n].options is not None
            and {"start_epoch", "end_epoch"} <= {
                f.name for f in dataclasses.fields(methods.REGISTRY[n].options)}]

# What a method's coefficients are at a step it does not modulate, given the previous step's:
# OGM-GE's scale 1, PMR's prototype weight 0, AGM's hooks keep the last scale (1 at first).
IDLE = {"ogm_ge": lambda prev: np.ones_like(prev), "pmr": lambda prev: np.zeros_like(prev),
        "agm": lambda prev: prev}


def test_every_windowed_method_is_covered():
  assert set(WINDOWED) == set(IDLE), "add the new method's unmodulated coefficient to IDLE"


@pytest.mark.parametrize("method", WINDOWED)
def test_modulation_window_is_inclusive_at_both_ends(tmp_path, method):
  """Class 2: a method's ``start_epoch``/``end_epoch`` window (documented inclusive in
  inforeg_jax/methods/options.py) made exclusive at either end, or widened: the coefficient must
  be modulated at every step of start_epoch..end_epoch and at no step before or after. Read from
  the per-step ``coef_*`` series a run records (its checkpoint's plot series), checked against
  metrics.jsonl's epoch means."""
  start, end, epochs = 1, 2, 4  # epochs 0 | 1 2 | 3
  group = methods.REGISTRY[method].group
  cfg = tiny(tmp_path / method, method=method, epochs=epochs,
             **{f"{group}.start_epoch": start, f"{group}.end_epoch": end})
  trainer.train(cfg, tiny_dataset(), progress=False)
  mods = tiny_dataset().modalities
  mngr = checkpoint.manager(str(tmp_path / method))
  try:
    series = checkpoint.latest_loop(mngr)["series"]
  finally:
    mngr.close()
  coefs = np.stack([np.asarray(series[f"coef_{m}"], np.float64) for m in mods], 1)  # [steps, M]
  steps = len(coefs) // epochs
  assert steps >= 2 and len(coefs) == epochs * steps
  history = rows(tmp_path / method)
  for r in history:  # the epoch means in metrics.jsonl are these steps'
    for i, m in enumerate(mods):
      mean = coefs[r["epoch"] * steps:(r["epoch"] + 1) * steps, i].mean()
      assert r[f"coef_{m}"] == pytest.approx(mean, rel=1e-5, abs=1e-7), (r["epoch"], m)
  prev = np.ones(len(mods))
  modulated = []
  for c in coefs:
    modulated.append(bool(np.any(c != IDLE[method](prev))))
    prev = c
  per_epoch = [modulated[e * steps:(e + 1) * steps] for e in range(epochs)]
  expected = [start <= e <= end for e in range(epochs)]
  assert [all(s) for s in per_epoch] == expected, per_epoch  # every step inside the window
  assert [any(s) for s in per_epoch] == expected, per_epoch  # no step outside it


# ---- 3. a unimodal loss reaches only its own encoder --------------------------------------------

FUSIONS = typing.get_args(models.Fusion)


def test_the_fusions_are_the_four_released():
  assert set(FUSIONS) == {"concat", "sum", "film", "gated"}


@pytest.mark.parametrize("fusion, heads", [(f, False) for f in FUSIONS] + [("concat", True)])
def test_unimodal_loss_has_no_gradient_into_the_other_encoder(tmp_path, fusion, heads):
  """Class 3: a fusion's unimodal logits of modality m read the other modality's features
  through a batch statistic (FiLM's and the gated fusion's batch mean) that is not held fixed,
  so that m's unimodal loss trains the other encoder. For every fusion (and the separate
  unimodal heads), the gradient of each modality's unimodal loss with respect to every parameter
  of the other modality's encoder is exactly zero (and not zero for its own)."""
  ds = tiny_dataset()
  model = model_zoo.build_model(tiny(tmp_path, fusion=fusion), ds, unimodal_heads=heads)
  inputs = {m: jnp.asarray(ds.train[m][:8]) for m in ds.modalities}
  y = jnp.asarray(ds.train["label"][:8])
  variables = model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, inputs,
                         train=False)

  def unimodal_loss(params, m):  # in training mode, as the training step differentiates it
    out, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, inputs,
                         train=True, mutable=["batch_stats"])
    return optax.softmax_cross_entropy_with_integer_labels(out["unimodal_logits"][m], y).mean()

  for m in ds.modalities:
    grads = jax.grad(unimodal_loss)(variables["params"], m)
    own = jax.tree.leaves(grads[m])
    assert any(np.any(np.asarray(g) != 0) for g in own), (m, "its own encoder gets none")
    for other in ds.modalities:
      if other == m:
        continue
      flat = jax.tree_util.tree_flatten_with_path(grads[other])[0]
      leaks = [jax.tree_util.keystr(p) for p, g in flat if np.any(np.asarray(g) != 0)]
      assert not leaks, f"{fusion}: {m}'s unimodal loss reaches {other}'s encoder: {leaks}"


# ---- 4. --overwrite keeps the old run until the new one saves an epoch --------------------------


def snapshot(workdir):
  """{path relative to the workdir: bytes} of every file but the lock."""
  out = {}
  for root, _, files in os.walk(workdir):
    for f in files:
      path = os.path.join(root, f)
      rel = os.path.relpath(path, workdir)
      if rel != ".lock":
        with open(path, "rb") as fh:
          out[rel] = fh.read()
  return out


def nan_audio():
  ds = distinct_splits()
  train = dict(ds.train)
  train["audio"] = np.full_like(ds.train["audio"], np.nan)
  return dataclasses.replace(ds, train=train)


def _raise(exc):
  def hook(*args, **kwargs):
    raise exc
  return hook


def _sigterm_at_epoch_0(self, loop, state, epoch):
  if epoch == 0:  # the handler stops the run after this epoch's evaluation
    signal.raise_signal(signal.SIGTERM)
  return state, {}


ENDINGS = {
    # (the dataset, extra settings, Joint's hooks replaced, what the run raises)
    "nonfinite_in_epoch_0": (nan_audio, {}, {}, trainer.RunError),
    "interrupted_in_epoch_0": (distinct_splits, {}, {
        "on_epoch_end": _raise(KeyboardInterrupt())}, KeyboardInterrupt),
    "sigterm_before_its_first_checkpoint": (distinct_splits, {"checkpoint_every": 2}, {
        "on_epoch_end": _sigterm_at_epoch_0}, KeyboardInterrupt),
    "error_before_training": (distinct_splits, {}, {
        "on_start": _raise(RuntimeError("a method that fails to start"))}, RuntimeError),
}


@pytest.mark.parametrize("ending", list(ENDINGS))
def test_overwrite_that_saves_no_epoch_restores_the_old_run(trained, tmp_path, monkeypatch,
                                                            ending):
  """Class 4: ``--overwrite`` sets the old run aside and must put it back whenever the new run
  ends without saving an epoch: stopped non-finite in epoch 0, interrupted (Ctrl-C twice, or
  SIGTERM between checkpoints) before its first checkpoint, or an error before training."""
  workdir = tmp_path / "w"
  shutil.copytree(trained[0], workdir, ignore=shutil.ignore_patterns(".lock"))
  old = snapshot(workdir)
  assert {"metrics.jsonl", "summary.json", "log.txt"} <= set(old)
  data, extra, hooks, raises = ENDINGS[ending]
  joint = methods.get("joint")
  for name, hook in hooks.items():
    monkeypatch.setattr(joint, name, hook)
  # should the loop not handle SIGTERM itself, it still interrupts rather than kills pytest
  previous = signal.signal(signal.SIGTERM, _raise(KeyboardInterrupt("SIGTERM")))
  try:
    with pytest.raises(raises):
      trainer.train(tiny(workdir, overwrite=True, **RUN, **extra), data(), progress=False)
  finally:
    signal.signal(signal.SIGTERM, previous)
  assert not (workdir / ".replaced").exists()
  now = snapshot(workdir)
  assert sorted(now) == sorted(old)
  changed = [k for k in old if now[k] != old[k]]
  assert not changed, f"the old run's files changed: {changed}"


# ---- 5. the AV-MNIST image PCA is fitted on the training images only ----------------------------

N_IMAGES, SPEAKER_INDICES = 200, 11


def write_idx(path, array, magic):
  import gzip
  dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
  with gzip.open(path, "wb") as f:
    f.write(magic.to_bytes(4, "big") + dims + np.asarray(array, np.uint8).tobytes())


@pytest.fixture(scope="module")
def fsdd(tmp_path_factory):
  """Clips for both variants: george's recordings 0-10 (the easy split by index), one of
  every other speaker (the hard variant's speaker folds)."""
  import soundfile
  root = tmp_path_factory.mktemp("fsdd")
  rng = np.random.default_rng(0)
  for spk in avmnist.SPEAKERS:
    for d in range(10):
      for i in range(SPEAKER_INDICES if spk == "george" else 1):
        t = np.arange(2000) / 8000
        wave = 0.3 * np.sin(2 * np.pi * (300 + 80 * d) * t) + 0.01 * rng.normal(size=t.shape)
        soundfile.write(root / f"{d}_{spk}_{i}.wav", wave.astype(np.float32), 8000)
  return root


def digit_images(rng, n, components=12):
  basis = rng.normal(size=(components, 784)) * np.linspace(3, 0.3, components)[:, None]
  return np.clip(128 + rng.normal(size=(n, components)) @ basis + 4 * rng.normal(size=(n, 784)),
                 0, 255).astype(np.uint8).reshape(n, 28, 28)


def prepare(root, fsdd, variant, images, labels):
  mnist = root / "mnist"
  mnist.mkdir(parents=True)
  write_idx(mnist / "t10k-images-idx3-ubyte.gz", images, 2051)
  write_idx(mnist / "t10k-labels-idx1-ubyte.gz", labels, 2049)
  out = root / "out"
  avmnist.main([f"--variant={variant}", f"--fsdd_dir={fsdd}", f"--mnist_dir={mnist}",
                f"--out_dir={out}", "--audio_bins=4", "--audio_frames=4"])
  version = records.read_manifest(str(out))["version"]
  return {s: records.read_split(str(out / version / s))["visual"] for s in ("train", "val",
                                                                               "test")}


@pytest.mark.parametrize("variant", ["hard", "easy"])
def test_image_pca_is_fitted_on_the_training_images_only(tmp_path, fsdd, variant):
  """Class 5: ``data_prep.avmnist``'s image PCA (the hard variant's kept components, the easy
  variant's removed ones) fitted on more than the training images (all splits, train and
  validation, ...). Prepared twice from small generated files that differ only in the
  validation and test images: the training split's images come out byte-identical, and every
  split's images are the basis fitted on the training images alone applied to them."""
  rng = np.random.default_rng(5)
  labels = np.arange(N_IMAGES) % 10
  images = digit_images(rng, N_IMAGES)
  # which images each split takes (the seeded split does not look at the pixels)
  index = avmnist.split_images({"test": (np.arange(N_IMAGES), labels)},
                               np.random.default_rng(0), variant)
  split_index = {s: index[s][0] for s in ("train", "val", "test")}
  other = images.copy()  # the validation and test images replaced by others, unlike them
  held = np.concatenate([split_index["val"], split_index["test"]])
  other[held] = 255 - digit_images(np.random.default_rng(6), len(held))
  first = prepare(tmp_path / "a", fsdd, variant, images, labels)
  second = prepare(tmp_path / "b", fsdd, variant, other, labels)
  assert first["train"].tobytes() == second["train"].tobytes()
  assert first["val"].tobytes() != second["val"].tobytes()
  train = images[split_index["train"]]
  for got, source in ((first, images), (second, other)):
    for s in ("train", "val", "test"):
      want = from_training_pca(train, source[split_index[s]], variant)
      np.testing.assert_allclose(got[s].reshape(want.shape), want, atol=1e-4, err_msg=s)


def from_training_pca(train, images, variant):
  """The module doc's images, written independently: a PCA of the training images (pixels /
  255) alone; hard: the projection on the leading components holding at most 25% of the
  variance (at least one), easy: the residual without those holding 75%; each scaled by the
  training images' own result's standard deviation. [N, 784]."""
  flat = lambda x: x.reshape(len(x), -1).astype(np.float64) / 255.0
  fit = flat(train)
  mean = fit.mean(0)
  _, s, vt = np.linalg.svd(fit - mean, full_matrices=False)
  energy = np.cumsum(s**2) / np.sum(s**2)
  if variant == "hard":
    over = energy > avmnist.HARD_ENERGY_KEPT
    lead = vt[:max(1, int(np.argmax(over)) if over.any() else len(energy))]
    result = lambda x: (x - mean) @ lead.T @ lead
  else:
    lead = vt[:int(np.searchsorted(energy, avmnist.EASY_ENERGY_REMOVED)) + 1]
    result = lambda x: (x - mean) - (x - mean) @ lead.T @ lead
  return result(flat(images)) / result(fit).std()
