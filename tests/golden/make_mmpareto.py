"""Golden numbers for MMPareto (Wei & Hu, ICML 2024), transcribed from the official code.

Official repository: GeWu-Lab/MMPareto_ICML2024, commit a339db3 (a339db39cc25b157df376b50bb894917dc6c01d6).
  code/MMPareto.py
    - which parameters are each encoder's (record_names_*)    lines 74-84
    - three backward passes, grads kept per loss, zero_grad   lines 110-147
    - cosine per encoder on the concatenated encoder grads    lines 149-150
    - weights: 0.5/0.5 if cos > 0, else MGDA min-norm         lines 162-174
    - gamma = 1.5                                             line 178
    - backward of loss_mm + loss_a + loss_v                   lines 180-181
    - per-tensor combination, rescale, gamma                  lines 184-207
    - optimizer.step()                                        line 209
  code/min_norm_solvers.py
    - MinNormSolver._min_norm_element_from2                   lines 9-30
    - MinNormSolver._min_norm_2d                              lines 32-58
    - MinNormSolver.find_min_norm_element (n = 2 path)        lines 92-129
  code/models/models.py AVClassifier (separate heads head / head_audio / head_video) lines 133-184.

Run from the repository root:  /work/torchenv/bin/python tests/golden/make_mmpareto.py
Writes tests/golden/mmpareto.json. Deterministic (fixed seed; every input is in the JSON).

Inputs are the per-loss gradient trees that the three `loss.backward(retain_graph=True)` calls
leave in `param.grad` (lines 117-147): "both" = d loss_mm, "audio" = d loss_a, "visual" = d loss_v,
each holding only the parameters that loss reaches. The gradient that the official code then
obtains by a fresh backward of loss_mm + loss_a + loss_v (line 181) is formed here as the sum of
the three per-loss gradients (equal up to float rounding). Parameter names are those of the
DataParallel-wrapped AVClassifier ("module." prefix), so the official name filters apply as is.
Computation is in float64 (the official code runs in float32).
"""
import json
import os
import re

import numpy as np
import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mmpareto.json")
GAMMA = 1.5  # MMPareto.py:178


# ------------------------------------------------------------------ transcription: min_norm_solvers.py


def _min_norm_element_from2(v1v1, v1v2, v2v2):
  """min_norm_solvers.py:9-30. argmin_c |c x1 + (1 - c) x2|^2; returns (c, cost)."""
  if v1v2 >= v1v1:
    gamma = 0.999
    cost = v1v1
    return gamma, cost
  if v1v2 >= v2v2:
    gamma = 0.001
    cost = v2v2
    return gamma, cost
  gamma = -1.0 * ((v1v2 - v2v2) / (v1v1 + v2v2 - 2 * v1v2))
  cost = v2v2 + gamma * (v1v2 - v2v2)
  return gamma, cost


def _min_norm_2d(vecs, dps):
  """min_norm_solvers.py:32-58. vecs[i] is a list of tensors; dot products are summed over it."""
  dmin = 1e8
  for i in range(len(vecs)):
    for j in range(i + 1, len(vecs)):
      if (i, j) not in dps:
        dps[(i, j)] = 0.0
        for k in range(len(vecs[i])):
          dps[(i, j)] += torch.mul(vecs[i][k], vecs[j][k]).sum().data.cpu()
        dps[(j, i)] = dps[(i, j)]
      if (i, i) not in dps:
        dps[(i, i)] = 0.0
        for k in range(len(vecs[i])):
          dps[(i, i)] += torch.mul(vecs[i][k], vecs[i][k]).sum().data.cpu()
      if (j, j) not in dps:
        dps[(j, j)] = 0.0
        for k in range(len(vecs[i])):  # sic: len(vecs[i]); the lists have equal length
          dps[(j, j)] += torch.mul(vecs[j][k], vecs[j][k]).sum().data.cpu()
      c, d = _min_norm_element_from2(dps[(i, i)], dps[(i, j)], dps[(j, j)])
      if d < dmin:
        dmin = d
        sol = [(i, j), c, d]
  return sol, dps


def find_min_norm_element(vecs):
  """min_norm_solvers.py:92-129, the n < 3 path (MMPareto always passes two tasks)."""
  dps = {}
  init_sol, dps = _min_norm_2d(vecs, dps)
  new_dps = {}
  new_init_sol = []
  for item in dps:
    new_dps[item] = dps[item].numpy()
  for item in init_sol:
    if torch.is_tensor(item):
      data = item.numpy()
    else:
      data = item
    new_init_sol.append(data)
  dps = new_dps
  init_sol = new_init_sol
  n = len(vecs)
  sol_vec = np.zeros(n)
  sol_vec[init_sol[0][0]] = init_sol[1]
  sol_vec[init_sol[0][1]] = 1 - init_sol[1]
  if n < 3:
    return sol_vec, init_sol[2]
  raise NotImplementedError("MMPareto only calls the solver with two tasks")


# ------------------------------------------------------------------ transcription: MMPareto.py


def record_names(param_names):
  """MMPareto.py:74-84 (substring tests on the parameter name)."""
  record_names_audio, record_names_visual = [], []
  for name in param_names:
    if "head" in name:
      continue
    if "audio" in name:
      record_names_audio.append(name)
      continue
    if "visual" in name:
      record_names_visual.append(name)
      continue
  return record_names_audio, record_names_visual


def mmpareto_grads(param_names, per_loss_grads):
  """MMPareto.py:110-207. per_loss_grads[loss_type][name]: param.grad after that loss's backward.
  Returns the .grad each parameter holds at optimizer.step() (line 209) and the diagnostics."""
  rec_a, rec_v = record_names(param_names)
  all_loss = ["both", "audio", "visual"]
  grads_audio, grads_visual = {}, {}
  for loss_type in all_loss:  # lines 117-147
    g = per_loss_grads[loss_type]
    if loss_type == "visual":
      for tensor_name in rec_v:
        grads_visual.setdefault(loss_type, {})[tensor_name] = g[tensor_name].clone()
      grads_visual[loss_type]["concat"] = torch.cat([grads_visual[loss_type][t].flatten() for t in rec_v])
    elif loss_type == "audio":
      for tensor_name in rec_a:
        grads_audio.setdefault(loss_type, {})[tensor_name] = g[tensor_name].clone()
      grads_audio[loss_type]["concat"] = torch.cat([grads_audio[loss_type][t].flatten() for t in rec_a])
    else:
      for tensor_name in rec_a:
        grads_audio.setdefault(loss_type, {})[tensor_name] = g[tensor_name].clone()
      grads_audio[loss_type]["concat"] = torch.cat([grads_audio[loss_type][t].flatten() for t in rec_a])
      for tensor_name in rec_v:
        grads_visual.setdefault(loss_type, {})[tensor_name] = g[tensor_name].clone()
      grads_visual[loss_type]["concat"] = torch.cat([grads_visual[loss_type][t].flatten() for t in rec_v])

  # lines 149-150: one cosine per encoder, over all of its tensors concatenated
  this_cos_audio = F.cosine_similarity(grads_audio["both"]["concat"], grads_audio["audio"]["concat"], dim=0)
  this_cos_visual = F.cosine_similarity(grads_visual["both"]["concat"], grads_visual["visual"]["concat"], dim=0)
  audio_task = ["both", "audio"]
  visual_task = ["both", "visual"]

  # lines 162-174. NB: list(grads[t].values()) includes the "concat" entry, so every dot
  # product the solver forms is twice the true one; the weights are scale-invariant.
  audio_k = [0, 0]
  visual_k = [0, 0]
  if this_cos_audio > 0:
    audio_k[0] = 0.5
    audio_k[1] = 0.5
  else:
    audio_k, _ = find_min_norm_element([list(grads_audio[t].values()) for t in audio_task])
  if this_cos_visual > 0:
    visual_k[0] = 0.5
    visual_k[1] = 0.5
  else:
    visual_k, _ = find_min_norm_element([list(grads_visual[t].values()) for t in visual_task])

  gamma = GAMMA  # line 178

  # line 181: param.grad = d(loss_mm + loss_a + loss_v) (formed as the sum of the per-loss grads)
  total = {}
  for name in param_names:
    parts = [per_loss_grads[t][name] for t in all_loss if name in per_loss_grads[t]]
    total[name] = parts[0].clone()
    for p in parts[1:]:
      total[name] = total[name] + p

  final, diffs = {}, {}
  for name in param_names:  # lines 184-207
    grad = total[name]
    layer = re.split("[_.]", str(name))
    if "head" in layer:
      final[name] = grad
      continue
    if "audio" in layer:
      three_norm = torch.norm(grad.clone())
      new_grad = 2 * audio_k[0] * grads_audio["both"][name] + 2 * audio_k[1] * grads_audio["audio"][name]
      new_norm = torch.norm(new_grad)
      diff = three_norm / new_norm
      if diff > 1:
        grad = diff * new_grad * gamma
      else:
        grad = new_grad * gamma
      diffs[name] = float(diff)
    if "visual" in layer:
      three_norm = torch.norm(grad.clone())
      new_grad = 2 * visual_k[0] * grads_visual["both"][name] + 2 * visual_k[1] * grads_visual["visual"][name]
      new_norm = torch.norm(new_grad)
      diff = three_norm / new_norm
      if diff > 1:
        grad = diff * new_grad * gamma
      else:
        grad = new_grad * gamma
      diffs[name] = float(diff)
    final[name] = grad
  info = {
      "cos": {"audio": float(this_cos_audio), "visual": float(this_cos_visual)},
      "k": {"audio": [float(x) for x in audio_k], "visual": [float(x) for x in visual_k]},
      "branch": {"audio": "equal" if this_cos_audio > 0 else "mgda",
                 "visual": "equal" if this_cos_visual > 0 else "mgda"},
      "diff": {n: (None if d != d else d) for n, d in diffs.items()},  # null: 0/0 = nan
      "rescaled": {n: bool(d > 1) for n, d in diffs.items()},
  }
  return final, info


# ------------------------------------------------------------------ cases

SHAPES = {  # a miniature AVClassifier: two tensors+ per encoder, the three separate heads
    "module.audio_net.conv1.weight": (2, 1, 2, 2),
    "module.audio_net.bn1.weight": (2,),
    "module.audio_net.layer1.0.conv1.weight": (2, 2, 1, 1),
    "module.visual_net.conv1.weight": (2, 3, 1, 1),
    "module.visual_net.bn1.weight": (2,),
    "module.visual_net.bn1.bias": (2,),
    "module.head.weight": (3, 4),
    "module.head.bias": (3,),
    "module.head_audio.weight": (3, 2),
    "module.head_audio.bias": (3,),
    "module.head_video.weight": (3, 2),
    "module.head_video.bias": (3,),
}
NAMES = list(SHAPES)
AUDIO = [n for n in NAMES if ".audio_net." in n]
VISUAL = [n for n in NAMES if ".visual_net." in n]


def _rand(gen, name, scale=1.0):
  return scale * torch.randn(SHAPES[name], generator=gen)


def base_tree(gen):
  """Per-loss grads: loss_mm reaches both encoders and `head`; loss_a audio + head_audio;
  loss_v visual + head_video."""
  both = {n: _rand(gen, n) for n in AUDIO + VISUAL + ["module.head.weight", "module.head.bias"]}
  audio = {n: _rand(gen, n) for n in AUDIO + ["module.head_audio.weight", "module.head_audio.bias"]}
  visual = {n: _rand(gen, n) for n in VISUAL + ["module.head_video.weight", "module.head_video.bias"]}
  return {"both": both, "audio": audio, "visual": visual}


def make_cases():
  gen = torch.Generator().manual_seed(20240628)
  cases = []

  # 1. audio conflicts (cos < 0), visual agrees (cos > 0); the audio tensors' magnitudes differ so
  #    that the per-tensor rescale fires on some tensors and not on others.
  t = base_tree(gen)
  for n, s in zip(AUDIO, [1.0, 0.2, 3.0]):
    t["audio"][n] = -0.8 * t["both"][n] * s + 0.3 * _rand(gen, n)
  for n in VISUAL:
    t["visual"][n] = 0.7 * t["both"][n] + 0.3 * _rand(gen, n)
  cases.append(("audio_conflict_visual_agree", t))

  # 2. both encoders conflict; unimodal grads much larger than multimodal on one encoder.
  t = base_tree(gen)
  for n in AUDIO:
    t["audio"][n] = -1.5 * t["both"][n] + 0.5 * _rand(gen, n)
  for n, s in zip(VISUAL, [5.0, 0.5, 2.0]):
    t["visual"][n] = -s * t["both"][n] + 0.2 * _rand(gen, n)
  cases.append(("both_conflict", t))

  # 3. both agree: new = g_mm + g_m exactly, diff = 1, grad = 1.5 (g_mm + g_m).
  t = base_tree(gen)
  for n in AUDIO:
    t["audio"][n] = 0.4 * t["both"][n] + 0.1 * _rand(gen, n)
  for n in VISUAL:
    t["visual"][n] = 2.0 * t["both"][n] + 0.5 * _rand(gen, n)
  cases.append(("both_agree", t))

  # 4. cos exactly 0 (orthogonal supports) takes the MGDA branch (the test is cos > 0); a tensor
  #    that is zero in both grads gives diff = 0/0 = nan, `nan > 1` is False, grad = 0.
  t = base_tree(gen)
  a0, a1, a2 = AUDIO
  t["both"][a1] = torch.zeros(SHAPES[a1])
  t["both"][a2] = torch.zeros(SHAPES[a2])
  t["audio"][a0] = torch.zeros(SHAPES[a0])
  t["audio"][a2] = torch.zeros(SHAPES[a2])
  for n in VISUAL:
    t["visual"][n] = -0.3 * t["both"][n] + 0.05 * _rand(gen, n)
  cases.append(("audio_orthogonal_cos_zero_and_zero_tensor", t))

  # 5. a zero unimodal grad (audio) and a zero multimodal grad (visual): cos = 0, MGDA's edge
  #    branches give k = [0.001, 0.999] and [0.999, 0.001]; the rescale then restores the norm.
  t = base_tree(gen)
  for n in AUDIO:
    t["audio"][n] = torch.zeros(SHAPES[n])
  for n in VISUAL:
    t["both"][n] = torch.zeros(SHAPES[n])
  cases.append(("zero_unimodal_audio_zero_multimodal_visual", t))
  return cases


def tolist(x):
  return x.detach().to(torch.float64).tolist()


def main():
  out_cases = []
  for name, tree in make_cases():
    final, info = mmpareto_grads(NAMES, tree)
    out_cases.append({
        "name": name,
        "inputs": {
            "param_names": NAMES,
            "shapes": {n: list(SHAPES[n]) for n in NAMES},
            "grads": {lt: {n: tolist(g) for n, g in tree[lt].items()} for lt in ("both", "audio", "visual")},
        },
        "expected": {
            "final_grad": {n: tolist(final[n]) for n in NAMES},
            **info,
        },
    })
    print(f"{name}: cos={info['cos']} k={info['k']} rescaled={info['rescaled']}")
  doc = {
      "source": {
          "repo": "GeWu-Lab/MMPareto_ICML2024",
          "commit": "a339db39cc25b157df376b50bb894917dc6c01d6",
          "files": {
              "code/MMPareto.py": {"record_names": "74-84", "per_loss_backward": "110-147",
                                   "cosine": "149-150", "weights": "162-174", "gamma": "178",
                                   "sum_backward": "180-181", "combine_rescale_gamma": "184-207",
                                   "step": "209"},
              "code/min_norm_solvers.py": {"_min_norm_element_from2": "9-30",
                                           "_min_norm_2d": "32-58",
                                           "find_min_norm_element": "92-129"},
          },
          "gamma": GAMMA,
          "dtype": "float64 (official: float32)",
          "script": "tests/golden/make_mmpareto.py",
          "notes": ("grads[loss_type][name] = param.grad after that loss alone; 'both' = multimodal "
                    "loss. Encoder tensors' total grad = both + own unimodal; heads keep the plain "
                    "sum. final_grad = what optimizer.step() sees (before momentum/weight decay). "
                    "diff = ||g_mm + g_m|| / ||2(k0 g_mm + k1 g_m)|| per tensor; null where both are 0 (0/0 = nan, and `nan > 1` is False)."),
      },
      "cases": out_cases,
  }
  with open(OUT, "w") as f:
    json.dump(doc, f, indent=1, allow_nan=False)
  print("wrote", OUT)


if __name__ == "__main__":
  main()
