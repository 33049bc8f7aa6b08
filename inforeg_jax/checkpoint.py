"""orbax checkpoints behind three functions: ``manager``, ``save``, ``restore_latest``.

A checkpoint holds the train state and a JSON of the loop's position (epoch) and history;
the data iterator's position is the epoch (``pipeline`` orders batches by (seed, epoch)), so
restoring it resumes the same data order. Kept: the last three and the best by test accuracy.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies


def manager(workdir: str, keep_last: int = 3) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      preservation_policy=policies.AnyPreservationPolicy([
          policies.LatestN(keep_last),
          policies.BestN(get_metric_fn=lambda m: m["acc"], n=1)]),
      enable_async_checkpointing=False)
  return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")),
                               options=options, item_names=("state", "loop"))


def save(mngr: ocp.CheckpointManager, epoch: int, state, loop: dict) -> None:
  """Saves after ``epoch``; ``loop`` is JSON (history, ...); its last row's acc ranks it."""
  mngr.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                           loop=ocp.args.JsonSave(loop)),
            metrics={"acc": float(loop["history"][-1]["acc"])})
  mngr.wait_until_finished()


def restore_latest(mngr: ocp.CheckpointManager, abstract_state):
  """(state, loop) of the latest checkpoint, laid out like ``abstract_state`` (whose
  shardings may come from another device count), or None when there is none."""
  step = mngr.latest_step()
  if step is None:
    return None
  target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
  out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                    loop=ocp.args.JsonRestore()))
  return out["state"], out["loop"]
