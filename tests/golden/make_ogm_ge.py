"""Golden numbers for OGM-GE (Peng et al., CVPR 2022, "Balanced Multimodal Learning via On-the-fly
Gradient Modulation"), transcribed from the official code.

Official repository: GeWu-Lab/OGM-GE_CVPR2022, commit 343dc1d (343dc1d95c9bda88f105c0da8d24f185e0e98b54).
Transcribed pieces (file: lines):
  main.py
    - defaults: batch 64 (33), epochs 100 (34), lr 0.001 (37), StepLR step 70 (38) ratio 0.1 (39),
      modulation_starts 0 / modulation_ends 50 (41-42), alpha required (43), seed 0 (51)
    - softmax, ReLU(inplace=True), Tanh modules               58-61
    - fused forward, unimodal logits (sum / other fusions)    80-93
    - loss = CE(out, label); loss.backward() (fused loss only) 95-98
    - scores: python sum of softmax(out_m)[i][label[i]]        105-106
    - ratio_v = score_v / score_a, ratio_a = 1 / ratio_v       108-109
    - coefficients (Eq. 10 of the paper, per the comment)     111-124
    - window: modulation_starts <= epoch <= modulation_ends   132
    - parameter selection and OGM / OGM-GE gradient update    133-148
    - optimizer.step() (after the modulation)                 153; scheduler.step() per epoch 159
    - eval-time unimodal logits (sum: bias / 2)               194-203
    - SGD(lr, momentum 0.9, weight_decay 1e-4), StepLR        246-247; DataParallel 242
  models/basic_model.py AVClassifier (audio_net / visual_net / fusion_module) 24-56
  README.md "Tips": alpha 0.1 for VGGSound, 0.8 for CREMA-D; "default modulation setting" alpha 0.1.

Run from the repository root:  /work/torchenv/bin/python tests/golden/make_ogm_ge.py
Writes tests/golden/ogm_ge.json. Deterministic (fixed seed; every input is in the JSON).

The GE noise: the official line draws torch.zeros_like(g).normal_(0, g.std().item() + 1e-8), with
g the gradient BEFORE scaling (the right-hand side is evaluated before .grad is reassigned) and
torch.std unbiased (N - 1). Here the draw is replaced by std * z with a fixed standard-normal z
written into the JSON (same distribution), so that a test can reproduce the update exactly.
Computation is in float64 (the official code runs in float32).
"""
import json
import os

import torch
import torch.nn as nn

torch.set_default_dtype(torch.float64)
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ogm_ge.json")

# main.py:58-61 (module instances as in train_epoch)
softmax = nn.Softmax(dim=1)
relu = nn.ReLU(inplace=True)
tanh = nn.Tanh()


# ------------------------------------------------------------------ transcription: main.py


def unimodal_logits_train(fusion, a, v, fc):
  """main.py:82-93. `fc` holds the fusion module's weights in torch layout ([out, in]).
  sum: each branch's own Linear with its FULL bias; otherwise the fc_out column halves with bias/2.
  (For film / gated, fc_out is Linear(dim, n): the half-width slice does not match the 512-wide
  a / v and torch.mm raises; see fusions.json.)"""
  if fusion == "sum":
    out_v = torch.mm(v, torch.transpose(fc["fc_y.weight"], 0, 1)) + fc["fc_y.bias"]
    out_a = torch.mm(a, torch.transpose(fc["fc_x.weight"], 0, 1)) + fc["fc_x.bias"]
  else:
    weight_size = fc["fc_out.weight"].size(1)
    out_v = (torch.mm(v, torch.transpose(fc["fc_out.weight"][:, weight_size // 2:], 0, 1))
             + fc["fc_out.bias"] / 2)
    out_a = (torch.mm(a, torch.transpose(fc["fc_out.weight"][:, :weight_size // 2], 0, 1))
             + fc["fc_out.bias"] / 2)
  return out_a, out_v


def unimodal_logits_eval(fusion, a, v, fc):
  """main.py:194-203 (valid). sum: bias / 2 here (training used the full bias). The concat
  branch hard-codes 512 as the split; written with weight_size // 2 (= 512 for the real model)."""
  if fusion == "sum":
    out_v = torch.mm(v, torch.transpose(fc["fc_y.weight"], 0, 1)) + fc["fc_y.bias"] / 2
    out_a = torch.mm(a, torch.transpose(fc["fc_x.weight"], 0, 1)) + fc["fc_x.bias"] / 2
  else:
    half = fc["fc_out.weight"].size(1) // 2
    out_v = torch.mm(v, torch.transpose(fc["fc_out.weight"][:, half:], 0, 1)) + fc["fc_out.bias"] / 2
    out_a = torch.mm(a, torch.transpose(fc["fc_out.weight"][:, :half], 0, 1)) + fc["fc_out.bias"] / 2
  return out_a, out_v


def scores(out_a, out_v, label):
  """main.py:105-106: Python sum (starting at int 0) over the batch of the true-class softmax
  probability; computed after loss.backward() (line 98), from this batch's training-mode logits."""
  score_v = sum([softmax(out_v)[i][label[i]] for i in range(out_v.size(0))])
  score_a = sum([softmax(out_a)[i][label[i]] for i in range(out_a.size(0))])
  return score_a, score_v


def coefficients(score_a, score_v, alpha):
  """main.py:108-124. Only ratio_v is tested: ratio_v > 1 damps visual; otherwise (including
  ratio_v == 1, equal scores) audio gets 1 - tanh(alpha * ratio_a), which is < 1 even when
  ratio_a <= 1."""
  ratio_v = score_v / score_a
  ratio_a = 1 / ratio_v
  if ratio_v > 1:
    coeff_v = 1 - tanh(alpha * relu(ratio_v))
    coeff_a = 1
  else:
    coeff_a = 1 - tanh(alpha * relu(ratio_a))
    coeff_v = 1
  return ratio_a, ratio_v, coeff_a, coeff_v


def modulation_active(epoch, modulation_starts=0, modulation_ends=50):
  """main.py:132 (both ends inclusive; epoch is 0-based, main.py:275)."""
  return modulation_starts <= epoch <= modulation_ends


def selected(name, grad):
  """main.py:133-136, 143: layer = the second dotted component of the DataParallel name
  ('module.audio_net.conv1.weight' -> 'audio_net'); only rank-4 grads (conv kernels)."""
  layer = str(name).split('.')[1]
  if 'audio' in layer and len(grad.size()) == 4:
    return "audio"
  if 'visual' in layer and len(grad.size()) == 4:
    return "visual"
  return None


def modulate(named_grads, coeff_a, coeff_v, epoch, modulation, z, starts=0, ends=50):
  """main.py:132-148, in named_parameters() order. `z[name]`: the standard-normal draw that stands
  in for torch.zeros_like(g).normal_(0, std) (= std * z). Returns (new grads, noise std per name)."""
  new = dict(named_grads)
  stds = {}
  if modulation == 'Normal':  # main.py:100-102
    return new, stds
  if modulation_active(epoch, starts, ends):
    for name, g in named_grads.items():
      which = selected(name, g)
      if which is None:
        continue
      coeff = coeff_a if which == "audio" else coeff_v
      if modulation == 'OGM_GE':
        std = g.std().item() + 1e-8  # std of the UNSCALED gradient, unbiased
        stds[name] = std
        new[name] = g * coeff + std * z[name]
      elif modulation == 'OGM':
        new[name] = g * coeff
  return new, stds


# ------------------------------------------------------------------ cases


def tolist(x):
  if isinstance(x, torch.Tensor):
    return x.detach().tolist()
  return float(x)


def coefficient_cases():
  out = []
  pairs = [
      ("audio_leads", 40.0, 20.0),
      ("audio_leads_strongly", 60.0, 2.5),
      ("visual_leads", 10.0, 30.0),
      ("visual_leads_slightly", 31.9, 32.0),
      ("equal_scores_audio_damped", 25.0, 25.0),
  ]
  for alpha in (0.1, 0.3, 0.8):
    for name, sa, sv in pairs:
      ra, rv, ca, cv = coefficients(torch.tensor(sa), torch.tensor(sv), alpha)
      out.append({
          "name": f"coefficients_{name}_alpha_{alpha}",
          "inputs": {"score_a": sa, "score_v": sv, "alpha": alpha},
          "expected": {"ratio_a": tolist(ra), "ratio_v": tolist(rv),
                       "coeff_a": tolist(ca), "coeff_v": tolist(cv)},
      })
  return out


def logits_cases(gen):
  out = []
  b, d, n = 8, 4, 3
  label = torch.randint(0, n, (b,), generator=gen)
  a = torch.randn(b, d, generator=gen)
  v = 0.3 * torch.randn(b, d, generator=gen)
  # concat: fc_out = Linear(2d, n); out = fc_out(cat(a, v)) (fusion_modules.py:16-24)
  fc = {"fc_out.weight": torch.randn(n, 2 * d, generator=gen),
        "fc_out.bias": torch.randn(n, generator=gen)}
  out_fused = torch.cat((a, v), 1) @ fc["fc_out.weight"].T + fc["fc_out.bias"]
  oa, ov = unimodal_logits_train("concat", a, v, fc)
  sa, sv = scores(oa, ov, label)
  ra, rv, ca, cv = coefficients(sa, sv, 0.8)
  out.append({
      "name": "concat_logits_scores_coefficients_alpha_0.8",
      "inputs": {"fusion": "concat", "a": tolist(a), "v": tolist(v), "label": label.tolist(),
                 "weights": {k: tolist(t) for k, t in fc.items()}, "alpha": 0.8},
      "expected": {"out": tolist(out_fused), "out_a": tolist(oa), "out_v": tolist(ov),
                   "out_a_plus_out_v_minus_out_maxabs": float((oa + ov - out_fused).abs().max()),
                   "score_a": tolist(sa), "score_v": tolist(sv), "ratio_a": tolist(ra),
                   "ratio_v": tolist(rv), "coeff_a": tolist(ca), "coeff_v": tolist(cv)},
  })
  # sum: fc_x, fc_y = Linear(d, n); out = fc_x(a) + fc_y(v) (fusion_modules.py:5-13)
  fc = {"fc_x.weight": torch.randn(n, d, generator=gen), "fc_x.bias": torch.randn(n, generator=gen),
        "fc_y.weight": torch.randn(n, d, generator=gen), "fc_y.bias": torch.randn(n, generator=gen)}
  out_fused = (a @ fc["fc_x.weight"].T + fc["fc_x.bias"]) + (v @ fc["fc_y.weight"].T + fc["fc_y.bias"])
  oa, ov = unimodal_logits_train("sum", a, v, fc)
  ea, ev = unimodal_logits_eval("sum", a, v, fc)
  sa, sv = scores(oa, ov, label)
  ra, rv, ca, cv = coefficients(sa, sv, 0.8)
  out.append({
      "name": "sum_logits_scores_coefficients_alpha_0.8",
      "inputs": {"fusion": "sum", "a": tolist(a), "v": tolist(v), "label": label.tolist(),
                 "weights": {k: tolist(t) for k, t in fc.items()}, "alpha": 0.8},
      "expected": {"out": tolist(out_fused), "out_a": tolist(oa), "out_v": tolist(ov),
                   "eval_out_a": tolist(ea), "eval_out_v": tolist(ev),
                   "score_a": tolist(sa), "score_v": tolist(sv), "ratio_a": tolist(ra),
                   "ratio_v": tolist(rv), "coeff_a": tolist(ca), "coeff_v": tolist(cv)},
  })
  return out


SHAPES = {  # DataParallel names (main.py:242) with the official shapes' ranks, sizes shrunk
    "module.audio_net.conv1.weight": (4, 1, 3, 3),
    "module.audio_net.bn1.weight": (4,),
    "module.audio_net.bn1.bias": (4,),
    "module.audio_net.layer2.0.downsample.0.weight": (6, 4, 1, 1),
    "module.visual_net.conv1.weight": (4, 3, 3, 3),
    "module.visual_net.layer1.0.bn2.bias": (4,),
    "module.fusion_module.fc_out.weight": (3, 8),
    "module.fusion_module.fc_out.bias": (3,),
}


def gradient_cases(gen):
  out = []
  grads = {k: torch.randn(s, generator=gen) * (0.01 if "audio" in k else 0.003)
           for k, s in SHAPES.items()}
  z = {k: torch.randn(s, generator=gen) for k, s in SHAPES.items() if len(s) == 4}
  for name, sa, sv, epoch, modulation in [
      ("ogm_ge_audio_leads_epoch_0", 40.0, 20.0, 0, "OGM_GE"),
      ("ogm_ge_visual_leads_epoch_50_end_inclusive", 10.0, 30.0, 50, "OGM_GE"),
      ("ogm_ge_epoch_51_outside_window", 40.0, 20.0, 51, "OGM_GE"),
      ("ogm_only_audio_leads_epoch_10", 40.0, 20.0, 10, "OGM"),
  ]:
    alpha = 0.8
    _, _, ca, cv = coefficients(torch.tensor(sa), torch.tensor(sv), alpha)
    new, stds = modulate(grads, ca, cv, epoch, modulation, z)
    out.append({
        "name": name,
        "inputs": {"score_a": sa, "score_v": sv, "alpha": alpha, "epoch": epoch,
                   "modulation": modulation, "modulation_starts": 0, "modulation_ends": 50,
                   "grads": {k: tolist(g) for k, g in grads.items()},
                   "standard_normal_z": {k: tolist(t) for k, t in z.items()}},
        "expected": {
            "coeff_a": tolist(ca), "coeff_v": tolist(cv),
            "active": modulation_active(epoch),
            "modulated": {k: selected(k, g) for k, g in grads.items()},
            "noise_std": stds,  # g.std(unbiased) + 1e-8 of the unscaled grad, per modulated tensor
            "biased_std_not_used": {k: float(grads[k].std(unbiased=False)) for k in stds},
            "std_of_scaled_grad_not_used": {
                k: float((grads[k] * (ca if "audio" in k else cv)).std()) for k in stds},
            "scaled_before_noise": {k: tolist(grads[k] * (ca if selected(k, grads[k]) == "audio"
                                                          else cv))
                                    for k in z} if modulation_active(epoch) else {},
            "grads": {k: tolist(g) for k, g in new.items()},
        },
    })
  return out


def window_case():
  epochs = [0, 1, 49, 50, 51, 99]
  return {"name": "modulation_window_defaults",
          "inputs": {"epochs": epochs, "modulation_starts": 0, "modulation_ends": 50},
          "expected": {"active": [modulation_active(e) for e in epochs]}}


def selection_case():
  """Without DataParallel the second dotted component is the layer name, so nothing matches
  (the official script always wraps the model, main.py:242)."""
  names = {"module.audio_net.conv1.weight": 4, "module.audio_net.bn1.weight": 1,
           "module.visual_net.layer4.1.conv2.weight": 4,
           "module.visual_net.layer2.0.downsample.0.weight": 4,
           "module.visual_net.layer2.0.downsample.1.weight": 1,
           "module.fusion_module.fc_out.weight": 2, "audio_net.conv1.weight": 4}
  return {"name": "parameter_selection",
          "inputs": {"names_and_ranks": names},
          "expected": {"modulated": {k: selected(k, torch.zeros((1,) * r)) for k, r in names.items()}}}


def main():
  gen = torch.Generator().manual_seed(2022)
  cases = (coefficient_cases() + logits_cases(gen) + gradient_cases(gen) + [window_case(),
                                                                            selection_case()])
  doc = {
      "source": {
          "repo": "GeWu-Lab/OGM-GE_CVPR2022",
          "commit": "343dc1d95c9bda88f105c0da8d24f185e0e98b54",
          "files": {"main.py": {"defaults": "33-51", "modules": "58-61",
                                "unimodal_logits_train": "82-93", "backward_fused_only": "95-98",
                                "scores": "105-106", "ratios": "108-109", "coefficients": "119-124",
                                "window": "132", "modulate": "133-148", "step": "153",
                                "scheduler_per_epoch": "159", "unimodal_logits_eval": "194-203",
                                "optimizer": "246-247"},
                    "models/basic_model.py": {"AVClassifier": "24-56"},
                    "README.md": {"alpha": "Tips: 0.1 VGGSound, 0.8 CREMA-D"}},
          "dtype": "float64 (official: float32)",
          "script": "tests/golden/make_ogm_ge.py",
          "notes": ("Noise = noise_std * standard_normal_z stands in for "
                    "zeros_like(g).normal_(0, g.std().item() + 1e-8); g is the UNSCALED grad and "
                    "torch.std is unbiased. Only rank-4 grads whose DataParallel name's second "
                    "component contains 'audio'/'visual' are touched; both modalities get noise "
                    "inside the window, the non-leading one with coefficient 1. Equal scores damp "
                    "audio (only ratio_v > 1 is tested)."),
      },
      "cases": cases,
  }
  with open(OUT, "w") as f:
    json.dump(doc, f, indent=1, allow_nan=False)
  print(f"wrote {OUT}: {len(cases)} cases")


if __name__ == "__main__":
  main()
