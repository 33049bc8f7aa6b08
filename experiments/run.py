"""python -m experiments.run [--dataset=synthetic] [--method=inforeg] [--name=value ...]

Trains one configuration and prints its summary (accuracies as fractions).
"""

from __future__ import annotations

import json
import sys

from inforeg_jax.config import parse_flags
from inforeg_jax.data.records import MissingDataError
from inforeg_jax.trainer import train


def main(argv=None) -> int:
  cfg, args = parse_flags(argv)
  if args.distributed or args.coordinator_address:
    import jax

    jax.distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
  try:
    summary = train(cfg)
  except (MissingDataError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(json.dumps({k: summary[k] for k in ("dataset", "method", "seed", "epochs",
                                            "num_devices", "final", "best")}, indent=2))
  print(f"wrote {cfg.workdir}/metrics.jsonl and {cfg.workdir}/summary.json")
  return 0


if __name__ == "__main__":
  sys.exit(main())
