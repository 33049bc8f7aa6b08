"""Golden numbers for PMR (Fan et al., CVPR 2023), transcribed from the official code.

Official repository: fanyunfeng-bit/Modal-Imbalance-PMR, commit 3615e48 (3615e48983555089b0e693380087617c3797a641),
file main_Prototype_grad.py (the audio-visual script used for CREMA-D / AVE / ...):
  - EU_dist                                   lines 69-75
  - per-batch loss of train_epoch             lines 152-193 (prototype logits 152-153, modulated
                                              branch 156-180, unmodulated branch 181-193),
                                              loss.backward() 219, optimizer.step() 271
  - calculate_prototype (mean + EMA)          lines 383-441
  - when prototypes are computed (main)       lines 532-539 (before epoch 0), 541-557 (after
                                              each epoch, passing that epoch's index)
Cross-checked against GeWu-Lab/BalanceBenchmark 4c1482f, balancemm/trainer/PMR_trainer.py
lines 28-34 (EU_dist), 131-176 (two-modality loss), 200-251 (calculate_prototype).

Run from the repository root:  /work/torchenv/bin/python tests/golden/make_pmr.py
Writes tests/golden/pmr.json. Deterministic (fixed seed, all inputs written into the JSON).

Computation is in float64 (torch default dtype set to float64; the official code runs in
float32 — EU_dist's torch.zeros then follows the default dtype). Each function below mirrors the
official computation step by step (same loops, same order, same torch ops).
"""
import json
import os

import torch
import torch.nn as nn

torch.set_default_dtype(torch.float64)
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pmr.json")


# ------------------------------------------------------------------ transcription


def eu_dist(x1, x2):
  """main_Prototype_grad.py:69-75. Plain (not squared) Euclidean distance, B x n_class."""
  d_matrix = torch.zeros(x1.shape[0], x2.shape[0]).to(x1.device)
  for i in range(x1.shape[0]):
    for j in range(x2.shape[0]):
      d = torch.sqrt(torch.dot((x1[i] - x2[j]), (x1[i] - x2[j])))
      d_matrix[i, j] = d
  return d_matrix


def pmr_batch_loss(a, v, out, label, audio_proto, visual_proto, epoch, alpha,
                   modulation_starts, modulation_ends, modulation="Proto"):
  """main_Prototype_grad.py:152-193: the loss that loss.backward() (line 219) differentiates.
  a, v: the encoders' pooled 512-d features (AVClassifier.forward's a, v: after the adaptive
  average pooling and flatten, before the fusion's linear layers); out: the fused logits."""
  criterion = nn.CrossEntropyLoss()
  softmax = nn.Softmax(dim=1)

  audio_sim = -eu_dist(a, audio_proto)  # B x n_class
  visual_sim = -eu_dist(v, visual_proto)  # B x n_class

  if modulation == "Proto" and modulation_starts <= epoch <= modulation_ends:
    score_a_p = sum([softmax(audio_sim)[i][label[i]] for i in range(audio_sim.size(0))])
    score_v_p = sum([softmax(visual_sim)[i][label[i]] for i in range(visual_sim.size(0))])
    ratio_a_p = score_a_p / score_v_p

    loss_proto_a = criterion(audio_sim, label)
    loss_proto_v = criterion(visual_sim, label)

    if ratio_a_p > 1:
      beta = 0  # audio coef
      lam = 1 * alpha  # visual coef
    elif ratio_a_p < 1:
      beta = 1 * alpha
      lam = 0
    else:
      beta = 0
      lam = 0
    loss = criterion(out, label) + beta * loss_proto_a + lam * loss_proto_v
    modulated = True
  else:
    loss = criterion(out, label)
    loss_proto_v = criterion(visual_sim, label)
    loss_proto_a = criterion(audio_sim, label)
    score_a_p = sum([softmax(audio_sim)[i][label[i]] for i in range(audio_sim.size(0))])
    score_v_p = sum([softmax(visual_sim)[i][label[i]] for i in range(visual_sim.size(0))])
    ratio_a_p = score_a_p / score_v_p
    beta, lam = 0, 0  # not in the official branch: recorded here as the effective weights
    modulated = False
  return dict(loss=loss, audio_sim=audio_sim, visual_sim=visual_sim, score_a_p=score_a_p,
              score_v_p=score_v_p, ratio_a_p=ratio_a_p, loss_proto_a=loss_proto_a,
              loss_proto_v=loss_proto_v, beta=beta, lam=lam, modulated=modulated,
              ce_fused=criterion(out, label))


def calculate_prototype(batches, n_classes, embed_dim, epoch, momentum_coef,
                        a_proto=None, v_proto=None, dataset="CREMAD"):
  """main_Prototype_grad.py:383-441. `batches` stands for the dataloader: a list of
  (a, v, label) as the model (in eval mode, under no_grad) would return them."""
  audio_prototypes = torch.zeros(n_classes, embed_dim)
  visual_prototypes = torch.zeros(n_classes, embed_dim)
  count_class = [0 for _ in range(n_classes)]
  used = 0
  with torch.no_grad():
    sample_count = 0
    all_num = len(batches)
    for step, (a, v, label) in enumerate(batches):
      for c, l in enumerate(label):
        l = l.long()
        count_class[l] += 1
        audio_prototypes[l, :] += a[c, :]
        visual_prototypes[l, :] += v[c, :]
      used += 1
      sample_count += 1
      if dataset == "AVE":
        pass
      else:
        if sample_count >= all_num // 10:
          break
  for c in range(audio_prototypes.shape[0]):
    audio_prototypes[c, :] /= count_class[c]
    visual_prototypes[c, :] /= count_class[c]

  if epoch <= 0:
    audio_prototypes = audio_prototypes
    visual_prototypes = visual_prototypes
  else:
    audio_prototypes = (1 - momentum_coef) * audio_prototypes + momentum_coef * a_proto
    visual_prototypes = (1 - momentum_coef) * visual_prototypes + momentum_coef * v_proto
  return audio_prototypes, visual_prototypes, used, count_class


# ------------------------------------------------------------------ helpers


def L(t):
  return t.detach().tolist()


def G(x):
  """A leaf's gradient; zeros where the loss does not depend on it (grad is None)."""
  return L(x.grad) if x.grad is not None else L(torch.zeros_like(x))


def f(x):
  return float(x.detach()) if torch.is_tensor(x) else float(x)


def loss_case(name, a, v, out, label, ap, vp, epoch, alpha, start, end):
  a = a.clone().requires_grad_(True)
  v = v.clone().requires_grad_(True)
  out = out.clone().requires_grad_(True)
  r = pmr_batch_loss(a, v, out, label, ap, vp, epoch, alpha, start, end)
  r["loss"].backward()
  added = r["loss"] - r["ce_fused"]
  weak = "visual" if r["lam"] != 0 else ("audio" if r["beta"] != 0 else "none")
  softmax = nn.Softmax(dim=1)
  return {
      "name": name,
      "inputs": {"a": L(a), "v": L(v), "out": L(out), "label": label.tolist(),
                 "audio_proto": L(ap), "visual_proto": L(vp), "epoch": epoch, "alpha": alpha,
                 "modulation_starts": start, "modulation_ends": end},
      "expected": {
          "modulated": r["modulated"],
          "audio_sim": L(r["audio_sim"]), "visual_sim": L(r["visual_sim"]),
          "audio_proto_prob": L(softmax(r["audio_sim"])),
          "visual_proto_prob": L(softmax(r["visual_sim"])),
          "score_a_p": f(r["score_a_p"]), "score_v_p": f(r["score_v_p"]),
          "ratio_a_p": f(r["ratio_a_p"]),
          "loss_proto_a": f(r["loss_proto_a"]), "loss_proto_v": f(r["loss_proto_v"]),
          "beta_audio_coef": float(r["beta"]), "lam_visual_coef": float(r["lam"]),
          "modality_with_pce": weak,
          "ce_fused": f(r["ce_fused"]), "added_loss": f(added), "loss": f(r["loss"]),
          "grad_a": G(a), "grad_v": G(v), "grad_out": G(out),
      },
  }


def make_batches(gen, n_batches, bsz, dim, n_classes, shift_a, shift_v, centers_a, centers_v,
                 label_pool=None):
  batches = []
  for _ in range(n_batches):
    if label_pool is None:  # every class in every batch (bsz a multiple of n_classes)
      label = torch.arange(bsz) % n_classes
      label = label[torch.randperm(bsz, generator=gen)]
    else:
      label = torch.tensor(label_pool)[torch.randint(0, len(label_pool), (bsz,), generator=gen)]
    a = centers_a[label] + shift_a + 0.5 * torch.randn(bsz, dim, generator=gen)
    v = centers_v[label] + shift_v + 0.5 * torch.randn(bsz, dim, generator=gen)
    batches.append((a, v, label))
  return batches


def proto_case(name, calls, n_classes, dim, momentum_coef, dataset="CREMAD"):
  """calls: list of (epoch argument, batches). The first call is main's (line 539, epoch 0),
  the others the calls after train_epoch (line 557, with that epoch's index)."""
  ap = vp = None
  steps_in, steps_out = [], []
  for epoch, batches in calls:
    ap_new, vp_new, used, counts = calculate_prototype(batches, n_classes, dim, epoch,
                                                       momentum_coef, ap, vp, dataset)
    # only the batches the official loop reads are stored (it reads the first max(1,
    # all_num // 10), or all of them for AVE); the loader's length all_num is stored too
    steps_in.append({"epoch_arg": epoch, "num_batches_in_loader": len(batches),
                     "batches": [{"a": L(a), "v": L(v), "label": lab.tolist()}
                                 for a, v, lab in batches[:used]]})
    nan_rows = [c for c in range(n_classes) if counts[c] == 0]
    clean = lambda t: [[None if x != x else x for x in row] for row in L(t)]
    steps_out.append({"batches_used": used, "count_class": counts,
                      "ema_applied": epoch > 0,
                      "nan_rows": nan_rows,
                      "audio_proto": clean(ap_new), "visual_proto": clean(vp_new)})
    ap, vp = ap_new, vp_new
  return {"name": name,
          "inputs": {"n_classes": n_classes, "embed_dim": dim, "momentum_coef": momentum_coef,
                     "dataset": dataset, "calls": steps_in},
          "expected": {"calls": steps_out}}


# ------------------------------------------------------------------ cases


def main():
  gen = torch.Generator().manual_seed(0)
  C, D, B = 6, 8, 12  # CREMA-D has 6 classes; small feature dim and batch
  centers_a = 1.0 * torch.randn(C, D, generator=gen)
  centers_v = 1.0 * torch.randn(C, D, generator=gen)
  label = torch.tensor([0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5])[torch.randperm(B, generator=gen)]
  ap = centers_a + 0.1 * torch.randn(C, D, generator=gen)
  vp = centers_v + 0.1 * torch.randn(C, D, generator=gen)
  out = torch.randn(B, C, generator=gen)

  # audio close to its class prototypes (strong), visual noisy (weak)
  a_strong = centers_a[label] + 0.3 * torch.randn(B, D, generator=gen)
  v_weak = centers_v[label] + 1.2 * torch.randn(B, D, generator=gen)
  # the reverse
  a_weak = centers_a[label] + 1.2 * torch.randn(B, D, generator=gen)
  v_strong = centers_v[label] + 0.3 * torch.randn(B, D, generator=gen)

  cases = []
  cases.append(loss_case("audio_stronger_visual_gets_pce", a_strong, v_weak, out, label, ap, vp,
                         epoch=3, alpha=5.0, start=0, end=100))
  cases.append(loss_case("visual_stronger_audio_gets_pce", a_weak, v_strong, out, label, ap, vp,
                         epoch=3, alpha=5.0, start=0, end=100))
  # identical audio and visual inputs: ratio exactly 1 -> neither modality gets the term
  cases.append(loss_case("ratio_exactly_one_no_term", a_strong, a_strong.clone(), out, label, ap,
                         ap.clone(), epoch=3, alpha=5.0, start=0, end=100))
  # the window is inclusive at both ends
  cases.append(loss_case("last_modulated_epoch_inclusive", a_weak, v_strong, out, label, ap, vp,
                         epoch=100, alpha=2.0, start=0, end=100))
  cases.append(loss_case("after_window_plain_ce", a_weak, v_strong, out, label, ap, vp,
                         epoch=101, alpha=2.0, start=0, end=100))
  cases.append(loss_case("before_window_plain_ce", a_strong, v_weak, out, label, ap, vp,
                         epoch=4, alpha=2.0, start=5, end=70))

  # prototype passes: 25 batches per "loader" -> 25 // 10 = 2 batches used per pass
  nb, pb = 25, 12
  calls = []
  for k, epoch_arg in enumerate([0, 0, 1, 2]):  # before epoch 0, after epochs 0, 1, 2
    calls.append((epoch_arg, make_batches(gen, nb, pb, D, C, 0.3 * k, -0.2 * k,
                                          centers_a, centers_v)))
  cases.append(proto_case("prototypes_ema_momentum_0.2", calls, C, D, 0.2))
  cases.append(proto_case("prototypes_momentum_0.0_cremad_command", calls, C, D, 0.0))
  # fewer than 10 batches: all_num // 10 == 0, the break still happens after the first batch
  few = [(0, make_batches(gen, 7, pb, D, C, 0.0, 0.0, centers_a, centers_v)),
         (1, make_batches(gen, 7, pb, D, C, 0.1, 0.1, centers_a, centers_v))]
  cases.append(proto_case("prototypes_fewer_than_10_batches_uses_one", few, C, D, 0.5))
  # AVE: the whole (validation) loader, no 10% cut
  ave = [(0, make_batches(gen, 3, pb, D, C, 0.0, 0.0, centers_a, centers_v))]
  cases.append(proto_case("prototypes_ave_whole_loader", ave, C, D, 0.2, dataset="AVE"))
  # a class absent from the used batches: 0/0 -> NaN row (official behaviour), null in JSON
  absent = [(0, make_batches(gen, 20, pb, D, C, 0.0, 0.0, centers_a, centers_v,
                             label_pool=[0, 1, 2, 3, 4]))]
  cases.append(proto_case("prototypes_absent_class_gives_nan", absent, C, D, 0.2))

  # when the modulation applies, and when the prototype EMA applies, per epoch
  sched = []
  for start, end, epochs in [(0, 100, 130), (0, 70, 130)]:
    sched.append({"modulation_starts": start, "modulation_ends": end, "epochs": epochs,
                  "modulated": [start <= e <= end for e in range(epochs)],
                  "ema_after_epoch": [e > 0 for e in range(epochs)]})
  cases.append({"name": "epoch_schedule",
                "inputs": {"settings": [{k: s[k] for k in ("modulation_starts",
                                                           "modulation_ends", "epochs")}
                                        for s in sched]},
                "expected": {"settings": sched}})

  doc = {
      "source": {
          "repo": "fanyunfeng-bit/Modal-Imbalance-PMR",
          "commit": "3615e48983555089b0e693380087617c3797a641",
          "file": "main_Prototype_grad.py",
          "lines": {"EU_dist": "69-75", "batch_loss": "152-193", "backward": "219",
                    "calculate_prototype": "383-441", "proto_schedule": "532-557"},
          "cross_check": "GeWu-Lab/BalanceBenchmark 4c1482f balancemm/trainer/PMR_trainer.py",
          "dtype": "float64 (official: float32)",
          "script": "tests/golden/make_pmr.py",
      },
      "cases": cases,
  }
  with open(OUT, "w") as fh:
    json.dump(doc, fh, separators=(",", ":"))
  for c in cases:
    e = c["expected"]
    if "ratio_a_p" in e:
      print(f"{c['name']}: ratio={e['ratio_a_p']:.4f} pce_a={e['loss_proto_a']:.4f} "
            f"pce_v={e['loss_proto_v']:.4f} -> {e['modality_with_pce']} added={e['added_loss']:.4f}")
    elif "calls" in e:
      print(c["name"], [s["batches_used"] for s in e["calls"]], [s["nan_rows"] for s in e["calls"]])
  print("wrote", OUT)


if __name__ == "__main__":
  main()
