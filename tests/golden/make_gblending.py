"""Golden numbers for G-Blending (Wang, Tran, Feiszli, CVPR 2020), as GeWu-Lab/BalanceBenchmark runs it.

Code reference: GeWu-Lab/BalanceBenchmark, commit 4c1482f (4c1482fca5aaa8d4278af8e26020daa039e3ccf3).
  balancemm/trainer/GBlending_trainer.py
    - offline => super_epoch = max_epochs                          lines 28-31
    - when the weights are recomputed (current_epoch % super_epoch) lines 89-101
    - the blended training loss sum_k w_k CE(logits_k, y)           lines 292-303
    - super_epoch_origin: per-head trial on a copy, loss sums,
      g, o_pre, o_now, o, |g / o^2|, normalisation                  lines 306-376
  balancemm/models/avclassify_model.py
    - forward with padding (zeroed inputs)                          lines 256-275
    - unimodality_calculate (concat: shared-head slices + bias/M)   lines 277-301
  balancemm/models/fusion_arch.py ConcatFusion_N                   lines 33-40
  configs/trainer_config.yaml GBlending (method online, super_epoch 10) lines 34-39;
  trainer_para.base max_epochs 30 lines 1-4.

Run from the repository root:  /work/torchenv/bin/python tests/golden/make_gblending.py
Writes tests/golden/gblending.json. Deterministic (fixed seed; every input is in the JSON).

What is transcribed: the loss book-keeping of a trial (which losses are summed, when) and the
weight formula, from per-batch loss values given as inputs (what `loss.item()` returns in the
trial's training loop and validation loop); the training itself is not run. Also the blended
training loss from fixed features, head weights and labels, and the recomputation schedule.
Python floats / float64 throughout (the official losses are float32 `.item()` values summed in
Python floats, so the formula itself runs in float64 there too).
"""
import json
import os

import torch
import torch.nn as nn

torch.set_default_dtype(torch.float64)
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gblending.json")


# ------------------------------------------------------------------ transcription


def trial_losses(super_epoch, train_batch_losses, val_batch_losses):
  """GBlending_trainer.py:315-360 for one head. train_batch_losses[epoch] = the `loss.item()` of
  each training batch of trial epoch `epoch` (the model changes during the epoch: they are
  running losses, in train mode); val_batch_losses[epoch] = `loss.item()` of each validation batch
  after that epoch (eval mode, no_grad), only read at epoch 0 and epoch super_epoch - 1."""
  pre_train_loss = 0
  now_train_loss = 0
  pre_validation_loss = 0
  now_validation_loss = 0
  for epoch in range(super_epoch):
    _loss = 0.0
    for loss in train_batch_losses[epoch]:  # lines 334-341
      _loss += loss
    if epoch == 0 or epoch == super_epoch - 1:  # lines 342-360
      _loss_v = 0
      for loss in val_batch_losses[epoch]:
        _loss_v += loss
      if epoch == 0:
        pre_train_loss = _loss
        pre_validation_loss = _loss_v
      else:
        now_train_loss = _loss
        now_validation_loss = _loss_v
  return pre_train_loss, pre_validation_loss, now_train_loss, now_validation_loss


def gblending_weights(modalitys, super_epoch, per_head):
  """GBlending_trainer.py:306-376. Heads in the order modalitys + ['output']."""
  weights = {}
  heads = list(modalitys)
  heads.append("output")
  terms = {}
  for modality in heads:
    pre_train_loss, pre_validation_loss, now_train_loss, now_validation_loss = trial_losses(
        super_epoch, per_head[modality]["train_batch_losses"], per_head[modality]["val_batch_losses"])
    g = now_validation_loss - pre_validation_loss  # line 361
    o_pre = pre_validation_loss - pre_train_loss  # line 362
    o_now = now_validation_loss - now_train_loss  # line 363
    o = o_now - o_pre  # line 364
    weights[modality] = abs((g) / (o ** 2))  # line 366
    terms[modality] = {"pre_train_loss": pre_train_loss, "pre_validation_loss": pre_validation_loss,
                       "now_train_loss": now_train_loss, "now_validation_loss": now_validation_loss,
                       "g": g, "o_pre": o_pre, "o_now": o_now, "o": o,
                       "raw_weight": weights[modality]}
  sums = sum(weights.values())  # line 368
  for modality in weights.keys():  # lines 371-373
    weights[modality] /= sums
  return weights, terms


def unimodality_calculate(encoder_result, fc_weight, fc_bias, modality_size):
  """avclassify_model.py:277-301 for fusion == 'concat' (output = fc_out(cat(features)))."""
  all_nums = len(encoder_result.keys()) - 1
  unimodal_result = {}
  now_size = 0
  for modality in encoder_result.keys():
    if modality == "output":
      unimodal_result[modality] = encoder_result[modality]
      continue
    unimodal_result[modality] = (torch.mm(encoder_result[modality],
                                          torch.transpose(fc_weight[:, now_size:now_size + modality_size[modality]], 0, 1))
                                 + fc_bias / all_nums)
    now_size += modality_size[modality]
  return unimodal_result


def blended_loss(modalitys, features, fc_weight, fc_bias, label, weights):
  """GBlending_trainer.py:292-303 with BaseClassifierModel.forward (avclassify_model.py:263-275)
  and ConcatFusion_N (fusion_arch.py:37-40)."""
  criterion = nn.CrossEntropyLoss()
  encoder_result = {}
  for modality in modalitys:
    encoder_result[modality] = features[modality]
  encoder_result["output"] = torch.cat(list(encoder_result.values()), dim=1) @ fc_weight.T + fc_bias
  modality_size = {m: features[m].shape[1] for m in modalitys}
  unimodal_result = unimodality_calculate(encoder_result, fc_weight, fc_bias, modality_size)
  loss = 0
  per_head = {}
  for modality in unimodal_result.keys():  # modalities first, then 'output'
    per_head[modality] = criterion(unimodal_result[modality], label)
    loss += weights[modality] * per_head[modality]
  return loss, per_head, unimodal_result


def recompute_epochs(max_epochs, super_epoch, method):
  """GBlending_trainer.py:28-31 and 89-95: epochs at whose start the weights are recomputed."""
  if method == "offline":
    super_epoch = max_epochs
  return [e for e in range(max_epochs) if e % super_epoch == 0], super_epoch


# ------------------------------------------------------------------ cases


def _curve(gen, n_batches, start, end, noise=0.02):
  """A per-batch loss sequence drifting from start to end, with small noise (inputs only)."""
  out = []
  for i in range(n_batches):
    frac = i / max(n_batches - 1, 1)
    out.append(float(start + (end - start) * frac + noise * torch.randn((), generator=gen)))
  return out


def head_inputs(gen, super_epoch, n_train, n_val, train_start, train_end, val_first, val_last):
  """Train losses fall from train_start to train_end over the trial; validation losses are
  val_first after epoch 0 and val_last after the last epoch (unused epochs filled too)."""
  train, val = [], []
  for e in range(super_epoch):
    a = train_start + (train_end - train_start) * e / super_epoch
    b = train_start + (train_end - train_start) * (e + 1) / super_epoch
    train.append(_curve(gen, n_train, a, b))
    v = val_first + (val_last - val_first) * (e / max(super_epoch - 1, 1))
    val.append(_curve(gen, n_val, v, v, noise=0.01))
  return {"train_batch_losses": train, "val_batch_losses": val}


def make_weight_cases():
  gen = torch.Generator().manual_seed(2020)
  av = ["audio", "visual"]
  cases = []
  # (name, modalitys, super_epoch, n_train, n_val, {head: (train_start, train_end, val_first, val_last)})
  specs = [
      ("all_generalise", av, 3, 5, 2,
       {"audio": (1.7, 1.2, 1.6, 1.4), "visual": (1.8, 1.5, 1.75, 1.6), "output": (1.6, 0.9, 1.5, 1.2)}),
      ("visual_val_loss_rises_dG_negative", av, 3, 5, 2,
       {"audio": (1.7, 1.2, 1.6, 1.4), "visual": (1.8, 1.3, 1.7, 1.9), "output": (1.6, 0.9, 1.5, 1.3)}),
      ("all_heads_dG_negative", av, 3, 5, 2,
       {"audio": (1.5, 0.8, 1.5, 1.7), "visual": (1.6, 1.0, 1.6, 1.65), "output": (1.4, 0.5, 1.45, 1.8)}),
      ("three_modalities_mosi_like", ["audio", "visual", "text"], 4, 6, 3,
       {"audio": (0.69, 0.66, 0.69, 0.685), "visual": (0.69, 0.65, 0.69, 0.68),
        "text": (0.6, 0.3, 0.55, 0.45), "output": (0.6, 0.25, 0.55, 0.5)}),
      ("super_epoch_10_default", av, 10, 4, 2,
       {"audio": (1.7, 1.0, 1.6, 1.3), "visual": (1.8, 1.6, 1.75, 1.7), "output": (1.6, 0.7, 1.5, 1.25)}),
  ]
  for name, mods, se, nt, nv, spec in specs:
    per_head = {h: head_inputs(gen, se, nt, nv, *spec[h]) for h in list(mods) + ["output"]}
    cases.append((name, mods, se, per_head))

  # dG exactly 0 for one head (same validation values before and after): weight exactly 0.
  mods, se = av, 3
  per_head = {h: head_inputs(gen, se, 5, 2, *s) for h, s in
              {"audio": (1.7, 1.2, 1.6, 1.4), "visual": (1.8, 1.5, 1.75, 1.6), "output": (1.6, 0.9, 1.5, 1.2)}.items()}
  per_head["visual"]["val_batch_losses"][se - 1] = list(per_head["visual"]["val_batch_losses"][0])
  cases.append(("visual_dG_exactly_zero", mods, se, per_head))

  # super_epoch == 1: epoch 0 is also the last, but the `if epoch == 0` branch wins, so the "now"
  # losses stay 0: g = -pre_val, o = -(pre_val - pre_train).
  per_head = {h: head_inputs(gen, 1, 5, 2, *s) for h, s in
              {"audio": (1.7, 1.2, 1.6, 1.4), "visual": (1.8, 1.5, 1.75, 1.6), "output": (1.6, 0.9, 1.5, 1.2)}.items()}
  cases.append(("super_epoch_1_now_losses_stay_zero", av, 1, per_head))
  return cases


def main():
  out_cases = []
  for name, mods, se, per_head in make_weight_cases():
    weights, terms = gblending_weights(mods, se, per_head)
    out_cases.append({
        "name": name,
        "kind": "weights",
        "inputs": {"modalitys": list(mods), "super_epoch": se, "per_head": per_head},
        "expected": {"weights": weights, "terms": terms},
    })
    print(name, {k: round(v, 6) for k, v in weights.items()})

  # blended loss: unimodal logits are slices of the one shared concat head (no separate heads).
  gen = torch.Generator().manual_seed(7)
  for name, mods, dims in [("blended_loss_av", ["audio", "visual"], {"audio": 4, "visual": 3}),
                           ("blended_loss_avt", ["audio", "visual", "text"], {"audio": 2, "visual": 3, "text": 2})]:
    n, c = 5, 4
    feats = {m: torch.randn(n, dims[m], generator=gen) for m in mods}
    w = torch.randn(c, sum(dims.values()), generator=gen) * 0.5
    b = torch.randn(c, generator=gen) * 0.1
    label = torch.randint(0, c, (n,), generator=gen)
    raw = torch.rand(len(mods) + 1, generator=gen)
    raw = raw / raw.sum()
    weights = {h: float(raw[i]) for i, h in enumerate(list(mods) + ["output"])}
    loss, per_head, logits = blended_loss(mods, feats, w, b, label, weights)
    out_cases.append({
        "name": name,
        "kind": "blended_loss",
        "inputs": {"modalitys": mods, "features": {m: feats[m].tolist() for m in mods},
                   "fc_weight": w.tolist(), "fc_bias": b.tolist(), "label": label.tolist(),
                   "weights": weights},
        "expected": {"loss": float(loss), "per_head_ce": {k: float(v) for k, v in per_head.items()},
                     "logits": {k: v.tolist() for k, v in logits.items()}},
    })
    print(name, float(loss))

  for max_epochs, se, method in [(30, 10, "online"), (50, 10, "online"), (30, 7, "online"), (30, 10, "offline")]:
    epochs, eff = recompute_epochs(max_epochs, se, method)
    out_cases.append({
        "name": f"schedule_{method}_max{max_epochs}_se{se}",
        "kind": "schedule",
        "inputs": {"max_epochs": max_epochs, "super_epoch": se, "method": method},
        "expected": {"recompute_at_epochs": epochs, "trial_epochs_per_head": eff},
    })

  doc = {
      "source": {
          "repo": "GeWu-Lab/BalanceBenchmark",
          "commit": "4c1482fca5aaa8d4278af8e26020daa039e3ccf3",
          "files": {
              "balancemm/trainer/GBlending_trainer.py": {
                  "offline_super_epoch": "28-31", "recompute_schedule": "89-101",
                  "blended_loss": "292-303", "super_epoch_origin": "306-376",
                  "trial_loss_bookkeeping": "315-360", "weight_formula": "361-366",
                  "normalisation": "368-373"},
              "balancemm/models/avclassify_model.py": {"forward_padding": "256-275",
                                                       "unimodality_calculate": "277-301"},
              "balancemm/models/fusion_arch.py": {"ConcatFusion_N": "33-40"},
              "configs/trainer_config.yaml": {"GBlending": "34-39", "max_epochs": "1-4"},
          },
          "paper": "Wang, Tran, Feiszli, What Makes Training Multi-modal Classification Networks Hard?, CVPR 2020",
          "dtype": "python float / float64",
          "script": "tests/golden/make_gblending.py",
          "notes": ("per_head[h].train_batch_losses[e]: loss.item() of each training batch of trial "
                    "epoch e (summed, not averaged); val_batch_losses[e]: loss.item() of each "
                    "validation batch after epoch e (only e = 0 and e = super_epoch - 1 are read). "
                    "g = now_val - pre_val (= -DeltaG); o = (now_val - now_train) - (pre_val - "
                    "pre_train) (= DeltaO); raw weight |g| / o^2; weights normalised over "
                    "modalitys + ['output']."),
      },
      "cases": out_cases,
  }
  with open(OUT, "w") as f:
    json.dump(doc, f, indent=1, allow_nan=False)
  print("wrote", OUT)


if __name__ == "__main__":
  main()
