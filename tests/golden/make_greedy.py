"""Golden numbers for Greedy / balanced multi-modal learning (Wu et al., ICML 2022,
"Characterizing and overcoming the greedy nature of learning in multi-modal deep neural
networks"), transcribed from the official code, with BalanceBenchmark's version alongside.

Official repository: nyukat/greedy_multimodal_learning, commit a190e03
(a190e03755bd8d0883b2c5c0cd7921d2561ce2ee). Transcribed pieces (file: lines):
  src/balanced_mmtm.py  MMTM_mitigate
    - __init__: dim = C0 + C1, dim_out = int(2 * dim / ratio), fc_squeeze, fc_visual,
      fc_skeleton, running averages (both of size dim_visual), step = 0      16-47
    - forward, default path (squeeze = spatial mean, concat, fc_squeeze, ReLU, fc_<m>) 93-108
    - forward, turnoff_cross_modal_flow path (analysis only: the other modality's squeeze
      replaced by its recorded training-set average)                           72-91
    - sigmoid (no factor 2)                                                    110-111
    - running averages, updated on EVERY forward, skeleton's from vis_out (sic) 113-116
    - curation_mode: the caring modality's scale replaced by its running average 128-154
  src/model.py  MMTM_MVCNN: mmtm2/3/4 = MMTM(128,128,4)/(256,..)/(512,..) after
    layer2/3/4 of two torchvision ResNet-18s, per-branch fc heads, (x0+x1)/2     53-108
  src/callbacks.py  Bias_Mitigation_Strong
    - compute_BDR (grouping by parameter name, cumulative sums, log10)        199-233
    - on_backward_end (phase state machine), on_epoch_begin (unlock)           240-267
  src/framework.py  train_loop: epochs 1-based (293), zero_grad / forward / backward /
    on_backward_end / optimizer.step (310-315); the model is called with the current
    curation_mode / caring_modality (146-148), also in evaluation (216-238).
  train.py  blend_loss = sum of the per-branch CEs (22-28); SGD (47-50).
  configs/training_guided.gin  lr 0.1, momentum 0, wd 0, batch 8, epsilon 0.01,
    curation_windowsize 5, starting_epoch 2, branchnames, MMTMnames, n_epochs 300.

BalanceBenchmark: GeWu-Lab/BalanceBenchmark, commit 4c1482f
(4c1482fca5aaa8d4278af8e26020daa039e3ccf3):
  balancemm/models/avclassify_model.py  BaseClassifierGreedyModel (387-508), MMTM (537-624)
  balancemm/trainer/Greedy_trainer.py   train_loop decision (81-99), compute_learning_speed
                                        (147-180)
  configs/trainer_config.yaml:56-61     alpha 0.001, window_size 5
At 4c1482f, MMTM.forward resets `self.running_avg_weight = {}` (line 568) and then reads it
(line 594): KeyError on the first forward (case `bb_head_mmtm_raises_keyerror`). The working
transcription here is the same forward without line 568 (as at commit 39ed569).

Run from the repository root:  /work/torchenv/bin/python tests/golden/make_greedy.py
Writes tests/golden/greedy.json. Deterministic (fixed seed; every input is in the JSON).
Layouts are torch's: Linear weight [out, in] (a Flax Dense kernel is its transpose); feature
maps NCHW (Flax: NHWC). Computation in float64 (the official code runs in float32).
"""
import json
import os

import numpy as np
import torch
import torch.nn as nn

torch.set_default_dtype(torch.float64)
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "greedy.json")
SEED = 0


def tolist(x):
  if isinstance(x, torch.Tensor):
    return x.detach().tolist()
  if isinstance(x, dict):
    return {k: tolist(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [tolist(v) for v in x]
  if isinstance(x, (np.floating,)):
    return float(x)
  if isinstance(x, (np.integer,)):
    return int(x)
  return x


# ================================================================ official: balanced_mmtm.py


class MMTMMitigate(nn.Module):
  """balanced_mmtm.py:16-154 (SEonly=False, shareweight=False, the defaults; the device
  placement dropped). Names as the official module: fc_squeeze, fc_visual (modality 0),
  fc_skeleton (modality 1)."""

  def __init__(self, dim_visual, dim_skeleton, ratio):
    super().__init__()
    dim = dim_visual + dim_skeleton
    dim_out = int(2 * dim / ratio)                                        # 25-26
    self.running_avg_weight_visual = torch.zeros(dim_visual)              # 30
    self.running_avg_weight_skeleton = torch.zeros(dim_visual)            # 31 (sic: dim_visual)
    self.step = 0                                                         # 32
    self.fc_squeeze = nn.Linear(dim, dim_out)                             # 38
    self.fc_visual = nn.Linear(dim_out, dim_visual)                       # 44
    self.fc_skeleton = nn.Linear(dim_out, dim_skeleton)                   # 45
    self.relu = nn.ReLU()
    self.sigmoid = nn.Sigmoid()

  def forward(self, visual, skeleton, turnoff_cross_modal_flow=False, average_squeezemaps=None,
              curation_mode=False, caring_modality=0):
    if turnoff_cross_modal_flow:                                          # 72-91
      tview = visual.view(visual.shape[:2] + (-1,))
      squeeze = torch.cat([torch.mean(tview, dim=-1),
                           torch.stack(visual.shape[0] * [average_squeezemaps[1]])], 1)
      excitation = self.relu(self.fc_squeeze(squeeze))
      vis_out = self.fc_visual(excitation)
      tview = skeleton.view(skeleton.shape[:2] + (-1,))
      squeeze = torch.cat([torch.stack(skeleton.shape[0] * [average_squeezemaps[0]]),
                           torch.mean(tview, dim=-1)], 1)
      excitation = self.relu(self.fc_squeeze(squeeze))
      sk_out = self.fc_skeleton(excitation)
    else:                                                                 # 93-108
      squeeze_array = []
      for tensor in [visual, skeleton]:
        tview = tensor.view(tensor.shape[:2] + (-1,))
        squeeze_array.append(torch.mean(tview, dim=-1))
      squeeze = torch.cat(squeeze_array, 1)
      excitation = self.fc_squeeze(squeeze)
      excitation = self.relu(excitation)
      vis_out = self.fc_visual(excitation)
      sk_out = self.fc_skeleton(excitation)

    vis_out = self.sigmoid(vis_out)                                       # 110-111
    sk_out = self.sigmoid(sk_out)

    # 113-116: cumulative mean over forward calls; the skeleton one averages vis_out (sic)
    self.running_avg_weight_visual = (
        vis_out.mean(0) + self.running_avg_weight_visual * self.step).detach() / (self.step + 1)
    self.running_avg_weight_skeleton = (
        vis_out.mean(0) + self.running_avg_weight_skeleton * self.step).detach() / (self.step + 1)
    self.step += 1

    scales = [vis_out, sk_out]                                            # 118-119 (return_scale)

    if not curation_mode:                                                 # 128-133
      dim_diff = len(visual.shape) - len(vis_out.shape)
      vis_out = vis_out.view(vis_out.shape + (1,) * dim_diff)
      dim_diff = len(skeleton.shape) - len(sk_out.shape)
      sk_out = sk_out.view(sk_out.shape + (1,) * dim_diff)
    else:
      if caring_modality == 0:                                            # 136-143
        dim_diff = len(skeleton.shape) - len(sk_out.shape)
        sk_out = sk_out.view(sk_out.shape + (1,) * dim_diff)
        dim_diff = len(visual.shape) - len(vis_out.shape)
        vis_out = torch.stack(vis_out.shape[0] * [self.running_avg_weight_visual]).view(
            vis_out.shape + (1,) * dim_diff)
      elif caring_modality == 1:                                          # 145-152
        dim_diff = len(visual.shape) - len(vis_out.shape)
        vis_out = vis_out.view(vis_out.shape + (1,) * dim_diff)
        dim_diff = len(skeleton.shape) - len(sk_out.shape)
        sk_out = torch.stack(sk_out.shape[0] * [self.running_avg_weight_skeleton]).view(
            sk_out.shape + (1,) * dim_diff)

    return visual * vis_out, skeleton * sk_out, scales                    # 154


# ================================================================ official: callbacks.py


class BiasMitigationStrong:
  """callbacks.py:173-267. `self.model` is the raw nn.Module (its named_parameters);
  `self.model_pytoune` holds curation_mode / caring_modality, read by the next forward."""

  def __init__(self, epsilon, curation_windowsize, branchnames, starting_epoch=2,
               MMTMnames=("visual", "skeleton")):
    self.epsilon = epsilon
    self.branchnames = list(branchnames)
    self.MMTMnames = list(MMTMnames)
    self.curation_windowsize = curation_windowsize
    self.starting_epoch = starting_epoch
    self.log = None  # per-call record for the golden file (not official)

  def on_train_begin(self, logs):                                         # 190-197
    self.M_bypass_modal_0 = 0
    self.M_bypass_modal_1 = 0
    self.M_main_modal_0 = 0
    self.M_main_modal_1 = 0
    self.model_pytoune.curation_mode = False
    self.model_pytoune.caring_modality = None
    self.unlock = False

  def compute_BDR(self):                                                  # 199-233
    wn_main, wn_bypass = [0] * len(self.branchnames), [0] * len(self.branchnames)
    gn_main, gn_bypass = [0] * len(self.branchnames), [0] * len(self.branchnames)
    groups = {}
    for name, parameter in self.model.named_parameters():
      wn = (parameter ** 2).sum().item()
      gn = (parameter.grad.data ** 2).sum().item()
      if "mmtm" in name:
        shared = True
        for ind, modal in enumerate(self.MMTMnames):
          if modal in name:
            wn_bypass[ind] += wn
            gn_bypass[ind] += gn
            shared = False
            groups[name] = f"bypass_{ind}"
        if shared:
          for ind, modal in enumerate(self.MMTMnames):
            wn_bypass[ind] += wn
            gn_bypass[ind] += gn
          groups[name] = "bypass_shared"
      else:
        groups[name] = None
        for ind, modal in enumerate(self.branchnames):
          if modal in name:
            wn_main[ind] += wn
            gn_main[ind] += gn
            groups[name] = f"main_{ind}"

    self.M_bypass_modal_0 += gn_bypass[0] / wn_bypass[0]
    self.M_bypass_modal_1 += gn_bypass[1] / wn_bypass[1]
    self.M_main_modal_0 += gn_main[0] / wn_main[0]
    self.M_main_modal_1 += gn_main[1] / wn_main[1]

    BDR_0 = np.log10(self.M_bypass_modal_0 / self.M_main_modal_0)
    BDR_1 = np.log10(self.M_bypass_modal_1 / self.M_main_modal_1)
    self.log = {"wn_main": wn_main, "gn_main": gn_main, "wn_bypass": wn_bypass,
                "gn_bypass": gn_bypass, "groups": groups,
                "M_main": [self.M_main_modal_0, self.M_main_modal_1],
                "M_bypass": [self.M_bypass_modal_0, self.M_bypass_modal_1],
                "BDR": [float(BDR_0), float(BDR_1)]}
    return BDR_0 - BDR_1

  def on_backward_end(self, batch):                                       # 240-263
    self.log = None
    if self.unlock:
      if not self.model_pytoune.curation_mode:
        self.d_BDR = self.compute_BDR()
        if abs(self.d_BDR) > self.epsilon:
          biased_direction = np.sign(self.d_BDR)
          self.model_pytoune.curation_mode = True
          self.curation_step = 0
          if biased_direction == -1:  # BDR0<BDR1
            self.model_pytoune.caring_modality = 1
          elif biased_direction == 1:  # BDR0>BDR1
            self.model_pytoune.caring_modality = 0
        else:
          self.model_pytoune.curation_mode = False
          self.model_pytoune.caring_modality = 0
      else:
        self.curation_step += 1
        if self.curation_step == self.curation_windowsize:
          self.model_pytoune.curation_mode = False
    else:
      self.d_BDR = self.compute_BDR()
      self.model_pytoune.curation_mode = False
      self.model_pytoune.caring_modality = 0

  def on_epoch_begin(self, epoch, logs):                                  # 265-267
    if epoch >= self.starting_epoch:
      self.unlock = True


class FakeModel:
  """Stands for the nn.Module whose named_parameters() compute_BDR walks."""

  def __init__(self):
    self.params = []

  def named_parameters(self):
    return iter(self.params)


class FakePytoune:
  curation_mode = False
  caring_modality = None


def make_named_params(spec):
  """spec: list of (name, weight list, grad list) -> [(name, Parameter with .grad)]."""
  out = []
  for name, w, g in spec:
    p = nn.Parameter(torch.tensor(w))
    p.grad = torch.tensor(g)
    out.append((name, p))
  return out


def group_params(gn_wn):
  """Per-step group norms -> one 1-element parameter per group with the official names, so
  that compute_BDR sees exactly these sums: param = sqrt(wn), grad = sqrt(gn)."""
  names = {"main_0": "net_view_0.layer1.0.conv1.weight",
           "main_1": "net_view_1.layer1.0.conv1.weight",
           "bypass_0": "mmtm2.fc_visual.weight",
           "bypass_1": "mmtm2.fc_skeleton.weight",
           "shared": "mmtm2.fc_squeeze.weight"}
  return make_named_params([(names[k], [float(np.sqrt(v[1]))], [float(np.sqrt(v[0]))])
                            for k, v in gn_wn.items()])


def run_official_schedule(steps, steps_per_epoch, n_epochs, epsilon=0.01, window=5,
                          starting_epoch=2):
  """framework.py:293-315 with callbacks.py's Bias_Mitigation_Strong. steps: per global step
  a dict group -> (gn, wn). Epochs are 1-based as in the official loop (`range(1, epochs+1)`;
  training_loop passes epochs = n_epochs - 1)."""
  cb = BiasMitigationStrong(epsilon, window, ["net_view_0", "net_view_1"], starting_epoch,
                            ["visual", "skeleton"])
  cb.model = FakeModel()
  cb.model_pytoune = FakePytoune()
  cb.on_train_begin({})
  rec, k = [], 0
  for epoch in range(1, n_epochs + 1):
    cb.on_epoch_begin(epoch, {})
    for batch_ind in range(1, steps_per_epoch + 1):
      fwd_mode = bool(cb.model_pytoune.curation_mode)       # what the forward sees (146-148)
      fwd_caring = cb.model_pytoune.caring_modality
      cb.model.params = group_params(steps[k])              # grads of this step's backward
      cb.on_backward_end(batch_ind)                         # before optimizer.step (314-315)
      rec.append({"global_step": k, "epoch": epoch, "batch": batch_ind,
                  "unlocked": bool(cb.unlock),
                  "forward_curation_mode": fwd_mode, "forward_caring_modality": fwd_caring,
                  "bdr_computed": cb.log is not None,
                  "d_BDR": float(cb.d_BDR) if cb.log is not None else None,
                  "BDR": cb.log["BDR"] if cb.log is not None else None,
                  "M_main": cb.log["M_main"] if cb.log is not None else None,
                  "M_bypass": cb.log["M_bypass"] if cb.log is not None else None,
                  "after_curation_mode": bool(cb.model_pytoune.curation_mode),
                  "after_caring_modality": cb.model_pytoune.caring_modality,
                  "after_curation_step": getattr(cb, "curation_step", None)})
      k += 1
    # the epoch's val/test passes run with the state left here (framework.py:330-332)
    rec[-1]["eval_curation_mode"] = bool(cb.model_pytoune.curation_mode)
    rec[-1]["eval_caring_modality"] = cb.model_pytoune.caring_modality
  return rec


# ================================================================ BalanceBenchmark


class BBMMTM(nn.Module):
  """avclassify_model.py:537-624 for two modalities [audio, visual] (ResNet-18 path).
  head=True reproduces line 568 (`self.running_avg_weight = {}` inside forward) -> KeyError."""

  def __init__(self, modalities_dims, ratio, modalitys=("audio", "visual"), head=False):
    super().__init__()
    self.modalities_dims = modalities_dims
    total_dim = sum(modalities_dims)
    dim_out = int(2 * total_dim / ratio)                                  # 542
    self.fc_squeeze = nn.Linear(total_dim, dim_out)                       # 544
    key = list(modalitys)
    self.fc_excites = nn.ModuleDict({key[0]: nn.Linear(dim_out, modalities_dims[0]),
                                     key[1]: nn.Linear(dim_out, modalities_dims[1])})
    self.modalitys = list(modalitys)
    self.running_avg_weight = {}
    for i, modality in enumerate(modalitys):                              # 550-553
      self.running_avg_weight[modality] = torch.zeros(modalities_dims[i])
    self.step = 0
    self.relu = nn.ReLU()
    self.sigmoid = nn.Sigmoid()
    self.head = head

  def forward(self, data, curation_mode=False, caring_modality=0):
    squeeze_array = []
    if self.head:
      self.running_avg_weight = {}                                        # 568 (HEAD only)
    modality_list = self.modalitys
    for modality in modality_list:                                        # 570-576
      if modality == "visual" or modality == "flow":
        (_, C, H, W) = data[modality].size()
        B = 64                                                            # 574 (hard-coded)
        data[modality] = data[modality].view(B, -1, C, H, W)
        data[modality] = data[modality].permute(0, 2, 1, 3, 4)
    for modality in modality_list:                                        # 578-581
      B, C = data[modality].shape[0], data[modality].shape[1]
      tview = data[modality].reshape(B, C, -1)
      squeeze_array.append(torch.mean(tview, dim=-1))
    squeeze = torch.cat(squeeze_array, 1)                                 # 587-589
    excitation = self.fc_squeeze(squeeze)
    excitation = self.relu(excitation)
    out = {}
    for modality in modality_list:                                        # 591-595
      out[modality] = self.fc_excites[modality](excitation)
      out[modality] = self.sigmoid(out[modality])
      self.running_avg_weight[modality] = (
          out[modality].mean(0) + self.running_avg_weight[modality] * self.step
      ).detach() / (self.step + 1)
    self.step += 1
    scales = {m: out[m] for m in modality_list}
    key = list(modality_list)
    if not curation_mode:                                                 # 598-601
      for modality in modality_list:
        dim_diff = len(data[modality].shape) - len(out[modality].shape)
        out[modality] = out[modality].view(out[modality].shape + (1,) * dim_diff)
    else:
      if caring_modality == 0:                                            # 603-609
        dim_diff = len(data[key[0]].shape) - len(out[key[0]].shape)
        out[key[0]] = torch.stack(out[key[0]].shape[0] * [self.running_avg_weight[key[0]]]
                                  ).view(out[key[0]].shape + (1,) * dim_diff)
        dim_diff = len(data[key[1]].shape) - len(out[key[1]].shape)
        out[key[1]] = out[key[1]].view(out[key[1]].shape + (1,) * dim_diff)
      elif caring_modality == 1:                                          # 611-617
        dim_diff = len(data[key[1]].shape) - len(out[key[1]].shape)
        out[key[1]] = torch.stack(out[key[1]].shape[0] * [self.running_avg_weight[key[1]]]
                                  ).view(out[key[1]].shape + (1,) * dim_diff)
        dim_diff = len(data[key[0]].shape) - len(out[key[0]].shape)
        out[key[0]] = out[key[0]].view(out[key[0]].shape + (1,) * dim_diff)
    for modality in modality_list:                                        # 618-621
      data[modality] = data[modality] * out[modality]
      if modality == "visual" or modality == "flow":
        data[modality] = data[modality].permute(0, 2, 1, 3, 4).view(-1, C, H, W)
    return data, scales


def bb_compute_learning_speed(state, named_parameters, modality_list=("audio", "visual")):
  """Greedy_trainer.py:147-180 (fusion_module.* matches neither group)."""
  wn_main, wn_bypass = [0] * len(modality_list), [0] * len(modality_list)
  gn_main, gn_bypass = [0] * len(modality_list), [0] * len(modality_list)
  groups = {}
  for name, parameter in named_parameters:
    wn = (parameter ** 2).sum().item()
    gn = (parameter.grad.data ** 2).sum().item()
    if "mmtm_layers" in name:
      shared = True
      for ind, modal in enumerate(modality_list):
        if modal in name:
          wn_bypass[ind] += wn
          gn_bypass[ind] += gn
          shared = False
          groups[name] = f"bypass_{ind}"
      if shared:
        for ind, modal in enumerate(modality_list):
          wn_bypass[ind] += wn
          gn_bypass[ind] += gn
        groups[name] = "bypass_shared"
    else:
      groups[name] = None
      for ind, modal in enumerate(modality_list):
        if modal in name:
          wn_main[ind] += wn
          gn_main[ind] += gn
          groups[name] = f"main_{ind}"
  state["M_bypass_modal_0"] += gn_bypass[0] / wn_bypass[0]
  state["M_bypass_modal_1"] += gn_bypass[1] / wn_bypass[1]
  state["M_main_modal_0"] += gn_main[0] / wn_main[0]
  state["M_main_modal_1"] += gn_main[1] / wn_main[1]
  BDR_0 = np.log10(state["M_bypass_modal_0"] / state["M_main_modal_0"])
  BDR_1 = np.log10(state["M_bypass_modal_1"] / state["M_main_modal_1"])
  log = {"wn_main": wn_main, "gn_main": gn_main, "wn_bypass": wn_bypass, "gn_bypass": gn_bypass,
         "groups": groups, "BDR": [float(BDR_0), float(BDR_1)],
         "M_main": [state["M_main_modal_0"], state["M_main_modal_1"]],
         "M_bypass": [state["M_bypass_modal_0"], state["M_bypass_modal_1"]]}
  return BDR_0 - BDR_1, log


def run_bb_schedule(steps, steps_per_epoch, n_epochs, alpha=0.001, window_size=5):
  """Greedy_trainer.py:22-35 (state) and 81-99 (per step, after backward, before
  optimizer.step). No warm-up: from the first step of epoch 0. Epochs 0-based."""
  st = {"M_bypass_modal_0": 0, "M_bypass_modal_1": 0, "M_main_modal_0": 0, "M_main_modal_1": 0}
  curation_mode, caring_modality, curation_step, speed = False, 0, window_size, 0
  names = {"main_0": "modality_encoder.audio.layer1.0.conv1.weight",
           "main_1": "modality_encoder.visual.layer1.0.conv1.weight",
           "bypass_0": "mmtm_layers.mmtm2.fc_excites.audio.weight",
           "bypass_1": "mmtm_layers.mmtm2.fc_excites.visual.weight",
           "shared": "mmtm_layers.mmtm2.fc_squeeze.weight"}
  rec, k = [], 0
  for epoch in range(n_epochs):
    for batch_idx in range(steps_per_epoch):
      fwd_mode, fwd_caring = curation_mode, caring_modality
      params = make_named_params([(names[g], [float(np.sqrt(v[1]))], [float(np.sqrt(v[0]))])
                                  for g, v in steps[k].items()])
      log = None
      if not curation_mode:
        speed, log = bb_compute_learning_speed(st, params)
        if abs(speed) > alpha:
          biased_direction = np.sign(speed)
          curation_mode = True
          curation_step = 0
          if biased_direction == -1:
            caring_modality = 1
          elif biased_direction == 1:
            caring_modality = 0
        else:
          curation_mode = False
          caring_modality = 0
      else:
        curation_step += 1
        if curation_step == window_size:
          curation_mode = False
      rec.append({"global_step": k, "epoch": epoch, "batch": batch_idx,
                  "forward_curation_mode": fwd_mode, "forward_caring_modality": fwd_caring,
                  "bdr_computed": log is not None,
                  "d_BDR": float(speed) if log is not None else None,
                  "BDR": log["BDR"] if log else None,
                  "after_curation_mode": curation_mode,
                  "after_caring_modality": caring_modality,
                  "after_curation_step": curation_step})
      k += 1
  return rec


# ================================================================ cases


def rnd(gen, *shape):
  return torch.randn(*shape, generator=gen)


def linear_weights(mod):
  return {n: p.detach().clone() for n, p in mod.named_parameters()}


def set_weights(mod, w):
  with torch.no_grad():
    for n, p in mod.named_parameters():
      p.copy_(w[n])


def mmtm_call(m, visual, skeleton, R0, R1, **kw):
  """One forward + backward of L = sum(out0 * R0) + sum(out1 * R1); returns everything."""
  v = visual.clone().requires_grad_(True)
  s = skeleton.clone().requires_grad_(True)
  m.zero_grad(set_to_none=False)
  for p in m.parameters():
    p.grad = torch.zeros_like(p)
  o0, o1, scales = m(v, s, **kw)
  loss = (o0 * R0).sum() + (o1 * R1).sum()
  loss.backward()
  return {"out_0": o0, "out_1": o1, "scale_0": scales[0], "scale_1": scales[1],
          "running_avg_0": m.running_avg_weight_visual.clone(),
          "running_avg_1": m.running_avg_weight_skeleton.clone(), "step_after": m.step,
          "loss": loss.item(),
          "grad_input_0": v.grad, "grad_input_1": s.grad,
          "grads": {n: p.grad.clone() for n, p in m.named_parameters()}}


def case_mmtm_official(gen):
  cases = []
  B, C, H, W, ratio = 3, 4, 2, 2, 4
  torch.manual_seed(SEED)
  m = MMTMMitigate(C, C, ratio)
  with torch.no_grad():
    for p in m.parameters():
      p.copy_(rnd(gen, *p.shape) * 0.5)
  w0 = linear_weights(m)
  calls = [
      {"curation_mode": False, "caring_modality": 0},
      {"curation_mode": False, "caring_modality": 0},
      {"curation_mode": True, "caring_modality": 0},
      {"curation_mode": True, "caring_modality": 1},
      {"curation_mode": False, "caring_modality": 1},
  ]
  inputs, expected = [], []
  for kw in calls:
    v = torch.relu(rnd(gen, B, C, H, W))  # post-ReLU stage outputs
    s = torch.relu(rnd(gen, B, C, H, W))
    R0, R1 = rnd(gen, B, C, H, W), rnd(gen, B, C, H, W)
    r = mmtm_call(m, v, s, R0, R1, **kw)
    inputs.append({"visual": v, "skeleton": s, "R0": R0, "R1": R1, **kw})
    expected.append(r)
  cases.append({
      "name": "official_mmtm_sequence",
      "inputs": {"dims": [C, C], "ratio": ratio, "dim_out": int(2 * 2 * C / ratio),
                 "weights": w0, "initial_running_avg": [[0.0] * C, [0.0] * C],
                 "initial_step": 0, "calls": inputs,
                 "loss": "sum(out_0 * R0) + sum(out_1 * R1), backward for the grads"},
      "expected": {"calls": expected},
      "notes": ("balanced_mmtm.py:16-154. The state (running averages, step) threads through "
                "the calls in order, weights fixed (no optimizer step). Running averages are "
                "updated on every call, before the replacement, so the replacement includes "
                "the current batch. running_avg_1 is the cumulative mean of scale_0 "
                "(line 114 uses vis_out), so with caring_modality 1 the skeleton stream is "
                "scaled by modality 0's average scale. In curation calls the replaced scale is "
                "detached: fc_<caring> gets zero grad, fc_squeeze only through the other "
                "modality's excitation. scale_* are the sigmoids before replacement.")})

  # turnoff_cross_modal_flow (eval-time analysis for the conditional utilisation rate)
  m2 = MMTMMitigate(C, C, ratio)
  set_weights(m2, w0)
  v = torch.relu(rnd(gen, B, C, H, W))
  s = torch.relu(rnd(gen, B, C, H, W))
  avg_sq = [torch.relu(rnd(gen, C)), torch.relu(rnd(gen, C))]
  R0, R1 = rnd(gen, B, C, H, W), rnd(gen, B, C, H, W)
  r = mmtm_call(m2, v, s, R0, R1, turnoff_cross_modal_flow=True, average_squeezemaps=avg_sq)
  cases.append({
      "name": "official_mmtm_turnoff_cross_modal_flow",
      "inputs": {"dims": [C, C], "ratio": ratio, "weights": w0, "visual": v, "skeleton": s,
                 "average_squeezemaps": avg_sq, "R0": R0, "R1": R1,
                 "initial_running_avg": [[0.0] * C, [0.0] * C], "initial_step": 0},
      "expected": {k: r[k] for k in ("out_0", "out_1", "scale_0", "scale_1", "running_avg_0",
                                     "running_avg_1", "step_after")},
      "notes": ("balanced_mmtm.py:72-91 (used by eval.gin's mmtm_off for the conditional "
                "utilisation rate, not during training): modality 0's excitation from "
                "[own squeeze, average squeeze of modality 1], modality 1's from [average "
                "squeeze of modality 0, own squeeze]; same fc_squeeze for both.")})
  return cases


def case_bdr_official(gen):
  """compute_BDR on parameters named as MMTM_MVCNN's (incl. BN, fc heads, shared fc_squeeze)."""
  names = ["net_view_0.conv1.weight", "net_view_0.bn1.weight", "net_view_0.bn1.bias",
           "net_view_0.fc.weight", "net_view_0.fc.bias",
           "net_view_1.conv1.weight", "net_view_1.bn1.weight", "net_view_1.bn1.bias",
           "net_view_1.fc.weight", "net_view_1.fc.bias",
           "mmtm2.fc_squeeze.weight", "mmtm2.fc_squeeze.bias",
           "mmtm2.fc_visual.weight", "mmtm2.fc_visual.bias",
           "mmtm2.fc_skeleton.weight", "mmtm2.fc_skeleton.bias",
           "mmtm3.fc_squeeze.weight", "mmtm3.fc_visual.weight", "mmtm3.fc_skeleton.weight"]
  shapes = [(2, 1, 3, 3), (2,), (2,), (3, 2), (3,)] * 2 + [(2, 4), (2,), (2, 2), (2,), (2, 2),
                                                          (2,), (2, 4), (2, 2), (2, 2)]
  cb = BiasMitigationStrong(0.01, 5, ["net_view_0", "net_view_1"], 2, ["visual", "skeleton"])
  cb.model = FakeModel()
  cb.model_pytoune = FakePytoune()
  cb.on_train_begin({})
  steps_in, steps_out = [], []
  for t in range(4):
    scale = {0: 1.0, 1: 3.0, 2: 0.5, 3: 2.0}[t]
    spec = []
    for n, sh in zip(names, shapes):
      w = rnd(gen, *sh)
      g = rnd(gen, *sh) * (scale if "mmtm" in n else 0.3)
      spec.append((n, w.tolist(), g.tolist()))
    cb.model.params = make_named_params(spec)
    d = cb.compute_BDR()
    steps_in.append({"params": {n: {"w": w, "g": g} for n, w, g in spec}})
    steps_out.append({**cb.log, "d_BDR": float(d)})
  return {"name": "official_bdr_named_params",
          "inputs": {"branchnames": ["net_view_0", "net_view_1"],
                     "MMTMnames": ["visual", "skeleton"], "steps": steps_in},
          "expected": {"steps": steps_out},
          "notes": ("callbacks.py:199-233, called once per step with the grads of that step "
                    "(before optimizer.step) and the pre-step weights. A name with 'mmtm' is a "
                    "bypass parameter: of modality i if it contains MMTMnames[i] (fc_visual -> 0,"
                    " fc_skeleton -> 1), else shared (fc_squeeze) and added to BOTH bypass sums; "
                    "any other name is main of modality i if it contains branchnames[i] "
                    "(encoder i incl. BN affine and its fc head). Per step each group's "
                    "sum(g^2)/sum(w^2) (ratio of sums) is added to a cumulative M; "
                    "BDR_i = log10(M_bypass_i / M_main_i); d_BDR = BDR_0 - BDR_1.")}


def schedule_steps(gen, n):
  """Per-step group norms (gn, wn) with phases that push d_BDR both ways and near zero."""
  steps = []
  for k in range(n):
    u = lambda: float(torch.rand(1, generator=gen)) * 0.2 + 0.9
    # bypass_i learning-speed multipliers, chosen per segment of the run
    if k < 7:
      b0, b1 = 2.0, 1.0          # warm-up: d_BDR > 0 but locked
    elif k < 14:
      b0, b1 = 2.0, 1.0          # unlocked: triggers caring 0
    elif k < 22:
      b0, b1 = 0.2, 8.0          # drives d_BDR negative -> caring 1
    else:
      b0, b1 = 1.0, 1.0
    steps.append({"main_0": (1e-4 * u(), 50.0 * u()), "main_1": (1e-4 * u(), 50.0 * u()),
                  "bypass_0": (1e-4 * b0 * u(), 5.0 * u()),
                  "bypass_1": (1e-4 * b1 * u(), 5.0 * u()),
                  "shared": (1e-5 * u(), 5.0 * u())})
  return steps


def targeted_steps(gen, spe, n_epochs, targets, epsilon=0.01, window=5, starting_epoch=2):
  """Random per-step group norms, except that at the global steps in `targets` (steps where the
  official callback computes BDR) modality 1's (or 0's) own bypass gradient norm is solved for
  so that d_BDR hits the target. This only builds INPUTS; the expected values come from
  run_official_schedule on them."""
  cb = BiasMitigationStrong(epsilon, window, ["net_view_0", "net_view_1"], starting_epoch)
  cb.model, cb.model_pytoune = FakeModel(), FakePytoune()
  cb.on_train_begin({})
  steps, k = [], 0
  u = lambda: float(torch.rand(1, generator=gen)) * 0.2 + 0.9
  for epoch in range(1, n_epochs + 1):
    cb.on_epoch_begin(epoch, {})
    for batch_ind in range(1, spe + 1):
      s = {"main_0": [1e-4 * u(), 50.0 * u()], "main_1": [1e-4 * u(), 50.0 * u()],
           "bypass_0": [2e-4 * u(), 5.0 * u()], "bypass_1": [1e-4 * u(), 5.0 * u()],
           "shared": [1e-5 * u(), 5.0 * u()]}
      computes = (not cb.unlock) or (not cb.model_pytoune.curation_mode)
      if k in targets:
        assert computes, k
        mm0 = cb.M_main_modal_0 + s["main_0"][0] / s["main_0"][1]
        mm1 = cb.M_main_modal_1 + s["main_1"][0] / s["main_1"][1]
        mb0 = cb.M_bypass_modal_0 + (s["bypass_0"][0] + s["shared"][0]) / (
            s["bypass_0"][1] + s["shared"][1])
        need_mb1 = mm1 * (mb0 / mm0) / 10 ** targets[k]
        r1 = need_mb1 - cb.M_bypass_modal_1
        g1 = r1 * (s["bypass_1"][1] + s["shared"][1]) - s["shared"][0]
        if g1 > 0:
          s["bypass_1"][0] = g1
        else:  # raise modality 0's bypass instead
          mb1 = cb.M_bypass_modal_1 + (s["bypass_1"][0] + s["shared"][0]) / (
              s["bypass_1"][1] + s["shared"][1])
          need_mb0 = mm0 * (mb1 / mm1) * 10 ** targets[k]
          r0 = need_mb0 - cb.M_bypass_modal_0
          g0 = r0 * (s["bypass_0"][1] + s["shared"][1]) - s["shared"][0]
          assert g0 > 0, (k, g0)
          s["bypass_0"][0] = g0
      s = {g: tuple(v) for g, v in s.items()}
      steps.append(s)
      cb.model.params = group_params(s)
      cb.on_backward_end(batch_ind)
      k += 1
  return steps


def case_schedules(gen):
  spe, n_epochs = 7, 5
  # global step -> wanted d_BDR (steps where the official callback computes it)
  targets = {13: -0.2, 19: 0.005, 20: 0.05, 26: -0.005, 27: -0.05, 33: 0.009}
  steps = targeted_steps(gen, spe, n_epochs, targets)
  rec = run_official_schedule(steps, spe, n_epochs)
  for k, t in targets.items():
    assert abs(rec[k]["d_BDR"] - t) < 1e-9, (k, rec[k]["d_BDR"], t)
  no_trig = [r["global_step"] for r in rec if r["bdr_computed"] and r["unlocked"]
             and abs(r["d_BDR"]) <= 0.01]
  starts = [(r["global_step"], r["after_caring_modality"]) for r in rec
            if r["bdr_computed"] and r["unlocked"] and abs(r["d_BDR"]) > 0.01]
  official = {
      "name": "official_phase_schedule",
      "inputs": {"steps_per_epoch": spe, "epochs": n_epochs, "epoch_numbering": "1-based",
                 "epsilon": 0.01, "curation_windowsize": 5, "starting_epoch": 2,
                 "group_norms": [{g: {"gn": v[0], "wn": v[1]} for g, v in s.items()}
                                 for s in steps],
                 "groups": ("main_i: sum g^2 / sum w^2 over encoder i + head i; bypass_i: "
                            "fc_<i> of the MMTMs; shared: fc_squeeze, added to both bypass "
                            "sums; per group gn = sum of squared grads, wn = sum of squared "
                            "weights")},
      "expected": {"steps": rec, "phase_starts": starts, "balanced_steps": no_trig},
      "notes": ("framework.py:293-315 + callbacks.py:240-267. Epoch 1 (the first) is warm-up: "
                "BDR accumulated every step, curation off, caring 0. From epoch 2 (1-based; the "
                "second epoch) at each non-curation step: BDR accumulated; |d_BDR| > eps -> "
                "curation on for the NEXT 5 forwards (caring 0 if d>0, 1 if d<0); those 5 "
                "steps neither compute nor accumulate BDR (their group_norms are unused). "
                "|d_BDR| <= eps -> curation off, caring 0. The state carries across epoch "
                "boundaries and is what the epoch's val/test forwards use "
                "(eval_curation_mode / eval_caring_modality on the epoch's last step).")}
  bb_steps = schedule_steps(gen, spe * n_epochs)
  bb_rec = run_bb_schedule(bb_steps, spe, n_epochs)
  bb = {
      "name": "balancebenchmark_phase_schedule",
      "inputs": {"steps_per_epoch": spe, "epochs": n_epochs, "epoch_numbering": "0-based",
                 "alpha": 0.001, "window_size": 5,
                 "group_norms": [{g: {"gn": v[0], "wn": v[1]} for g, v in s.items()}
                                 for s in bb_steps],
                 "groups": ("main_i: modality_encoder.<m_i>.*; bypass_i: "
                            "mmtm_layers.*.fc_excites.<m_i>.*; shared: mmtm_layers.*.fc_squeeze.*"
                            "; fusion_module.* in no group")},
      "expected": {"steps": bb_rec},
      "notes": ("Greedy_trainer.py:22-35, 81-99, 147-180: the same state machine with no "
                "warm-up (from the first step of epoch 0) and threshold alpha 0.001; "
                "modulation_starts/ends are read but both branches of the if do the same.")}
  return [official, bb]


def case_bb_learning_speed(gen):
  names = ["modality_encoder.audio.conv1.weight", "modality_encoder.audio.bn1.weight",
           "modality_encoder.visual.conv1.weight", "modality_encoder.visual.bn1.bias",
           "mmtm_layers.mmtm1.fc_squeeze.weight", "mmtm_layers.mmtm1.fc_squeeze.bias",
           "mmtm_layers.mmtm1.fc_excites.audio.weight", "mmtm_layers.mmtm1.fc_excites.audio.bias",
           "mmtm_layers.mmtm1.fc_excites.visual.weight",
           "mmtm_layers.mmtm1.fc_excites.visual.bias",
           "fusion_module.fc_out.weight", "fusion_module.fc_out.bias"]
  shapes = [(2, 1, 3, 3), (2,), (2, 3, 3, 3), (2,), (2, 4), (2,), (2, 2), (2,), (2, 2), (2,),
            (3, 4), (3,)]
  st = {"M_bypass_modal_0": 0, "M_bypass_modal_1": 0, "M_main_modal_0": 0, "M_main_modal_1": 0}
  steps_in, steps_out = [], []
  for t in range(3):
    spec = [(n, rnd(gen, *sh).tolist(), (rnd(gen, *sh) * (0.5 + t)).tolist())
            for n, sh in zip(names, shapes)]
    d, log = bb_compute_learning_speed(st, make_named_params(spec))
    steps_in.append({"params": {n: {"w": w, "g": g} for n, w, g in spec}})
    steps_out.append({**log, "d_BDR": float(d)})
  return {"name": "balancebenchmark_learning_speed_named_params",
          "inputs": {"modality_list": ["audio", "visual"], "steps": steps_in},
          "expected": {"steps": steps_out},
          "notes": "Greedy_trainer.py:147-180; the fusion head (fusion_module.*) is in no group."}


def case_bb_mmtm(gen):
  B, T, C, H, W, ratio = 64, 2, 2, 2, 2, 4
  m = BBMMTM([C, C], ratio)
  with torch.no_grad():
    for p in m.parameters():
      p.copy_(rnd(gen, *p.shape) * 0.5)
  w0 = linear_weights(m)
  calls = [{"curation_mode": False, "caring_modality": 0},
           {"curation_mode": True, "caring_modality": 0},
           {"curation_mode": True, "caring_modality": 1}]
  inputs, expected = [], []
  for kw in calls:
    a = torch.relu(rnd(gen, B, C, H, W))
    v = torch.relu(rnd(gen, B * T, C, H, W))  # frames folded into the batch, sample-major
    out, scales = m({"audio": a.clone(), "visual": v.clone()}, **kw)
    inputs.append({"audio": a, "visual": v, **kw})
    expected.append({"out_audio": out["audio"], "out_visual": out["visual"],
                     "scale_audio": scales["audio"], "scale_visual": scales["visual"],
                     "running_avg_audio": m.running_avg_weight["audio"].clone(),
                     "running_avg_visual": m.running_avg_weight["visual"].clone(),
                     "step_after": m.step})
  ok = {"name": "balancebenchmark_mmtm_sequence",
        "inputs": {"dims": [C, C], "ratio": ratio, "frames_per_sample": T,
                   "hard_coded_batch": 64, "weights": w0, "calls": inputs,
                   "layout": "audio [B,C,H,W]; visual [B*T,C,H,W], frame index = b*T + t"},
        "expected": {"calls": expected},
        "notes": ("avclassify_model.py:537-624 without line 568 (as at 39ed569). Visual is "
                  "viewed as [64, T, C, H, W] -> [64, C, T, H, W]: squeeze = mean over T, H, W "
                  "per sample, one scale per sample and channel for all its frames. Running "
                  "average per modality from its own scale (the official code's skeleton one "
                  "uses the visual scale). fc_excites keys follow the modality order.")}
  # HEAD: line 568 resets the dict -> KeyError on the first forward
  mh = BBMMTM([C, C], ratio, head=True)
  set_weights(mh, w0)
  try:
    mh({"audio": inputs[0]["audio"].clone(), "visual": inputs[0]["visual"].clone()})
    err = None
  except KeyError as e:
    err = f"KeyError: {e}"
  head = {"name": "bb_head_mmtm_raises_keyerror",
          "inputs": {"commit": "4c1482f", "lines": "568 (reset) then 594 (read)"},
          "expected": {"error": err},
          "notes": ("BalanceBenchmark's Greedy as committed cannot run: MMTM.forward empties "
                    "running_avg_weight and then reads it. (Greedy_trainer.py:135 also calls "
                    "model.Unimodality_Calculate(), defined nowhere in the repository.)")}
  return [ok, head]


def main():
  gen = torch.Generator().manual_seed(SEED)
  cases = []
  cases.append(case_bdr_official(gen))
  cases += case_schedules(gen)
  cases += case_mmtm_official(gen)
  cases.append(case_bb_learning_speed(gen))
  cases += case_bb_mmtm(gen)
  doc = {
      "source": {
          "repo": "nyukat/greedy_multimodal_learning",
          "commit": "a190e03755bd8d0883b2c5c0cd7921d2561ce2ee",
          "files": {"src/balanced_mmtm.py": "16-154", "src/callbacks.py": "173-267",
                    "src/framework.py": "146-148, 293-315", "src/model.py": "53-108",
                    "train.py": "22-50", "configs/training_guided.gin": "1-27"},
          "cross_check": {"repo": "GeWu-Lab/BalanceBenchmark",
                          "commit": "4c1482fca5aaa8d4278af8e26020daa039e3ccf3",
                          "files": {"balancemm/models/avclassify_model.py": "387-624",
                                    "balancemm/trainer/Greedy_trainer.py": "19-180",
                                    "configs/trainer_config.yaml": "56-61"}},
          "dtype": "float64 (official: float32)",
          "layout": "torch: Linear weight [out, in]; feature maps NCHW",
          "script": "tests/golden/make_greedy.py"},
      "cases": tolist(cases)}
  with open(OUT, "w") as fh:
    json.dump(doc, fh, separators=(",", ":"))
  print(f"wrote {OUT}: {len(cases)} cases")
  for c in cases:
    print(" ", c["name"])


if __name__ == "__main__":
  main()
