"""CMU-MOSI from MultiBench's aligned features.

--raw_dir holds the aligned CMU-MOSI features as MultiBench distributes them (``mosi_data.pkl``, or
``mosi_raw.pkl``, from the CMU-MultimodalSDK): a pickle of ``{'train'|'valid'|'test':
{'text' [N, L, 300], 'audio' [N, L, 74], 'vision' [N, L, 35], 'labels' [N, 1, 1]}}``.
Binary sentiment: positive when the label is > 0, negative otherwise (Acc-2 with zeros as
negative). Non-finite feature values (COVAREP has -inf) are set to 0 and counted, as
MultiBench does. Written: train, val (MultiBench's valid) and test.
"""

from __future__ import annotations

import glob
import os
import pickle

import numpy as np

from data_prep import common
from inforeg_jax.data import records

MODALITIES = {"text": "text", "audio": "audio", "visual": "vision"}  # ours: pickle key


def load_pickle(path: str) -> dict:
  try:
    with open(path, "rb") as f:
      data = pickle.load(f, encoding="latin1")
  except Exception as e:
    raise common.PrepError(f"{path} is not a readable pickle ({type(e).__name__}: {e}); pass the "
                           "MultiBench mosi_data.pkl") from None
  missing = [s for s in ("train", "test") if s not in data]
  if not isinstance(data, dict) or missing:
    raise common.PrepError(f"{path} has no {missing} splits: expected MultiBench's aligned "
                           "{'train','valid','test'} dict")
  return data


FLAGS = {
    "raw_dir": dict(help="a folder with MultiBench's aligned CMU-MOSI pickle (mosi_data.pkl "
                    "or mosi_raw.pkl)"),
    "out_dir": dict(default="data/mosi",
                    help="where the prepared dataset goes (experiments.run reads "
                    "data/mosi by default)"),
}


def main(argv=None) -> None:
  args = common.flags("mosi", __doc__, FLAGS, argv)
  raw = common.require_dir(args.raw_dir, "--raw_dir", "MultiBench's mosi_data.pkl")
  found = sorted(glob.glob(os.path.join(raw, "mosi*.pkl")))
  if not found:
    raise common.PrepError(f"--raw_dir={raw} has no mosi*.pkl (MultiBench's aligned CMU-MOSI "
                           "features, e.g. mosi_data.pkl)")
  path = found[0]
  fp = common.fingerprint([path], {})
  common.claim_out_dir(args.out_dir)
  if common.already_done(args.out_dir, fp):
    return
  data = load_pickle(path)
  counts, shapes, repaired, arrays_of = {}, {}, {}, {}
  for theirs_split, split in (("train", "train"), ("valid", "val"), ("test", "test")):
    if theirs_split not in data:
      continue
    part = data[theirs_split]
    for key in list(MODALITIES.values()) + ["labels"]:
      if key not in part:
        raise common.PrepError(f"{path}: split {split} has no '{key}' array")
    arrays = {}
    for ours, theirs in MODALITIES.items():
      x = np.asarray(part[theirs], np.float32)
      if x.ndim != 3:
        raise common.PrepError(f"{path}: {split}/{theirs} has shape {x.shape}, expected [N, L, F]")
      bad = ~np.isfinite(x)
      repaired[f"{split}/{theirs}"] = int(bad.sum())
      arrays[ours] = np.where(bad, 0.0, x)
    score = np.asarray(part["labels"], np.float32).reshape(len(arrays["text"]), -1)[:, 0]
    arrays["label"] = (score > 0).astype(np.int32)
    arrays_of[split] = arrays
    counts[split] = common.split_counts(arrays["label"], 2)
    shapes = {k: list(v.shape[1:]) for k, v in arrays.items() if k != "label"}
  with records.Preparation(args.out_dir) as prep:
    for split, arrays in arrays_of.items():
      prep.write_split(split, arrays)
    common.finish(prep, {
        "name": "mosi", "num_classes": 2,
        "kinds": {m: "sequence" for m in MODALITIES}, "frame_crop": None,
        "counts": counts, "shapes": shapes, "source_fingerprint": fp,
        "command": args.command, "options": {"label": "score > 0"},
        "sources": {"pickle": os.path.basename(path), "md5": common.md5(path),
                    "non_finite_values_zeroed": repaired},
    }, {})


if __name__ == "__main__":
  common.cli(main)
