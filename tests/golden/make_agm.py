"""Golden numbers for AGM (Li et al., ICCV 2023, "Boosting Multi-modal Model Performance with
Adaptive Gradient Modulation"), transcribed from the official code.

Official repository: lihong2303/AGM_ICCV2023, commit 5a65542 (5a65542c70b1c7c15c5df291e77fa9cf2bbb9549).
Transcribed pieces (file: lines):
  run/CREMAD_main.py (the two-modality audio-visual script, AGM + late_fusion branch)
    - iteration counter                          48
    - responses out_a / out_v                    63-66   (model call 64, combination 65-66)
    - loss = CE(out, label), out = m_a + m_v     69
    - optimizer.zero_grad()                      108
    - batch scores (mean CE, 1e-8 floor)         130-143
    - ratios, targets, coefficients (clamp 10)   145-152
    - cumulative-mean update (after use)         154-155
    - update_scale + loss.backward()             159-166
    - conditional gradient clipping              233-238 (late fusion: fc_out.weight)
    - optimizer.step()                           244
    - running scores carried across epochs       28-37, 268, 612-613, 637-638
  model/CREMAD_net.py
    - Modality_Visual / Modality_Audio           7-17
    - GradMod hooks and update_scale             25-55
    - GradMod.forward (train pass, eval passes)  57-72
    - AVClassifier.forward (zeroed inputs)       100-122, ConcatFusion 256-265
  tasks/CREMAD_task.py: SGD(momentum 0.9, weight_decay 1e-4), StepLR  35-38
  run/AVMNIST_main.py
    - iteration counter (0-based)                38
    - scores                                     91-104
    - mean-form ratios/targets, no clamp          106-117
    - cumulative-mean update (after use)         119-120
    - update_scale/backward, clipping on head.fc 122-129, 186-190
  model/AVMNIST_net.py GradMod.forward            58-72 (same response formula, no zero pass)
  run/URFunny_main.py (three modalities)
    - iteration counter                          47
    - scores (no 1e-8 floor)                     109-115
    - ratios exp(3/2 (mean - s)), clamp 7        117-130
    - cumulative-mean update (after use)         132-134
    - clipping at 5 on head.fc                   203-207
  model/URFunny_net.py: Modality_Text/Audio/Visual 6-31, GradMod 39-126

Run from the repository root:  /work/torchenv/bin/python tests/golden/make_agm.py
Writes tests/golden/agm.json. Deterministic (fixed seeds, every input written into the JSON).

Computation is in float64 (torch default dtype set to float64; the official code runs in float32).
Scalar steps (ratios, targets, coefficients, running means) use Python floats and math.exp exactly
as the official code does (it calls .item() before them). The "tiny_model" case replaces the
ResNet-18 encoders by Linear + BatchNorm1d + ReLU encoders (weights in the JSON) and keeps
everything else of the official step: a train-mode full pass, eval-mode zeroed-input passes WITH
gradient, the identity modules with full backward hooks, the conditional clipping, SGD.
"""
import json
import math
import os

import torch
import torch.nn as nn

torch.set_default_dtype(torch.float64)
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "agm.json")
COMMIT = "5a65542c70b1c7c15c5df291e77fa9cf2bbb9549"


def L(t):
  return t.detach().tolist() if isinstance(t, torch.Tensor) else t


# ------------------------------------------------------------------ transcription: responses


def responses_2(total_out, pad_visual_out, pad_audio_out):
  """CREMAD_main.py:65-66 (= CREMAD_net.py:10-17 Modality_Audio/Visual). pad_visual_out is
  f(a, 0) (visual input zeroed), pad_audio_out is f(0, v)."""
  out_a = 0.5 * (total_out - pad_audio_out + pad_visual_out)
  out_v = 0.5 * (total_out - pad_visual_out + pad_audio_out)
  return out_a, out_v


def responses_3(total_out, pad_visual_out, pad_audio_out, pad_text_out, pad_visual_audio_out,
                pad_visual_text_out, pad_audio_text_out):
  """URFunny_net.py:6-31. pad_X_out: input X zeroed; pad_X_Y_out: X and Y zeroed. The official
  formula omits the f(0,0,0) term of the Shapley value (the net returns m - f(0)/3 separately as
  the 'marginal contribution', GradMod.forward 119-122), so m_a + m_v + m_t = f(a,v,t)."""
  m_t = ((total_out - pad_text_out + pad_visual_audio_out) / 3
         + (pad_visual_out - pad_audio_text_out + pad_audio_out - pad_visual_text_out) / 6)
  m_a = ((total_out - pad_audio_out + pad_visual_text_out) / 3
         + (pad_visual_out - pad_audio_text_out + pad_text_out - pad_visual_audio_out) / 6)
  m_v = ((total_out - pad_visual_out + pad_audio_text_out) / 3
         + (pad_audio_out - pad_visual_text_out + pad_text_out - pad_visual_audio_out) / 6)
  return m_a, m_v, m_t


# ------------------------------------------------------------------ transcription: scores


def cremad_scores(out_a, out_v, label):
  """CREMAD_main.py:130-143: per-sample -log softmax[true], floored at -log(1e-8), batch mean."""
  softmax = nn.Softmax(dim=1)
  score_audio = 0.
  score_visual = 0.
  for k in range(out_a.size(0)):
    if torch.isinf(torch.log(softmax(out_a)[k][label[k]])) or softmax(out_a)[k][label[k]] < 1e-8:
      score_audio += - torch.log(torch.tensor(1e-8, dtype=out_a.dtype, device=out_a.device))
    else:
      score_audio += - torch.log(softmax(out_a)[k][label[k]])
    if torch.isinf(torch.log(softmax(out_v)[k][label[k]])) or softmax(out_v)[k][label[k]] < 1e-8:
      score_visual += - torch.log(torch.tensor(1e-8, dtype=out_v.dtype, device=out_v.device))
    else:
      score_visual += - torch.log(softmax(out_v)[k][label[k]])
  score_audio = score_audio / out_a.size(0)
  score_visual = score_visual / out_v.size(0)
  return score_audio, score_visual


def avmnist_scores(out_a, out_v, label):
  """AVMNIST_main.py:91-104 (the floor test is on the probability itself; same result)."""
  softmax = nn.Softmax(dim=1)
  score_audio = 0.
  score_visual = 0.
  for k in range(out_a.size(0)):
    if torch.isinf(softmax(out_a)[k][label[k]]) or softmax(out_a)[k][label[k]] < 1e-8:
      score_audio += - torch.log(torch.tensor(1e-8, dtype=out_a.dtype, device=out_a.device))
    else:
      score_audio += - torch.log(softmax(out_a)[k][label[k]])
    if torch.isinf(softmax(out_v)[k][label[k]]) or softmax(out_v)[k][label[k]] < 1e-8:
      score_visual += - torch.log(torch.tensor(1e-8, dtype=out_v.dtype, device=out_v.device))
    else:
      score_visual += - torch.log(softmax(out_v)[k][label[k]])
  score_audio = score_audio / out_a.size(0)
  score_visual = score_visual / out_v.size(0)
  return score_audio, score_visual


def urfunny_scores(m_a, m_v, m_t, label):
  """URFunny_main.py:109-115: per-sample term divided by B inside the loop, no floor."""
  softmax = nn.Softmax(dim=1)
  score_visual = 0.
  score_audio = 0.
  score_text = 0.
  for k in range(m_a.size(0)):
    score_visual += - torch.log(softmax(m_v)[k][label[k]]) / m_v.size(0)
    score_audio += - torch.log(softmax(m_a)[k][label[k]]) / m_a.size(0)
    score_text += - torch.log(softmax(m_t)[k][label[k]]) / m_t.size(0)
  return score_audio, score_visual, score_text


# ------------------------------------------------------------------ transcription: coefficients


def cremad_coefficients(score_audio, score_visual, train_score_a, train_score_v, iteration, alpha):
  """CREMAD_main.py:145-155. iteration = (epoch-1)*total_batch + step + 1 (line 48, epoch from 1).
  The targets use the running scores BEFORE this batch is added (update at 154-155)."""
  ratio_a = math.exp(score_visual.item() - score_audio.item())
  ratio_v = math.exp(score_audio.item() - score_visual.item())

  optimal_ratio_a = math.exp(train_score_v - train_score_a)
  optimal_ratio_v = math.exp(train_score_a - train_score_v)

  coeff_a = math.exp(alpha * (min(optimal_ratio_a - ratio_a, 10)))
  coeff_v = math.exp(alpha * (min(optimal_ratio_v - ratio_v, 10)))

  train_score_a = train_score_a * (iteration - 1) / iteration + score_audio.item() / iteration
  train_score_v = train_score_v * (iteration - 1) / iteration + score_visual.item() / iteration
  return dict(ratio=[ratio_a, ratio_v], target=[optimal_ratio_a, optimal_ratio_v],
              coeff=[coeff_a, coeff_v], running_after=[train_score_a, train_score_v])


def avmnist_coefficients(score_audio, score_visual, train_score_a, train_score_v, iteration, alpha):
  """AVMNIST_main.py:106-120. iteration = (epoch-1)*num_batch + step (line 38, 0-based); the
  same cumulative mean as CREMA-D. Ratios through the mean of the two scores; no clamp."""
  mean_ratio = (score_visual.item() + score_audio.item()) / 2

  ratio_a = math.exp((mean_ratio - score_audio.item()) * 2)
  ratio_v = math.exp((mean_ratio - score_visual.item()) * 2)

  mean_optimal_ratio = (train_score_a + train_score_v) / 2

  optimal_ratio_a = math.exp((mean_optimal_ratio - train_score_a) * 2)
  optimal_ratio_v = math.exp((mean_optimal_ratio - train_score_v) * 2)

  coeff_a = math.exp(alpha * (optimal_ratio_a - ratio_a))
  coeff_v = math.exp(alpha * (optimal_ratio_v - ratio_v))

  train_score_a = train_score_a * iteration / (iteration + 1) + score_audio.item() / (iteration + 1)
  train_score_v = train_score_v * iteration / (iteration + 1) + score_visual.item() / (iteration + 1)
  return dict(ratio=[ratio_a, ratio_v], target=[optimal_ratio_a, optimal_ratio_v],
              coeff=[coeff_a, coeff_v], running_after=[train_score_a, train_score_v])


def urfunny_coefficients(score_audio, score_visual, score_text, train_score_a, train_score_v,
                         train_score_t, iteration, alpha):
  """URFunny_main.py:117-134 (iteration 1-based, line 47). Order in the JSON: [a, v, t]."""
  mean_score = (score_visual.item() + score_audio.item() + score_text.item()) / 3

  ratio_v = math.exp((mean_score - score_visual.item()) * 3 / 2)
  ratio_a = math.exp((mean_score - score_audio.item()) * 3 / 2)
  ratio_t = math.exp((mean_score - score_text.item()) * 3 / 2)

  optimal_mean_score = (train_score_v + train_score_a + train_score_t) / 3
  optimal_ratio_v = math.exp((optimal_mean_score - train_score_v) * 3 / 2)
  optimal_ratio_a = math.exp((optimal_mean_score - train_score_a) * 3 / 2)
  optimal_ratio_t = math.exp((optimal_mean_score - train_score_t) * 3 / 2)

  coeff_a = math.exp(alpha * (min(optimal_ratio_a - ratio_a, 7)))
  coeff_v = math.exp(alpha * (min(optimal_ratio_v - ratio_v, 7)))
  coeff_t = math.exp(alpha * (min(optimal_ratio_t - ratio_t, 7)))

  train_score_v = train_score_v * (iteration - 1) / iteration + score_visual.item() / iteration
  train_score_a = train_score_a * (iteration - 1) / iteration + score_audio.item() / iteration
  train_score_t = train_score_t * (iteration - 1) / iteration + score_text.item() / iteration
  return dict(ratio=[ratio_a, ratio_v, ratio_t], target=[optimal_ratio_a, optimal_ratio_v, optimal_ratio_t],
              coeff=[coeff_a, coeff_v, coeff_t], running_after=[train_score_a, train_score_v, train_score_t])


# ------------------------------------------------------------------ transcription: hooks


class ModalityOut(nn.Module):
  """CREMAD_net.py:19-23: identity module carrying the full backward hook."""

  def forward(self, x):
    return x


class HookedResponses(nn.Module):
  """CREMAD_net.py:25-55 and the combination of GradMod.forward 67-72 (URFunny_net.py 59-126 for
  three modalities), applied to given pass outputs instead of a network."""

  def __init__(self, names):
    super().__init__()
    self.names = names
    self.outs = nn.ModuleList([ModalityOut() for _ in names])
    self.scale = [1.0 for _ in names]
    for i, o in enumerate(self.outs):
      o.register_full_backward_hook(self._make_hook(i))

  def _make_hook(self, i):
    def hook(m, ginp, gout):
      gnew = ginp[0].clone()
      return gnew * self.scale[i],
    return hook

  def update_scale(self, *coeffs):
    self.scale = list(coeffs)

  def forward(self, pre):
    """pre: the responses as Modality_X computes them (before the hooked identity)."""
    post = [o(p) for o, p in zip(self.outs, pre)]
    out = post[0]
    for p in post[1:]:
      out = out + p
    return post, out


def hook_case(name, names, pass_names, passes, label, coeffs):
  """Fixed pass logits (leaves with grad) -> responses -> hooked identities -> CE(sum) -> grads."""
  leaves = [p.clone().requires_grad_(True) for p in passes]
  if len(names) == 2:
    pre = responses_2(*leaves)
  else:
    pre = responses_3(*leaves)
  for p in pre:
    p.retain_grad()
  mod = HookedResponses(names)
  mod.update_scale(*coeffs)
  post, out = mod(list(pre))
  for p in post:
    p.retain_grad()
  loss = nn.CrossEntropyLoss()(out, label)
  loss.backward()
  return {
      "name": name,
      "inputs": {"modalities": names, "passes": {k: L(v) for k, v in zip(pass_names, passes)},
                 "label": L(label), "coefficients": list(coeffs),
                 "loss": "nn.CrossEntropyLoss()(sum of hooked responses, label) (batch mean)"},
      "expected": {
          "responses": {n: L(p) for n, p in zip(names, pre)},
          "fused_logits": L(out),
          "loss": loss.item(),
          "grad_at_response_output": {n: L(p.grad) for n, p in zip(names, post)},
          "grad_after_hook": {n: L(p.grad) for n, p in zip(names, pre)},
          "grad_of_pass_logits": {k: L(v.grad) for k, v in zip(pass_names, leaves)},
      },
  }


# ------------------------------------------------------------------ sequences


def cremad_sequence(name, steps, total_batch, start_epoch, start_step, init_running, alpha):
  """Per step: pass logits -> responses (65-66) -> scores (130-143) -> coefficients (145-155)."""
  ta, tv = init_running
  rows = []
  epoch, step = start_epoch, start_step
  for s in steps:
    iteration = (epoch - 1) * total_batch + step + 1
    out_a, out_v = responses_2(s["total_out"], s["pad_visual_out"], s["pad_audio_out"])
    sa, sv = cremad_scores(out_a, out_v, s["label"])
    r = cremad_coefficients(sa, sv, ta, tv, iteration, alpha)
    rows.append({"epoch": epoch, "step": step, "iteration": iteration,
                 "out_a": L(out_a), "out_v": L(out_v), "scores": [sa.item(), sv.item()],
                 "running_before": [ta, tv], **r})
    ta, tv = r["running_after"]
    step += 1
    if step == total_batch:
      epoch, step = epoch + 1, 0
  return {"name": name,
          "inputs": {"rule": "cremad", "alpha": alpha, "total_batch": total_batch,
                     "start_epoch": start_epoch, "start_step": start_step,
                     "running_init": list(init_running),
                     "steps": [{k: L(v) for k, v in s.items()} for s in steps]},
          "expected": {"steps": rows}}


def avmnist_sequence(name, steps, num_batch, start_epoch, start_step, init_running, alpha):
  ta, tv = init_running
  rows = []
  epoch, step = start_epoch, start_step
  for s in steps:
    iteration = (epoch - 1) * num_batch + step
    out_a, out_v = responses_2(s["total_out"], s["pad_visual_out"], s["pad_audio_out"])
    sa, sv = avmnist_scores(out_a, out_v, s["label"])
    r = avmnist_coefficients(sa, sv, ta, tv, iteration, alpha)
    rows.append({"epoch": epoch, "step": step, "iteration": iteration,
                 "out_a": L(out_a), "out_v": L(out_v), "scores": [sa.item(), sv.item()],
                 "running_before": [ta, tv], **r})
    ta, tv = r["running_after"]
    step += 1
    if step == num_batch:
      epoch, step = epoch + 1, 0
  return {"name": name,
          "inputs": {"rule": "avmnist", "alpha": alpha, "total_batch": num_batch,
                     "start_epoch": start_epoch, "start_step": start_step,
                     "running_init": list(init_running),
                     "steps": [{k: L(v) for k, v in s.items()} for s in steps]},
          "expected": {"steps": rows}}


def score_sequence(name, rule, scores, total_batch, start_epoch, start_step, init_running, alpha):
  """The coefficient rule fed with given per-step scores (no logits)."""
  run = list(init_running)
  rows = []
  epoch, step = start_epoch, start_step
  for s in scores:
    ts = [torch.tensor(x) for x in s]
    if rule == "cremad":
      iteration = (epoch - 1) * total_batch + step + 1
      r = cremad_coefficients(ts[0], ts[1], run[0], run[1], iteration, alpha)
    elif rule == "avmnist":
      iteration = (epoch - 1) * total_batch + step
      r = avmnist_coefficients(ts[0], ts[1], run[0], run[1], iteration, alpha)
    else:
      iteration = (epoch - 1) * total_batch + step + 1
      r = urfunny_coefficients(ts[0], ts[1], ts[2], run[0], run[1], run[2], iteration, alpha)
    rows.append({"epoch": epoch, "step": step, "iteration": iteration, "scores": list(s),
                 "running_before": list(run), **r})
    run = list(r["running_after"])
    step += 1
    if step == total_batch:
      epoch, step = epoch + 1, 0
  return {"name": name,
          "inputs": {"rule": rule, "alpha": alpha, "total_batch": total_batch,
                     "start_epoch": start_epoch, "start_step": start_step,
                     "running_init": list(init_running), "scores": [list(s) for s in scores]},
          "expected": {"steps": rows}}


def urfunny_sequence(name, steps, total_batch, start_epoch, init_running, alpha):
  run = list(init_running)
  rows = []
  epoch, step = start_epoch, 0
  for s in steps:
    iteration = (epoch - 1) * total_batch + step + 1
    m_a, m_v, m_t = responses_3(*[s[k] for k in PASSES_3])
    sa, sv, st = urfunny_scores(m_a, m_v, m_t, s["label"])
    r = urfunny_coefficients(sa, sv, st, run[0], run[1], run[2], iteration, alpha)
    rows.append({"epoch": epoch, "step": step, "iteration": iteration,
                 "m_a": L(m_a), "m_v": L(m_v), "m_t": L(m_t),
                 "scores": [sa.item(), sv.item(), st.item()], "running_before": list(run), **r})
    run = list(r["running_after"])
    step += 1
    if step == total_batch:
      epoch, step = epoch + 1, 0
  return {"name": name,
          "inputs": {"rule": "urfunny", "alpha": alpha, "total_batch": total_batch,
                     "start_epoch": start_epoch, "start_step": 0, "running_init": list(init_running),
                     "steps": [{k: L(v) for k, v in s.items()} for s in steps]},
          "expected": {"steps": rows}}


PASSES_2 = ["total_out", "pad_visual_out", "pad_audio_out"]
PASSES_3 = ["total_out", "pad_visual_out", "pad_audio_out", "pad_text_out", "pad_visual_audio_out",
            "pad_visual_text_out", "pad_audio_text_out"]


# ------------------------------------------------------------------ tiny model, whole step


class TinyAVClassifier(nn.Module):
  """AVClassifier (CREMAD_net.py:75-122) with the ResNet-18s replaced by Linear+BN+ReLU:
  zeroed INPUTS for the pad passes (100-105), concat fusion fc_out (256-265)."""

  def __init__(self, da, dv, h, n_classes):
    super().__init__()
    self.mode = "classify"
    self.audio_net = nn.Sequential(nn.Linear(da, h), nn.BatchNorm1d(h), nn.ReLU())
    self.visual_net = nn.Sequential(nn.Linear(dv, h), nn.BatchNorm1d(h), nn.ReLU())
    self.fusion_module = nn.Module()
    self.fusion_module.fc_out = nn.Linear(2 * h, n_classes)

  def forward(self, audio, visual, pad_audio=False, pad_visual=False):
    if pad_audio:
      audio = torch.zeros_like(audio, device=audio.device)
    if pad_visual:
      visual = torch.zeros_like(visual, device=visual.device)
    a = self.audio_net(audio)
    v = self.visual_net(visual)
    encoded_feature = torch.cat((a, v), dim=1)
    out = self.fusion_module.fc_out(encoded_feature)
    if self.mode == "feature":
      return out, encoded_feature
    return out


class TinyGradMod(nn.Module):
  """GradMod (CREMAD_net.py:25-72) around TinyAVClassifier."""

  def __init__(self, net):
    super().__init__()
    self.mode = "train"
    self.net = net
    self.m_a_o = ModalityOut()
    self.m_v_o = ModalityOut()
    self.scale_a = 1.0
    self.scale_v = 1.0
    self.m_a_o.register_full_backward_hook(self.hooka)
    self.m_v_o.register_full_backward_hook(self.hookv)

  def hooka(self, m, ginp, gout):
    gnew = ginp[0].clone()
    return gnew * self.scale_a,

  def hookv(self, m, ginp, gout):
    gnew = ginp[0].clone()
    return gnew * self.scale_v,

  def update_scale(self, coeff_a, coeff_v):
    self.scale_a = coeff_a
    self.scale_v = coeff_v

  def forward(self, audio, visual):
    self.net.mode = "feature"
    total_out, encoded_feature = self.net(audio, visual, pad_audio=False, pad_visual=False)
    self.net.mode = "classify"
    self.net.eval()
    pad_visual_out = self.net(audio, visual, pad_audio=False, pad_visual=True)
    pad_audio_out = self.net(audio, visual, pad_audio=True, pad_visual=False)
    zero_padding_out = self.net(audio, visual, pad_audio=True, pad_visual=True)
    if self.mode == "train":
      self.net.train()
    m_a = self.m_a_o(0.5 * (total_out - pad_audio_out + pad_visual_out))
    m_v = self.m_v_o(0.5 * (total_out - pad_visual_out + pad_audio_out))
    return total_out, pad_visual_out, pad_audio_out, zero_padding_out, m_a + m_v


def state_lists(model):
  return {k: L(v) for k, v in model.state_dict().items() if "num_batches_tracked" not in k}


def tiny_model_case(name, gen, n_steps, total_batch, alpha, lr, input_scale):
  B, da, dv, h, C = 4, 3, 5, 4, 3
  net = TinyAVClassifier(da, dv, h, C)
  with torch.no_grad():  # non-trivial BN state so the eval passes differ from train mode
    for bn in (net.audio_net[1], net.visual_net[1]):
      bn.weight.copy_(1.0 + 0.2 * torch.randn(h, generator=gen))
      bn.bias.copy_(0.1 * torch.randn(h, generator=gen))
      bn.running_mean.copy_(0.3 * torch.randn(h, generator=gen))
      bn.running_var.copy_(0.5 + torch.rand(h, generator=gen))
    for lin in (net.audio_net[0], net.visual_net[0], net.fusion_module.fc_out):
      lin.weight.copy_(torch.randn(lin.weight.shape, generator=gen) * 0.7)
      lin.bias.copy_(torch.randn(lin.bias.shape, generator=gen) * 0.1)
  model = TinyGradMod(net)
  init_state = state_lists(model)
  optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
  criterion = nn.CrossEntropyLoss()

  batches = []
  for _ in range(n_steps):
    batches.append({"audio": torch.randn(B, da, generator=gen) * input_scale,
                    "visual": torch.randn(B, dv, generator=gen) * input_scale,
                    "label": torch.randint(0, C, (B,), generator=gen)})

  model.train()
  model.mode = "train"
  train_score_a, train_score_v = 0., 0.
  epoch, step = 1, 0
  rows = []
  for b in batches:
    spec, image, label = b["audio"], b["visual"], b["label"]
    iteration = (epoch - 1) * total_batch + step + 1
    total_out, pad_visual_out, pad_audio_out, zero_padding_out, out = model(spec, image)
    out_a = 0.5 * (total_out - pad_audio_out + pad_visual_out)
    out_v = 0.5 * (total_out - pad_visual_out + pad_audio_out)
    loss = criterion(out, label)
    optimizer.zero_grad()
    score_audio, score_visual = cremad_scores(out_a, out_v, label)
    r = cremad_coefficients(score_audio, score_visual, train_score_a, train_score_v, iteration, alpha)
    running_before = [train_score_a, train_score_v]
    train_score_a, train_score_v = r["running_after"]
    model.update_scale(*r["coeff"])
    loss.backward()
    grads_before_clip = {k: L(p.grad) for k, p in model.named_parameters()}
    grad_max = torch.max(model.net.fusion_module.fc_out.weight.grad)
    grad_min = torch.min(model.net.fusion_module.fc_out.weight.grad)
    clipped = bool(grad_max > 1 or grad_min < -1)
    total_norm = torch.norm(torch.stack([p.grad.norm(2) for p in model.parameters()]), 2).item()
    if clipped:
      nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
    grads_after_clip = {k: L(p.grad) for k, p in model.named_parameters()}
    optimizer.step()
    rows.append({"epoch": epoch, "step": step, "iteration": iteration,
                 "total_out": L(total_out), "pad_visual_out": L(pad_visual_out),
                 "pad_audio_out": L(pad_audio_out), "zero_padding_out": L(zero_padding_out),
                 "out_a": L(out_a), "out_v": L(out_v), "fused": L(out), "loss": loss.item(),
                 "scores": [score_audio.item(), score_visual.item()],
                 "running_before": running_before, **r,
                 "grads_before_clip": grads_before_clip, "head_grad_max": grad_max.item(),
                 "head_grad_min": grad_min.item(), "grad_global_norm": total_norm,
                 "clipped": clipped, "grads_after_clip": grads_after_clip,
                 "state_after_step": state_lists(model)})
    step += 1
    if step == total_batch:
      epoch, step = epoch + 1, 0
  return {"name": name,
          "inputs": {"rule": "cremad", "alpha": alpha, "total_batch": total_batch,
                     "lr": lr, "momentum": 0.9, "weight_decay": 1e-4, "bn_momentum": 0.1,
                     "bn_eps": 1e-5,
                     "architecture": "audio_net/visual_net = Linear -> BatchNorm1d -> ReLU; "
                                     "fusion_module.fc_out = Linear(concat(a, v)); torch Linear "
                                     "weight is [out, in]",
                     "initial_state": init_state,
                     "batches": [{k: L(v) for k, v in b.items()} for b in batches]},
          "expected": {"steps": rows}}


# ------------------------------------------------------------------ main


def rand_passes(gen, names, B, C, scale=1.0):
  return {k: torch.randn(B, C, generator=gen) * scale for k in names}


def main():
  gen = torch.Generator().manual_seed(20230814)
  cases = []
  B, C = 4, 6

  # (1) 4-step CREMA-D sequence across an epoch boundary, fresh start (running scores 0).
  steps = []
  for i in range(4):
    s = rand_passes(gen, PASSES_2, B, C, 1.5)
    s["label"] = torch.randint(0, C, (B,), generator=gen)
    steps.append(s)
  # step 2: one audio response with p(true) < 1e-8 -> floored at -log(1e-8)
  steps[2]["pad_visual_out"][0, steps[2]["label"][0]] -= 50.0
  # step 3: visual clearly weaker than audio
  steps[3]["pad_audio_out"] = steps[3]["pad_audio_out"] - 3.0 * torch.nn.functional.one_hot(
      steps[3]["label"], C)
  cases.append(cremad_sequence("cremad_sequence_fresh_start", steps, total_batch=2,
                               start_epoch=1, start_step=0, init_running=(0., 0.), alpha=1.5))
  cases.append(avmnist_sequence("avmnist_sequence_fresh_start", steps, num_batch=2,
                                start_epoch=1, start_step=0, init_running=(0., 0.), alpha=2.5))

  # clamp: running scores carried from earlier epochs (0.2 audio, 3.0 visual) and a balanced batch
  cases.append(score_sequence("cremad_clamp_at_10", "cremad", [(1.0, 1.0), (1.0, 1.0), (0.2, 3.0)],
                              total_batch=5, start_epoch=3, start_step=0,
                              init_running=(0.2, 3.0), alpha=1.5))
  cases.append(score_sequence("avmnist_no_clamp", "avmnist", [(1.0, 1.0), (1.0, 1.0), (0.2, 3.0)],
                              total_batch=5, start_epoch=3, start_step=0,
                              init_running=(0.2, 3.0), alpha=0.2))

  # (3) the steady case: CEs 0.5 (audio) / 1.5 (visual) every step
  steady = [(0.5, 1.5)] * 4
  cases.append(score_sequence("cremad_steady_0.5_1.5_fresh", "cremad", steady, total_batch=10,
                              start_epoch=1, start_step=0, init_running=(0., 0.), alpha=1.5))
  cases.append(score_sequence("cremad_steady_0.5_1.5_warm", "cremad", steady, total_batch=10,
                              start_epoch=2, start_step=3, init_running=(0.5, 1.5), alpha=1.5))
  cases.append(score_sequence("avmnist_steady_0.5_1.5_fresh", "avmnist", steady, total_batch=10,
                              start_epoch=1, start_step=0, init_running=(0., 0.), alpha=2.5))

  # three modalities (UR-Funny rule): scores -> coefficients, and logits -> responses -> scores
  cases.append(score_sequence("urfunny_scores_3_steps", "urfunny",
                              [(0.4, 0.9, 0.7), (0.5, 0.8, 0.7), (0.3, 1.2, 0.6)], total_batch=2,
                              start_epoch=1, start_step=0, init_running=(0., 0., 0.), alpha=4.0))
  usteps = []
  for i in range(3):
    s = rand_passes(gen, PASSES_3, B, 2, 1.0)
    s["label"] = torch.randint(0, 2, (B,), generator=gen)
    usteps.append(s)
  cases.append(urfunny_sequence("urfunny_logits_3_steps", usteps, total_batch=2, start_epoch=1,
                                init_running=(0., 0., 0.), alpha=4.0))

  # (2) responses and the hooks' gradients on fixed logits
  p2 = rand_passes(gen, PASSES_2, 3, 4, 1.0)
  label2 = torch.tensor([0, 3, 1])
  cases.append(hook_case("hook_gradients_2_modalities", ["audio", "visual"], PASSES_2,
                         [p2[k] for k in PASSES_2], label2, (0.4, 1.8)))
  cases.append(hook_case("hook_gradients_2_modalities_equal_coeffs", ["audio", "visual"], PASSES_2,
                         [p2[k] for k in PASSES_2], label2, (1.3, 1.3)))
  p3 = rand_passes(gen, PASSES_3, 3, 2, 1.0)
  label3 = torch.tensor([1, 0, 1])
  cases.append(hook_case("hook_gradients_3_modalities", ["audio", "visual", "text"], PASSES_3,
                         [p3[k] for k in PASSES_3], label3, (0.5, 1.5, 2.5)))

  # whole official step on a tiny late-fusion model (3 steps, 2 batches an epoch)
  cases.append(tiny_model_case("tiny_model_3_steps_no_clip", gen, 3, 2, alpha=1.5, lr=0.05,
                               input_scale=0.5))
  cases.append(tiny_model_case("tiny_model_3_steps_clip", gen, 3, 2, alpha=1.5, lr=0.05,
                               input_scale=4.0))

  doc = {
      "source": {
          "repo": "lihong2303/AGM_ICCV2023",
          "commit": COMMIT,
          "files": {
              "run/CREMAD_main.py": {"iteration": "48", "responses": "63-66", "loss": "69",
                                     "scores": "130-143", "coefficients": "145-152",
                                     "running_update": "154-155", "scale_and_backward": "159-166",
                                     "clip": "233-238", "optimizer_step": "244"},
              "model/CREMAD_net.py": {"responses": "7-17", "hooks": "25-55",
                                      "forward": "57-72", "zeroed_inputs": "100-105"},
              "run/AVMNIST_main.py": {"iteration": "38", "scores": "91-104",
                                      "coefficients": "106-117", "running_update": "119-120",
                                      "clip": "186-190"},
              "run/URFunny_main.py": {"iteration": "47", "scores": "109-115",
                                      "coefficients": "117-130", "running_update": "132-134",
                                      "clip": "203-207"},
              "model/URFunny_net.py": {"responses": "6-31", "forward": "80-126"},
          },
          "dtype": "float64 (official: float32)",
          "script": "tests/golden/make_agm.py",
          "conventions": "modality order [audio, visual] ([audio, visual, text] for 3); "
                         "pad_visual_out = f(a, 0), pad_audio_out = f(0, v); 'target' is the "
                         "official optimal_ratio (r_bar), 'running_before/after' the cumulative "
                         "mean scores train_score_* before/after this batch",
      },
      "cases": cases,
  }
  with open(OUT, "w") as fh:
    json.dump(doc, fh, separators=(",", ":"))
  print("wrote", OUT, "cases:", [c["name"] for c in cases])


if __name__ == "__main__":
  main()
