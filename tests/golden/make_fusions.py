"""Golden numbers for the four fusion heads of the InfoReg paper's Table 5 (Gated, SUM, FiLM, Concat),
transcribed from the released fusion_modules.py, with the unimodal logits the official scripts derive.

Official repositories:
  GeWu-Lab/OGM-GE_CVPR2022, commit 343dc1d (343dc1d95c9bda88f105c0da8d24f185e0e98b54)
    models/fusion_modules.py
      - SumFusion      5-13   output = fc_x(x) + fc_y(y); returns (x, y, output)
      - ConcatFusion  16-24   output = fc_out(cat(x, y)); returns (x, y, output)
      - FiLM          27-56   gamma, beta = split(fc(film), input_dim); fc_out(gamma * to_be_film + beta)
      - GatedFusion   59-87   fc_out(sigmoid(fc_x(x)) * fc_y(y)); returns (fc_x(x), fc_y(y), output)
    models/basic_model.py 24-33 (film: x_film=True, gated: x_gate=True; x = audio, y = visual) and 54
    main.py 82-93 (training unimodal logits), 194-203 (eval unimodal logits)
  GeWu-Lab/InfoReg_CVPR2025, commit 939b2ed (939b2ed11dcbf4daddb2507157b2cb9f8d0e24d7)
    models/fusion_modules.py: SumFusion 5-13, FiLM 31-60, GatedFusion 63-91 identical to OGM-GE's;
    ConcatFusion 16-28 adds audio_out / visual_out heads (unused: AVClassifier.forward,
    models/basic_model.py 48-80, never calls fusion_module; it always uses head(cat(a, v))).

Run from the repository root:  /work/torchenv/bin/python tests/golden/make_fusions.py
Writes tests/golden/fusions.json. Deterministic (fixed seed; every input and weight is in the JSON,
Linear weights in torch layout [out, in], y = x @ W.T + b).

"zeroed" outputs are the paper's Sec. 4.5 recipe for the per-modality accuracy of Gated, SUM and
FiLM ("zeroing out the features of other modalities"): the fusion's output with the other
modality's feature vector (the encoder output fed to the fusion) set to 0. No released script
computes these; they are included so that the JAX port can be checked against one definition.
Computation is in float64.
"""
import json
import os

import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fusions.json")


def linear(w, name, x):
  """nn.Linear forward: x @ weight.T + bias."""
  return F.linear(x, w[name + ".weight"], w[name + ".bias"])


# ------------------------------------------------------------------ transcription: fusion_modules.py


def sum_fusion(w, x, y):
  """SumFusion.forward, fusion_modules.py:11-13."""
  output = linear(w, "fc_x", x) + linear(w, "fc_y", y)
  return x, y, output, {}


def concat_fusion(w, x, y):
  """ConcatFusion.forward, fusion_modules.py:21-24 (OGM-GE)."""
  output = torch.cat((x, y), dim=1)
  output = linear(w, "fc_out", output)
  return x, y, output, {}


def film_fusion(w, x, y, x_film=True):
  """FiLM.forward, fusion_modules.py:42-56. self.dim = input_dim (line 36): the split size is the
  INPUT dim, so the module only works with input_dim == dim (both 512 in AVClassifier)."""
  input_dim = x.shape[1]
  if x_film:
    film = x
    to_be_film = y
  else:
    film = y
    to_be_film = x
  gamma, beta = torch.split(linear(w, "fc", film), input_dim, 1)
  output = gamma * to_be_film + beta
  hidden = output
  output = linear(w, "fc_out", output)
  return x, y, output, {"gamma": gamma, "beta": beta, "modulated": hidden}


def gated_fusion(w, x, y, x_gate=True):
  """GatedFusion.forward, fusion_modules.py:76-87. Returns the projected out_x, out_y (not x, y)."""
  out_x = linear(w, "fc_x", x)
  out_y = linear(w, "fc_y", y)
  if x_gate:
    gate = torch.sigmoid(out_x)
    output = linear(w, "fc_out", torch.mul(gate, out_y))
  else:
    gate = torch.sigmoid(out_y)
    output = linear(w, "fc_out", torch.mul(out_x, gate))
  return out_x, out_y, output, {"gate": gate}


# ------------------------------------------------------------------ transcription: OGM-GE main.py


def ogm_unimodal_train(fusion, w, a, v):
  """main.py:82-93, with (a, v) the first two values the fusion module returned (basic_model.py:54).
  sum: own Linear, full bias. Otherwise fc_out column halves with bias / 2."""
  if fusion == "sum":
    out_v = torch.mm(v, torch.transpose(w["fc_y.weight"], 0, 1)) + w["fc_y.bias"]
    out_a = torch.mm(a, torch.transpose(w["fc_x.weight"], 0, 1)) + w["fc_x.bias"]
  else:
    weight_size = w["fc_out.weight"].size(1)
    out_v = (torch.mm(v, torch.transpose(w["fc_out.weight"][:, weight_size // 2:], 0, 1))
             + w["fc_out.bias"] / 2)
    out_a = (torch.mm(a, torch.transpose(w["fc_out.weight"][:, :weight_size // 2], 0, 1))
             + w["fc_out.bias"] / 2)
  return out_a, out_v


def ogm_unimodal_eval(fusion, w, a, v):
  """main.py:194-203: sum with bias / 2; otherwise columns [:512] / [512:] (written as half the
  width, which is 512 for the real concat head)."""
  if fusion == "sum":
    out_v = torch.mm(v, torch.transpose(w["fc_y.weight"], 0, 1)) + w["fc_y.bias"] / 2
    out_a = torch.mm(a, torch.transpose(w["fc_x.weight"], 0, 1)) + w["fc_x.bias"] / 2
  else:
    half = w["fc_out.weight"].size(1) // 2
    out_v = torch.mm(v, torch.transpose(w["fc_out.weight"][:, half:], 0, 1)) + w["fc_out.bias"] / 2
    out_a = torch.mm(a, torch.transpose(w["fc_out.weight"][:, :half], 0, 1)) + w["fc_out.bias"] / 2
  return out_a, out_v


# ------------------------------------------------------------------ cases

B, D, H, N = 3, 4, 4, 3  # batch, feature dim (input_dim), hidden dim (dim), classes (output_dim)


def tolist(t):
  return t.detach().tolist()


def weights(gen, fusion):
  def lin(o, i):
    return 0.5 * torch.randn(o, i, generator=gen), 0.2 * torch.randn(o, generator=gen)
  shapes = {"sum": {"fc_x": (N, D), "fc_y": (N, D)},
            "concat": {"fc_out": (N, 2 * D)},
            "film": {"fc": (2 * H, D), "fc_out": (N, H)},
            "gated": {"fc_x": (H, D), "fc_y": (H, D), "fc_out": (N, H)}}[fusion]
  w = {}
  for name, (o, i) in shapes.items():
    w[name + ".weight"], w[name + ".bias"] = lin(o, i)
  return w


def run(fn, w, x, y, **kw):
  first, second, out, extra = fn(w, x, y, **kw)
  return {"returned_first": tolist(first), "returned_second": tolist(second), "output": tolist(out),
          **{k: tolist(t) for k, t in extra.items()}}


def try_unimodal(f, fusion, w, first, second):
  try:
    oa, ov = f(fusion, w, first, second)
    return {"out_a": tolist(oa), "out_v": tolist(ov)}
  except RuntimeError as e:  # film / gated: fc_out is Linear(dim, n); the half slice mismatches
    return {"error": str(e).split("\n")[0]}


def make_cases():
  gen = torch.Generator().manual_seed(5)
  x = torch.randn(B, D, generator=gen)  # audio features (x in fusion_modules)
  y = torch.randn(B, D, generator=gen)  # visual features (y)
  zx, zy = torch.zeros_like(x), torch.zeros_like(y)
  fns = {"sum": sum_fusion, "concat": concat_fusion, "film": film_fusion, "gated": gated_fusion}
  flags = {"film": "x_film", "gated": "x_gate"}
  cases = []
  for fusion, fn in fns.items():
    w = weights(gen, fusion)
    variants = [True, False] if fusion in flags else [None]
    for flag in variants:
      kw = {flags[fusion]: flag} if flag is not None else {}
      first, second, _, _ = fn(w, x, y, **kw)
      expected = run(fn, w, x, y, **kw)
      expected["zeroed_visual_gives_audio_logits"] = tolist(fn(w, x, zy, **kw)[2])
      expected["zeroed_audio_gives_visual_logits"] = tolist(fn(w, zx, y, **kw)[2])
      expected["ogm_ge_train_unimodal"] = try_unimodal(ogm_unimodal_train, fusion, w, first, second)
      expected["ogm_ge_eval_unimodal"] = try_unimodal(ogm_unimodal_eval, fusion, w, first, second)
      name = fusion + ("" if flag is None else f"_{flags[fusion]}_{flag}")
      cases.append({
          "name": name,
          "inputs": {"fusion": fusion, **kw, "x_audio": tolist(x), "y_visual": tolist(y),
                     "input_dim": D, "dim": H, "output_dim": N,
                     "weights": {k: tolist(t) for k, t in w.items()}},
          "expected": expected,
      })
  return cases


def main():
  cases = make_cases()
  doc = {
      "source": {
          "repos": {"GeWu-Lab/OGM-GE_CVPR2022": "343dc1d95c9bda88f105c0da8d24f185e0e98b54",
                    "GeWu-Lab/InfoReg_CVPR2025": "939b2ed11dcbf4daddb2507157b2cb9f8d0e24d7"},
          "files": {"OGM-GE models/fusion_modules.py": {"SumFusion": "5-13", "ConcatFusion": "16-24",
                                                         "FiLM": "27-56", "GatedFusion": "59-87"},
                    "OGM-GE models/basic_model.py": {"fusion choice (x_film, x_gate True)": "24-33",
                                                     "fusion call": "54"},
                    "OGM-GE main.py": {"train unimodal logits": "82-93",
                                       "eval unimodal logits": "194-203"}},
          "layout": "Linear weight [out, in], bias [out]; y = x @ W.T + b. x = audio, y = visual.",
          "returned": ("(first, second, output) as the module returns them: (x, y, out) for sum, "
                       "concat, film; (fc_x(x), fc_y(y), out) for gated."),
          "zeroed": ("paper Sec. 4.5: fusion output with the other modality's feature set to 0; "
                     "not in any released script."),
          "dtype": "float64",
          "script": "tests/golden/make_fusions.py",
      },
      "cases": cases,
  }
  with open(OUT, "w") as f:
    json.dump(doc, f, indent=1, allow_nan=False)
  print(f"wrote {OUT}: {len(cases)} cases")


if __name__ == "__main__":
  main()
