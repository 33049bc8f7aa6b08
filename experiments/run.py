"""python -m experiments.run [--dataset=synthetic] [--method=inforeg] [--name=value ...]

Trains one configuration and prints its summary (accuracies as fractions). ``--help`` lists
every flag with its meaning, choices and the defaults of the chosen ``--dataset``. Errors a
user can cause end in one ``error:`` line and exit status 2; Ctrl-C ends with one line and
leaves the run resumable (exit status 130).
"""

from __future__ import annotations

import json
import os
import sys

from inforeg_jax.config import parse_flags


def enable_compilation_cache() -> None:
  """Compiled steps are kept on disk (~/.cache/inforeg_jax/xla), so that the next run of the
  same program (another seed, a resumed run) starts in seconds; JAX_COMPILATION_CACHE_DIR
  chooses another folder, an empty one turns it off."""
  import jax
  folder = os.environ.get("JAX_COMPILATION_CACHE_DIR",
                          os.path.join(os.path.expanduser("~"), ".cache", "inforeg_jax", "xla"))
  if folder:
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def main(argv=None) -> int:
  cfg, args = parse_flags(argv)  # before importing JAX: --help and flag errors are instant
  import jax
  enable_compilation_cache()

  from inforeg_jax.data.records import MissingDataError
  from inforeg_jax.trainer import RunError, train

  try:
    if args.distributed or args.coordinator_address:
      jax.distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
    summary = train(cfg)
  except (MissingDataError, RunError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except OSError as e:  # a full disk, a vanished directory, ...
    where = f" ({e.filename})" if e.filename else ""
    print(f"error: {e.strerror or e}{where}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print(f"\ninterrupted: the last finished epoch is checkpointed in {cfg.resolved_workdir}; "
          "continue with the same flags and --resume", file=sys.stderr)
    return 130
  if jax.process_index() == 0:
    print(json.dumps({k: summary[k] for k in ("dataset", "method", "seed", "epochs",
                                              "num_devices", "final", "selected", "best")},
                     indent=2))
    print(f"wrote {summary['workdir']}: metrics.jsonl, summary.json, plots, checkpoints/")
  return 0


if __name__ == "__main__":
  sys.exit(main())
