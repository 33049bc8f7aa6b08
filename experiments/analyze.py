"""The paper's analyses as commands; each writes a PNG and the numbers behind it (JSON).

  python -m experiments.analyze traces RUN [RUN ...] --out=fig1      (Figs. 1/5: Tr(F_m) per
      epoch, each modality's window epochs filled)
  python -m experiments.analyze windows RUN [RUN ...] --out=windows  (InfoReg's window and
      alpha per run and modality, JSON)
  python -m experiments.analyze gradcos RUN --modality=visual --out=fig4
      (Fig. 4: cosine similarity of the modality's gradients across training batches,
       at the run's latest checkpoint)
  python -m experiments.analyze tsne RUN --modality=visual --out=fig6
      (Fig. 6: t-SNE of the modality's test features, coloured by class; sklearn's TSNE)
  python -m experiments.analyze curve docs/results/avmnist.json --table=beta --out=fig7
      (Figs. 7/8: accuracy against InfoReg's beta or K, mean and std over the seeds of
       experiments.results' table, joint training's mean as the reference line)

RUN is a run's workdir (metrics.jsonl, summary.json, checkpoints/), read by
`experiments.runs` (a damaged file is one line naming it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import numpy as np

from experiments import cli, runs

try:
  import jax
  import jax.numpy as jnp
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  from inforeg_jax import checkpoint, window
  from inforeg_jax.config import from_dict, make_config
  from inforeg_jax.data import load_dataset, pipeline, select_modalities
  from inforeg_jax.data.records import MissingDataError
  from inforeg_jax.train import cross_entropy
  from inforeg_jax.program import build_program, make_mesh, member_slice
except ModuleNotFoundError as e:  # the core install: no matplotlib, orbax, ...
  if (e.name or "").split(".")[0] in ("inforeg_jax", "experiments"):
    raise
  raise SystemExit("error: experiments.analyze needs the [train] extra: "
                   "pip install -e '.[train]'") from None


def save(out: str, fig, numbers: dict) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  fig.tight_layout()
  fig.savefig(out + ".png", dpi=100)
  plt.close(fig)
  with open(out + ".json", "w") as f:
    json.dump(numbers, f, indent=2)
  print(f"wrote {out}.png and {out}.json")


def run_label(run: runs.Run) -> str:
  """method (modalities) seed k, from the run's summary (its folder name otherwise)."""
  s = run.summary
  if s is None or "method" not in s:
    return os.path.basename(run.path)
  mods = s["config"].get("modalities")
  group = s["method"].split("_")[0]  # inforeg_uni's options are inforeg's
  defaults = make_config(s["dataset"], method=s["method"]).to_dict().get(group, {})
  changed = [f"{k}={v}" for k, v in s["config"].get(group, {}).items() if defaults.get(k) != v]
  return (f"{s['method']}{f' ({mods})' if mods else ''}{''.join(' ' + c for c in changed)}"
          f" seed {run.seed}")


def run_labels(found: list[runs.Run]) -> list[str]:
  """Each run's `run_label`, followed by its folder where two runs would read the same: a
  legend or a JSON key never merges two runs."""
  labels = [run_label(r) for r in found]
  return [f"{lab} ({r.path})" if labels.count(lab) > 1 else lab for lab, r in zip(labels, found)]


def modalities(rows: list[dict]) -> list[str]:
  """The modalities a run's metrics.jsonl reports (its ``acc_<m>`` columns)."""
  return [k[4:] for k in rows[0] if k.startswith("acc_")]


def traces(paths: list[str], out: str) -> dict:
  """Fig. 1/5: Tr(F_m) per epoch of each run and modality; the epochs a modality was in its
  prime learning window (InfoReg's window_<m>, else the run's window flag) drawn filled."""
  numbers = {}
  fig, ax = plt.subplots(figsize=(7, 4.5))
  found = [runs.read(path) for path in paths]
  for k, (run, label) in enumerate(zip(found, run_labels(found))):
    rows = runs.rows(run)
    epochs = [r["epoch"] for r in rows]
    for m in modalities(rows):
      key = f"trace_{m}"
      if key not in rows[0]:
        continue
      values = [r[key] for r in rows]
      flags = [r.get(f"window_{m}", r.get("window", 0.0)) > 0.5 for r in rows]
      numbers[f"{label}/{m}"] = {"trace": values, "window": flags}
      line, = ax.plot(epochs, values, marker="o", ms=4, mfc="white", label=f"{label}: {m}",
                      ls="-" if k % 2 == 0 else "--")
      opened = [(e, v) for e, v, f in zip(epochs, values, flags) if f]
      if opened:
        ax.plot(*zip(*opened), ls="none", marker="o", ms=4, color=line.get_color())
  ax.set(xlabel="epoch", ylabel="Tr(F)  (mean squared gradient norm)",
         title="Information acquisition per modality (filled: in the prime learning window)")
  ax.legend(fontsize=7)
  save(out, fig, numbers)
  return numbers


def eq11_noise(rows: list[dict], m: str, threshold: float) -> dict:
  """Is Eq. 11 decided by learning or by estimation noise? Per epoch t >= 2: the rise
  r = (Tr^{t-1} - Tr^{t-2}) / Tr^{t-1} it compares with K, and that rise's noise, the
  standard errors of the two epochs' Tr(F) means (from their steps' spread, ``trace_se``)
  over Tr^{t-1}. A decision is *within noise* when |r - K| < 2 noise: another draw of the same
  epoch's batches could have flipped it."""
  if f"trace_se_{m}" not in rows[0]:
    return {}
  tr = np.asarray([[r[f"trace_{m}"]] for r in rows], np.float32)  # [epochs, 1 modality]
  se = np.asarray([[r[f"trace_se_{m}"]] for r in rows], np.float32)
  epochs = []
  for t in range(2, len(rows)):
    if not tr[t - 1, 0]:
      continue
    rise, noise = (float(x[0]) for x in window.rise_and_noise(tr[t - 2:t], se[t - 2:t]))
    opened = bool(window.prime_window(tr[t - 2:t], threshold)[0])  # Eq. 11, as the run
    epochs.append({"epoch": t, "rise": round(rise, 4), "noise": round(noise, 4),
                   "open": opened, "within_noise": abs(rise - threshold) < 2 * noise,
                   "open_noise_aware": bool(window.prime_window(
                       tr[t - 2:t], threshold, se[t - 2:t], window.NOISE_SE)[0])})
  return {"epochs": epochs, "decisions": len(epochs),
          "within_noise": sum(e["within_noise"] for e in epochs),
          "opened": sum(e["open"] for e in epochs),
          "opened_within_noise": sum(e["open"] and e["within_noise"] for e in epochs),
          "median_noise": float(np.median([e["noise"] for e in epochs])) if epochs else None}


def windows(paths: list[str], out: str) -> dict:
  """InfoReg's window per run and modality: epochs open, first and last open epoch, the
  longest open stretch, the regulated epochs and alpha's range over them, and whether each
  Eq. 11 decision stood above the trace's estimation noise (`eq11_noise`). Writes JSON
  only."""
  per_run = {}
  found = [runs.read(path) for path in paths]
  for run, label in zip(found, run_labels(found)):
    rows = runs.rows(run)
    windowed = [m for m in modalities(rows) if f"window_{m}" in rows[0]]
    if not windowed:
      method = (run.summary or {}).get("method", "another method")
      raise SystemExit(f"error: {run.path}: its metrics.jsonl has no InfoReg window "
                       f"(window_<modality>; a run of {method}): windows reads InfoReg runs")
    try:  # the run's K, resolved as the run resolved it
      threshold = from_dict(run_config(run)).resolved_threshold
    except (ValueError, TypeError) as e:
      raise SystemExit(f"error: {run.path}: its config is not this version's ({e})") from None
    stats = {}
    for m in windowed:
      key = f"window_{m}"
      opened = [r["epoch"] for r in rows if r[key] > 0.5]
      regulated = [r for r in rows if r.get(f"alpha_{m}", 0) > 0]
      longest = run_ = 0
      for r in rows:
        run_ = run_ + 1 if r[key] > 0.5 else 0
        longest = max(longest, run_)
      stats[m] = {"epochs_open": len(opened), "first_open": opened[0] if opened else None,
                  "last_open": opened[-1] if opened else None, "longest_open": longest,
                  "epochs_regulated": len(regulated),
                  "alpha_mean_when_regulated": (float(np.mean([r[f"alpha_{m}"] for r in regulated]))
                                                if regulated else 0.0),
                  "trace_first_last": [rows[0][f"trace_{m}"], rows[-1][f"trace_{m}"]],
                  "eq11_noise": eq11_noise(rows, m, threshold)}
    per_run[label] = stats
  numbers = {"runs": per_run, "epochs": len(runs.rows(paths[0]))}
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out + ".json", "w") as f:
    json.dump(numbers, f, indent=2)
  print(json.dumps(numbers, indent=1))
  return numbers


def run_config(run: runs.Run) -> dict:
  """The run's config: its summary's, else (a run still training) its latest checkpoint's;
  one line when it has neither."""
  if run.summary is not None:
    return run.config
  loop = None
  if os.path.isdir(os.path.join(run.path, "checkpoints")):
    mngr = checkpoint.manager(run.path)
    try:
      loop = checkpoint.latest_loop(mngr)
    finally:
      mngr.close()
  if loop is None:
    raise SystemExit(f"error: {run.path} has no summary.json and no readable checkpoint: its "
                     "config is unknown (let it save an epoch, or give a finished run)")
  return loop["config"]


def load_run(run: str, modality: str):
  """(cfg, dataset, program with the latest checkpoint's state), read only: nothing is
  written into ``run`` (a damaged checkpoint is skipped, not deleted)."""
  s = runs.read(run).summary if runs.is_run(run) else None
  if s is None:
    raise SystemExit(f"error: {run} has no summary.json (not a finished run folder; analyses "
                     "need the run's config)")
  try:
    cfg = from_dict({**s["config"], "workdir": run})
  except (ValueError, TypeError) as e:
    raise SystemExit(f"error: {run}/summary.json: its config is not this version's ({e})") from None
  if not os.path.isdir(os.path.join(run, "checkpoints")):
    raise SystemExit(f"error: {run} has no checkpoints/ folder")
  try:
    dataset = load_dataset(cfg.dataset, cfg.resolved_data_dir, cfg.seed)
    if cfg.modalities:
      dataset = select_modalities(dataset, cfg.modalities.split(","))
  except (MissingDataError, ValueError) as e:
    raise SystemExit(f"error: {run}'s data: {e}") from None
  if modality not in dataset.modalities:
    raise SystemExit(f"error: --modality={modality}: {run} has {', '.join(dataset.modalities)}")
  if cfg.limit_train:  # the run's own training examples
    dataset = dataclasses.replace(
        dataset, train={k: v[:cfg.limit_train] for k, v in dataset.train.items()})
  program = build_program(cfg, dataset, pipeline.steps_per_epoch(dataset.train, cfg.batch_size),
                          make_mesh())
  mngr = checkpoint.manager(run)
  try:
    restored = checkpoint.restore_latest(mngr, member_slice(program.state, 0), prune=False,
                                         log=lambda m: print(m, file=sys.stderr))
  except checkpoint.CheckpointError as e:
    raise SystemExit(f"error: {e}") from None
  finally:
    mngr.close()
  if restored is None:
    raise SystemExit(f"error: {run} has no checkpoint")
  return cfg, dataset, dataclasses.replace(program, state=restored[0])  # the run's own state


def forward(program, dataset, params, batch, train: bool):
  """The model's outputs on a batch (evaluation preprocessing; batch statistics of the batch
  when ``train``)."""
  if dataset.preprocess is not None:
    batch = dataset.preprocess(batch, jax.random.key(0), False)
  variables = {"params": params, "batch_stats": program.state.batch_stats}
  if train:
    return program.model.apply(variables, batch["inputs"], train=True, mutable=["batch_stats"],
                               rngs={"dropout": jax.random.key(0)})[0]
  return program.model.apply(variables, batch["inputs"], train=False)


def gradcos(run: str, modality: str, batches: int, out: str) -> dict:
  if batches < 2:
    raise SystemExit(f"error: --batches={batches}: a cosine across batches needs at least 2")
  cfg, dataset, program = load_run(run, modality)
  available = pipeline.num_examples(dataset.train) // cfg.batch_size
  if available < batches:
    raise SystemExit(f"error: --batches={batches}: {run}'s training split has {available} "
                     f"batches of {cfg.batch_size}; pass --batches={available} or fewer")

  @jax.jit
  def grad_vector(batch):
    loss = lambda p: cross_entropy(forward(program, dataset, p, batch, True)["logits"],
                                   batch["label"])
    g = jax.grad(loss)(program.state.params)[modality]
    return jnp.concatenate([x.ravel() for x in jax.tree.leaves(g)])

  vecs = []
  for i, batch in enumerate(pipeline.train_batches(dataset.train, cfg.batch_size, cfg.seed, 0)):
    if i == batches:
      break
    vecs.append(np.asarray(grad_vector(batch)))
  v = np.stack(vecs)
  v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-20)
  cos = v @ v.T
  off = cos[~np.eye(len(cos), dtype=bool)]
  numbers = {"modality": modality, "cosine": cos.tolist(), "mean_off_diagonal": float(off.mean()),
             "max_abs_off_diagonal": float(np.abs(off).max())}
  fig, ax = plt.subplots(figsize=(5, 4))
  im = ax.imshow(cos, vmin=-1, vmax=1, cmap="coolwarm")
  fig.colorbar(im)
  ax.set(xlabel="batch", ylabel="batch",
         title=f"{modality}: gradient cosine across batches (mean off-diag {off.mean():.3f})")
  save(out, fig, numbers)
  return numbers


def tsne(run: str, modality: str, limit: int, out: str) -> dict:
  try:
    from sklearn.manifold import TSNE
  except ModuleNotFoundError:
    raise SystemExit("error: experiments.analyze tsne needs the [analysis] extra: "
                     "pip install -e '.[analysis]'") from None
  if limit < 5:
    raise SystemExit(f"error: --limit={limit}: t-SNE needs at least 5 examples")
  cfg, dataset, program = load_run(run, modality)

  @jax.jit
  def features(batch):
    return forward(program, dataset, program.state.params, batch, False)["features"][modality]

  feats, labels = [], []
  for batch in pipeline.eval_batches(dataset.test, cfg.eval_batch_size):
    keep = batch["mask"] > 0
    feats.append(np.asarray(features({"inputs": batch["inputs"], "label": batch["label"]}))[keep])
    labels.append(batch["label"][keep])
  x, y = np.concatenate(feats)[:limit], np.concatenate(labels)[:limit]
  xy = TSNE(n_components=2, perplexity=min(30.0, max(2.0, len(x) / 4)), init="pca",
            random_state=0).fit_transform(x)
  fig, ax = plt.subplots(figsize=(5, 5))
  sc = ax.scatter(xy[:, 0], xy[:, 1], c=y, cmap="tab10", s=6)
  ax.legend(*sc.legend_elements(), fontsize=7, title="class")
  ax.set(title=f"t-SNE of {modality} features ({cfg.method})", xticks=[], yticks=[])
  numbers = {"modality": modality, "xy": xy.tolist(), "label": y.tolist()}
  save(out, fig, numbers)
  return numbers


def curve(results_json: str, table: str, out: str) -> dict:
  """Figs. 7/8: fused and per-modality final accuracy against the swept value of a table of
  ``experiments.results`` (rows named ``... name=value``; mean and std over its folds and
  seeds), joint training at its defaults as the reference when the file has it."""
  try:
    with open(results_json) as f:
      doc = json.load(f)
  except OSError as e:
    raise SystemExit(f"error: cannot read {results_json}: {e.strerror}") from None
  except ValueError as e:
    raise SystemExit(f"error: {results_json} is not valid JSON ({e})") from None
  tables = doc.get("tables", {}) if isinstance(doc, dict) else {}
  if not isinstance(tables.get(table), dict) or not tables[table].get("rows"):
    raise SystemExit(f"error: {results_json} has no finished {table!r} table: run "
                     f"python -m experiments.results --tables={table} first")
  rows = tables[table]["rows"]
  try:  # rows named "<row> name=value", each with its accuracies' mean and std
    keys = ["acc"] + sorted(k for k in rows[0] if k.startswith("acc_"))
    name = rows[0]["name"].rsplit(" ", 1)[1].split("=")[0]
    x = [float(r["name"].rsplit("=", 1)[1]) for r in rows]
    for r in rows:
      for k in keys:
        float(r[k]["mean"]), float(r[k]["std"])
  except (KeyError, IndexError, TypeError, ValueError, AttributeError):
    raise SystemExit(f"error: {results_json}: its {table!r} table is not as experiments.results "
                     "writes it (rows named '<row> name=value', with acc's mean and std): "
                     "damaged? Rerun python -m experiments.results --report-only") from None
  joint = next((r for t in tables.values() if isinstance(t, dict)  # over the same folds only
                and t.get("folds") == tables[table].get("folds")
                for r in t.get("rows", []) if r["name"] == "joint default"), None)
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  numbers = {"table": table, "x_name": name, "x": x, "runs": len(rows[0]["runs"])}
  for i, k in enumerate(keys):
    mean = np.array([r[k]["mean"] for r in rows])
    std = np.array([r[k]["std"] for r in rows])
    color = "k" if k == "acc" else f"C{i}"
    label = "fused" if k == "acc" else k[4:]
    ax.errorbar(x, mean, yerr=std, marker="o", capsize=3, color=color, label=f"InfoReg: {label}")
    if joint is not None and k in joint:
      ax.axhline(joint[k]["mean"], color=color, ls=":", lw=1, label=f"joint training: {label}")
    numbers[k] = {"mean": mean.tolist(), "std": std.tolist(),
                  "joint": joint[k]["mean"] if joint is not None and k in joint else None}
  ax.set(xlabel=name, ylabel="final test accuracy",
         title=f"{doc.get('dataset', '')}: InfoReg's {name} ({len(rows[0]['runs'])} runs a point)")
  ax.legend(fontsize=7)
  save(out, fig, numbers)
  return numbers


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m experiments.analyze", allow_abbrev=False,
                              description=__doc__.split("\n")[0])
  sub = p.add_subparsers(dest="kind", required=True)
  for name in ("traces", "windows"):
    sub.add_parser(name, allow_abbrev=False).add_argument("runs", nargs="+")
  for name in ("gradcos", "tsne"):
    s = sub.add_parser(name, allow_abbrev=False)
    s.add_argument("run")
    s.add_argument("--modality", required=True)
    s.add_argument("--batches", type=int, default=8)
    s.add_argument("--limit", type=int, default=1000)
  s = sub.add_parser("curve", allow_abbrev=False)
  s.add_argument("results_json")
  s.add_argument("--table", required=True, choices=("beta", "threshold"))
  for s in sub.choices.values():
    s.add_argument("--out", required=True, help="output path without extension")
  args = p.parse_args(argv)
  if args.kind == "traces":
    traces(args.runs, args.out)
  elif args.kind == "windows":
    windows(args.runs, args.out)
  elif args.kind == "gradcos":
    gradcos(args.run, args.modality, args.batches, args.out)
  elif args.kind == "tsne":
    tsne(args.run, args.modality, args.limit, args.out)
  else:
    curve(args.results_json, args.table, args.out)
  return 0


if __name__ == "__main__":
  cli(main)
