"""Greedy's model and phase rule beyond the official numbers of test_golden_greedy.py: the
MMTM sizes on a ResNet-18 trunk, the forward's defaults, the strict re-balancing threshold."""

import functools
import types

import jax
import jax.numpy as jnp
import numpy as np

from inforeg_jax import models
from inforeg_jax.methods.greedy import GreedyNet, next_phase

KINDS = {"audio": "spectrogram", "visual": "frames"}
_RNG = np.random.default_rng(0)  # distinct samples: a batch mean differs from each sample's
INPUTS = {"audio": jnp.asarray(_RNG.normal(size=(2, 16, 16)), jnp.float32),
          "visual": jnp.asarray(_RNG.normal(size=(2, 1, 16, 16, 3)), jnp.float32)}


def net(trunk, **kw):
  return GreedyNet({m: trunk for m in KINDS}, KINDS, num_classes=3, **kw)


def test_mmtm_sizes_on_a_resnet18_trunk():
  model = net(functools.partial(models.ResNet18, width=2))
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), INPUTS))["params"]
  assert sorted(k for k in params if k.startswith("mmtm")) == ["mmtm1", "mmtm2", "mmtm3"]
  for i in (1, 2, 3):
    c = 2 * 2**i  # the stage's channels
    mmtm = params[f"mmtm{i}"]
    assert mmtm["fc_squeeze"]["kernel"].shape == (2 * c, c)  # 2 * (c + c) / ratio 4
    assert mmtm["fc_audio"]["kernel"].shape == mmtm["fc_visual"]["kernel"].shape == (c, c)
  assert params["head"]["fc_audio"]["kernel"].shape == (16, 3)


def test_forward_defaults_and_the_fused_logits():
  model = net(functools.partial(models.SmallCNN, widths=(2, 4, 8)))
  variables = model.init(jax.random.key(0), INPUTS)
  default = model.apply(variables, INPUTS)
  explicit = model.apply(variables, INPUTS, train=False, running=None, count=0.0,
                         curation=False, caring=0)
  jax.tree.map(np.testing.assert_array_equal, default, explicit)
  # the fused logits are the mean of the branch heads (the training mode's unimodal_logits)
  branches = model.apply(variables, INPUTS, train=True, mutable=["batch_stats"])[0]
  uni = branches["unimodal_logits"]
  np.testing.assert_allclose(branches["logits"], (uni["audio"] + uni["visual"]) / 2, rtol=1e-6)
  # the first call's running averages are this batch's mean scales; by default both rows come
  # from modality 0 (the official code's quirk)
  for r in default["mmtm_running"]:
    np.testing.assert_array_equal(r[0], r[1])
  assert len(default["mmtm_running"]) == 2  # after stages 1 and 2 of 3
  per_modality = net(functools.partial(models.SmallCNN, widths=(2, 4, 8)),
                     official_running_average=False).apply(variables, INPUTS)
  assert not np.allclose(per_modality["mmtm_running"][0][0], per_modality["mmtm_running"][0][1])


def test_rebalancing_needs_a_gap_strictly_above_the_threshold():
  phase = {"cumulative": jnp.zeros([2, 2]), "curation": jnp.asarray(False),
           "caring": jnp.int32(0), "curation_step": jnp.int32(0)}
  speeds = jnp.ones([2, 2])  # equal BDRs: a gap of exactly 0
  out = next_phase(phase, speeds, jnp.asarray(True), 0.0, 5)
  assert float(out["d"]) == 0.0 and not bool(out["curation"])
  out = next_phase(phase, jnp.array([[2.0, 1.0], [1.0, 1.0]]), jnp.asarray(True), 0.0, 5)
  assert bool(out["curation"]) and int(out["caring"]) == 0  # BDR_0 > BDR_1: care for 0


def greedy_method(**overrides):
  from inforeg_jax.config import make_config
  from inforeg_jax.methods.base import Setup
  from inforeg_jax.methods.greedy import Greedy
  cfg = make_config(method="greedy", width=2, **overrides)
  return Greedy(cfg, Setup(modalities=tuple(KINDS), num_classes=3, steps_per_epoch=2,
                           window="whole"))


def test_only_conv_trunks_and_its_own_fusion():
  import pytest
  with pytest.raises(ValueError, match="MMTM fusion"):
    greedy_method(fusion="sum")
  with pytest.raises(ValueError, match="MMTM fusion"):
    greedy_method(encoder="transformer")


def test_objective_is_the_sum_of_the_branch_losses():
  from inforeg_jax.methods.base import StepContext
  from inforeg_jax.train import make_forward
  method = greedy_method()
  model = method.build_model(types_dataset())
  variables = model.init(jax.random.key(0), INPUTS)
  state = method.init_state(variables["params"], model.apply(variables, INPUTS))
  fwd = make_forward(model, variables["batch_stats"], jax.random.key(1))
  batch = {"inputs": INPUTS, "label": jnp.array([0, 2])}
  ctx = StepContext(step=jnp.int32(0), epoch=jnp.int32(0), active=jnp.asarray(True),
                    hyper=types.SimpleNamespace(method=method.options))
  obj = method.objective(fwd, variables["params"], state, batch, ctx)
  assert obj.terms.shape == (1,)
  uni = obj.unimodal_losses
  np.testing.assert_allclose(obj.terms[0], uni["audio"] + uni["visual"], rtol=1e-6)
  assert float(uni["audio"]) > 0 and float(uni["visual"]) > 0
  assert obj.unimodal_logits is None  # the branch heads are not unimodal: no train_acc_<m>


def test_evaluation_unimodal_logits_are_a_probe_without_cross_modal_flow():
  """In evaluation, a modality's unimodal logits are its branch head after a pass in which the
  MMTMs see the other modality's squeeze at its batch mean: they move with the modality's own
  input, and do not move when only another sample's other modality changes per sample... nor
  when the other modality is replaced by any input with the same batch mean."""
  model = net(functools.partial(models.SmallCNN, widths=(2, 4, 8)))
  variables = model.init(jax.random.key(0), INPUTS)
  out = model.apply(variables, INPUTS)
  branches = model.apply(variables, INPUTS, train=True, mutable=["batch_stats"])[0]
  probe = out["unimodal_logits"]
  assert not np.allclose(probe["audio"], branches["unimodal_logits"]["audio"])
  # swapping the two samples' visual inputs keeps their batch mean: the audio probe of each
  # sample is unchanged (no per-sample visual information reaches it), its branch head not
  swapped = {**INPUTS, "visual": INPUTS["visual"][::-1]}
  again = model.apply(variables, swapped)["unimodal_logits"]
  np.testing.assert_allclose(again["audio"], probe["audio"], rtol=1e-5, atol=1e-6)
  # ... while its own input moves it
  moved = model.apply(variables, {**INPUTS, "audio": INPUTS["audio"] * 2})["unimodal_logits"]
  assert not np.allclose(moved["audio"], probe["audio"])


def types_dataset():
  import types
  return types.SimpleNamespace(kinds=KINDS, num_classes=3)
