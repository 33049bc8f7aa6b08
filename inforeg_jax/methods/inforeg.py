"""InfoReg (this paper): `inforeg_transform` first in the optimizer chain.

The regulation itself (Algorithm 1, Eq. 7-16) is the optax transformation in
`inforeg_jax.regulation`; this module wires it into a run. InfoReg* (Table 3) adds the
unimodal losses to the objective and still measures Tr(F) on the fused loss' gradient, as
Eq. 5 defines it (a second backward pass); the ``official`` variant trains on L + sum L_m in
every run, as the released code does, and measures its own trace inside the transformation.
"""

from __future__ import annotations

from inforeg_jax import window
from inforeg_jax.methods.base import Method, true_class_prob_sum
from inforeg_jax.regulation import inforeg_diagnostics, inforeg_transform


class InfoReg(Method):
  unimodal = False  # InfoReg* (InfoRegUni): with the unimodal losses

  def __init__(self, cfg, setup):
    super().__init__(cfg, setup)
    self.official = self.options.variant == "official"
    self.unimodal_weight = 1.0 if self.unimodal or self.official else 0.0
    self.trace_from_fused = self.unimodal and not self.official

  def window_rule(self, hyper):
    o = self.options
    if self.official:
      return window.WindowRule(hyper.threshold, "official", lead=0)
    return window.WindowRule(hyper.threshold, o.criterion, o.max_window_epochs)

  def transforms(self, labels, hyper):
    o, rule = self.options, self.window_rule(hyper)
    return [inforeg_transform(
        labels, steps_per_epoch=self.setup.steps_per_epoch, beta=hyper.method.beta,
        threshold=rule.threshold, warmup_epochs=o.warmup_epochs, variant=o.variant,
        modalities=self.modalities, window=self.setup.window,
        criterion="eq11" if self.official else rule.criterion,
        max_window_epochs=rule.max_epochs)]

  def transform_inputs(self, objective, batch, ctx):
    if self.official:  # the released score: batch sums of the true-class probability
      logits = objective.outputs["unimodal_logits"]
      return {"unimodal_scores": {m: true_class_prob_sum(logits[m], batch["label"])
                                  for m in self.modalities}}
    return {"unimodal_losses": objective.unimodal_losses}  # Eq. 8

  def step_metrics(self, opt_state, method_state):
    diag = inforeg_diagnostics(opt_state, self.modalities)
    return {k: v for k, v in diag.items() if not k.startswith("trace_history")}


class InfoRegUni(InfoReg):
  unimodal = True
