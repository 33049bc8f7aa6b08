"""What a population executes: the model, the method and optimizer (built once), every
member's state, and the compiled steps, over a ("pop", "data") mesh.

Two ways to run the members, one API (`Program`):
- **one after another** (the default on the CPU): every member is trained, evaluated and
  passed over by the single-member programs, the same executables whatever the population, so
  a member's numbers are bit for bit its single run's (a population of one included). On a
  CPU a member axis gains nothing (docs/PERFORMANCE.md: one small step already fills the
  cores); what a population saves there is its start-up, tracing and compilation, paid once.
- **vectorised** (``jax.vmap`` over a leading member axis, the default on accelerators, where
  one small step leaves the device idle): the members are split over the ``pop`` mesh axis,
  each member's batch over ``data``; a member then matches its single run to float rounding.

States cross the API stacked, every leaf with a leading member axis [N]; one after another,
the loop unstacks them once an epoch (`Program.unstack`), not once a step.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from inforeg_jax import hyper as hyper_lib
from inforeg_jax.config import Config
from inforeg_jax.data import Dataset
from inforeg_jax.hyper import Hyper
from inforeg_jax.labels import modality_labels, resolve_labels
from inforeg_jax.methods.base import Method, Setup
from inforeg_jax.train import (Optimizer, TrainState, build_method, make_create_state,
                               make_eval_step, make_predict, make_train_step)

EXECUTIONS = ("auto", "sequential", "vectorised")
# Vectorised on the CPU, a population's program holds a native convolution per member
# (`models.member_conv`): its compile time grows with the members (AV-MNIST preset, 2 cores:
# 12 s at 1, 21 s at 4, 28 s at 16, cold cache). One after another it is one single-member
# program for any N (compiled once, 2-5 s to set up a population after that).
MAX_VECTORISED_CPU_MEMBERS = 64


def vectorised(execution: str) -> bool:
  """Whether the members run as one vmapped program: ``auto`` is one after another on the
  CPU (bit-identical members) and vectorised elsewhere."""
  if execution == "auto":
    return jax.default_backend() != "cpu"
  return execution == "vectorised"


def make_mesh(members: int = 1, vectorise: bool = False):  # pragma: no mutate
  """A ("pop", "data") mesh over every device of every process. Vectorised, the members split
  over ``pop`` (as many groups as divide both the members and the devices); otherwise (and
  across processes, where the members stay whole) ``pop`` is 1 and every member's batch is
  split over all the devices, as its single run's."""
  devices = jax.device_count()
  pop = math.gcd(members, devices) if vectorise and jax.process_count() == 1 else 1
  return jax.make_mesh((pop, devices // pop), ("pop", "data"),
                       axis_types=(AxisType.Auto, AxisType.Auto))


def to_global(batch, sharding):  # pragma: no mutate
  """This process's slice of a global batch as global arrays laid out by ``sharding``."""
  if jax.process_count() == 1:  # the whole batch is here: a plain transfer, 10x cheaper
    return jax.device_put(batch, sharding)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def stack(trees: Sequence) -> Any:
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def member_slice(tree, i: int):
  return jax.tree.map(lambda x: x[i], tree)


@dataclasses.dataclass
class Program:
  """A population's compiled program: member 0's config for what all share, the method and
  optimizer (built once), the model, the members' values, their stacked state."""

  method: Method
  optimizer: Optimizer
  model: Any
  hyper: Hyper  # the members' values, numpy [N]
  state: TrainState  # every leaf with a leading member axis [N]
  mesh: Any
  vectorised: bool
  member_state_shape: Any  # one member's TrainState (shapes, dtypes), for checkpoints
  # the compiled programs, vmapped over the members when vectorised:
  _train_step: Callable  # (state, batch, hyper) -> (state, metrics): one step
  _train_chunk: Callable  # (state, batches [K, B, ...], hyper) -> (state, metrics [K])
  _eval_chunk: Callable  # (state, batches [K, B, ...]) -> metric sums and predictions [K]
  _predict: Callable  # (state, batch, rng | None) -> outputs
  _jitted: dict = dataclasses.field(default_factory=dict)  # map_members' programs

  @property
  def members(self) -> int:
    return len(np.atleast_1d(self.hyper.seed))

  @property
  def members_sharding(self):
    return NamedSharding(self.mesh, P("pop"))

  def member_hypers(self) -> list[Hyper]:
    """Each member's values as arrays (one after another)."""
    if "hypers" not in self._jitted:
      replicated = NamedSharding(self.mesh, P())
      self._jitted["hypers"] = [jax.device_put(hyper_lib.member(self.hyper, i), replicated)
                                for i in range(self.members)]
    return self._jitted["hypers"]

  def unstack(self, state) -> list:
    """The members' states, one tree each (exact copies)."""
    key = ("unstack", self.members)
    if key not in self._jitted:
      n, replicated = self.members, NamedSharding(self.mesh, P())
      self._jitted[key] = jax.jit(lambda s: tuple(member_slice(s, i) for i in range(n)),
                                  out_shardings=replicated)
    return list(self._jitted[key](state))

  def restack(self, states: Sequence):
    key = ("restack", len(states))
    if key not in self._jitted:
      self._jitted[key] = jax.jit(lambda *s: stack(s), out_shardings=self.members_sharding)
    return self._jitted[key](*states)

  def map_members(self, fn: Callable, *trees):
    """``fn`` on each member's slice of ``trees`` (leading axis [N]), stacked: vmapped when
    vectorised; otherwise one jitted program a member, the same for every population."""
    if self.vectorised:
      if fn not in self._jitted:
        self._jitted[fn] = jax.jit(jax.vmap(fn), out_shardings=self.members_sharding)
      return self._jitted[fn](*trees)
    if fn not in self._jitted:
      self._jitted[fn] = jax.jit(fn)
    one = self._jitted[fn]
    return stack([one(*member_slice(trees, i)) for i in range(self.members)])

  def init_opt_state(self, params):
    """A fresh optimizer state for every member (params [N, ...])."""
    return self.map_members(self.optimizer.init, params, self.place(self.hyper))

  def place(self, tree):
    """Arrays with a leading member axis, laid out as the population's state."""
    return jax.device_put(tree, self.members_sharding)


def example_inputs(dataset: Dataset) -> dict:
  """Two examples of zeros shaped like the model's inputs (after the on-device
  preprocessing): what the model is initialised from."""
  example = {m: jnp.zeros((2,) + v.shape[1:], v.dtype) for m, v in dataset.train.items()
             if m != "label"}
  if dataset.preprocess is not None:
    example = dataset.preprocess({"inputs": example}, jax.random.key(0), False)["inputs"]
  return example


@dataclasses.dataclass(frozen=True)
class Compiled:
  """What a program is, whatever its members' values: the method, model and optimizer and
  the jitted functions (a population's members are arguments to them)."""

  method: Method
  optimizer: Optimizer
  model: Any
  create: Callable  # hyper -> a member's (vectorised: every member's) initial state
  step: Callable
  steps: Callable
  evaluate: Callable
  forward: Callable
  member_state_shape: Any


# Programs built in this process, reused by later populations of the same program on the
# same prepared data (tracing a step costs seconds; results' workers build many)
_PROGRAMS: dict[tuple, Compiled] = {}


def _program_key(cfg: Config, dataset: Dataset, steps_per_epoch: int, mesh, vector: bool):
  """Everything the jitted functions close over: the config less the member-wise values and
  what only names outputs, the prepared data (None for data without an identity: built in or
  made by hand, never reused), the mesh."""
  if not dataset.identity or not dataset.identity.get("sha256"):
    return None
  from inforeg_jax.config import flatten, member_fields
  skip = set(member_fields()) | {"seed", "workdir", "resume", "overwrite", "plots",
                                 "checkpoint_every"}
  flat = {k: v for k, v in flatten(cfg.to_dict()).items() if k not in skip}
  return (json.dumps(flat, sort_keys=True, default=str), dataset.identity["sha256"],
          dataset.modalities, steps_per_epoch, tuple(mesh.devices.flat), mesh.shape_tuple,
          vector)


def _compile(cfg: Config, dataset: Dataset, steps_per_epoch: int, mesh,
             vector: bool) -> Compiled:
  setup = Setup(modalities=dataset.modalities, num_classes=dataset.num_classes,
                steps_per_epoch=steps_per_epoch, window=cfg.resolved_window)
  method = build_method(cfg, setup)
  model = method.build_model(dataset)
  example = example_inputs(dataset)
  params_shape = jax.eval_shape(lambda: model.init(
      {"params": jax.random.key(0), "dropout": jax.random.key(0)}, example, train=False))["params"]
  labels = modality_labels(params_shape, setup.modalities)
  optimizer = Optimizer(method, labels)
  create_state = make_create_state(model, method, optimizer, example)
  train_step = make_train_step(model, method, optimizer, resolve_labels(labels, params_shape),
                               dataset.preprocess)
  eval_step = make_eval_step(model, setup.modalities, dataset.preprocess)
  predict = make_predict(model, dataset.preprocess)

  def train_chunk(state, batches, hyper):  # K steps in one call: no host round trip a step
    # straight-line code, K small (--steps_per_call): XLA's CPU backend runs a step inside a
    # while loop several times slower (AV-MNIST preset: a rolled scan 16 ms a step, an
    # unrolled one of length 1 25 ms, against 2.4-5 ms)
    metrics = []
    for i in range(jax.tree.leaves(batches)[0].shape[0]):
      state, m = train_step(state, jax.tree.map(lambda x: x[i], batches), hyper)
      metrics.append(m)
    return state, jax.tree.map(lambda *m: jnp.stack(m), *metrics)

  def eval_chunk(state, batches):
    return jax.lax.map(lambda b: eval_step(state, b), batches)

  members = NamedSharding(mesh, P("pop"))
  replicated = NamedSharding(mesh, P())
  shared_chunk = NamedSharding(mesh, P(None, "data"))  # [K, B, ...]: the batch split
  if vector:
    batch, chunk = NamedSharding(mesh, P("pop", "data")), NamedSharding(mesh, P("pop", None,
                                                                                "data"))
    create = jax.jit(jax.vmap(create_state), in_shardings=members, out_shardings=members)
    step = jax.jit(jax.vmap(train_step), in_shardings=(members, batch, members),
                   out_shardings=(members, members), donate_argnums=0)
    steps = jax.jit(jax.vmap(train_chunk), in_shardings=(members, chunk, members),
                    out_shardings=(members, members), donate_argnums=0)
    evaluate = jax.jit(jax.vmap(eval_chunk, in_axes=(0, None)),
                       in_shardings=(members, shared_chunk), out_shardings=members)
    forward = jax.jit(jax.vmap(predict))
  else:
    batch = NamedSharding(mesh, P("data"))
    create = jax.jit(create_state, out_shardings=replicated)
    step = jax.jit(train_step, in_shardings=(replicated, batch, replicated),
                   out_shardings=(replicated, replicated), donate_argnums=0)
    steps = jax.jit(train_chunk, in_shardings=(replicated, shared_chunk, replicated),
                    out_shardings=(replicated, replicated), donate_argnums=0)
    evaluate = jax.jit(eval_chunk, in_shardings=(replicated, shared_chunk),
                       out_shardings=replicated)
    forward = jax.jit(predict)
  shape = jax.eval_shape(create_state, hyper_lib.hyper_of(cfg))
  return Compiled(method, optimizer, model, create, step, steps, evaluate, forward, shape)


def build_program(cfgs: Sequence[Config] | Config, dataset: Dataset, steps_per_epoch: int,
                  mesh=None, execution: str | None = None) -> Program:  # pragma: no mutate
  """The method, model and optimizer for the members ``cfgs`` (or one config), built once (and
  reused by this process's later populations of the same program on the same prepared data);
  every member's state sharded over ``mesh``; the steps jitted (vmapped when vectorised)."""
  cfgs = [cfgs] if isinstance(cfgs, Config) else list(cfgs)
  cfg = cfgs[0]
  vector = vectorised(execution or cfg.execution)
  if vector and jax.default_backend() == "cpu" and len(cfgs) > MAX_VECTORISED_CPU_MEMBERS:
    raise ValueError(f"a vectorised population of {len(cfgs)} members on the CPU compiles a "
                     f"convolution per member (minutes past {MAX_VECTORISED_CPU_MEMBERS}): "
                     "use --execution=sequential (the CPU's default), or fewer members")
  mesh = make_mesh(len(cfgs), vector) if mesh is None else mesh
  key = _program_key(cfg, dataset, steps_per_epoch, mesh, vector)
  compiled = _PROGRAMS.get(key) if key is not None else None
  if compiled is None:
    compiled = _compile(cfg, dataset, steps_per_epoch, mesh, vector)
    if key is not None:
      _PROGRAMS[key] = compiled
  hyper = hyper_lib.stack([hyper_lib.hyper_of(c) for c in cfgs])
  members, replicated = NamedSharding(mesh, P("pop")), NamedSharding(mesh, P())
  if vector:
    state = compiled.create(jax.device_put(hyper, members))
  else:
    states = [compiled.create(jax.device_put(hyper_lib.member(hyper, i), replicated))
              for i in range(len(cfgs))]
    state = jax.jit(lambda *s: stack(s), out_shardings=members)(*states)
  c = compiled
  return Program(c.method, c.optimizer, c.model, hyper, state, mesh, vector,
                 c.member_state_shape, c.step, c.steps, c.evaluate, c.forward)


__all__ = ["Program", "build_program", "make_mesh", "to_global", "stack", "member_slice",
           "vectorised", "EXECUTIONS"]
