"""python -m experiments.run [--dataset=synthetic] [--method=inforeg] [--name=value ...]

Trains one configuration, or a population (flags marked [list] in ``--help`` take
comma-separated values, e.g. ``--seeds=0,1,2,3,4 --learning_rate=0.003,0.01,0.03``: the product
of the lists, trained in one compiled program, each member into its own workdir), and prints
the summaries (accuracies as fractions). ``--help`` lists every flag with its meaning, choices
and the defaults of the chosen ``--dataset``. Errors a user can cause end in one ``error:``
line and exit status 2; Ctrl-C or SIGTERM end with one line and leave the run resumable (exit
status 130).
"""

from __future__ import annotations

import json
import os
import re
import sys

from experiments import os_error_line
from inforeg_jax.flags import parse_members


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


def forced_cpu_devices(environ=os.environ) -> int:
  """The CPU devices this process's JAX will have: JAX_NUM_CPU_DEVICES, else the last
  ``--xla_force_host_platform_device_count`` in XLA_FLAGS, else 1."""
  try:
    if int(environ.get("JAX_NUM_CPU_DEVICES", "-1")) >= 0:
      return int(environ["JAX_NUM_CPU_DEVICES"])
  except ValueError:
    pass
  found = re.findall(r"--xla_force_host_platform_device_count=(\d+)",
                     environ.get("XLA_FLAGS", ""))
  return int(found[-1]) if found else 1


def size_cpu_thread_pool(environ=os.environ) -> str | None:
  """Several CPU devices in one process (``--xla_force_host_platform_device_count=N``) need a
  thread pool of at least 2N threads; sets PJRT_NPROC (its size) to max(cores, 2N) when it is
  unset, before JAX starts. Returns a warning when the user set it smaller, else None.

  Why: XLA's CPU client runs every device's share of a multi-device step on one pool of
  max(cores, N) threads, and a step's launch task (one per device, on the same pool) blocks
  once 32 computations are queued on its device. With N >= cores and the host dispatching
  ahead, launch tasks of the next step hold pool threads that the last device's share of the
  current step needs: its all-reduce waits for that device, nothing else can run, and XLA
  aborts after 40 s ("Termination timeout for all reduce ... only 3 of them arrived"). A
  longer --xla_cpu_collective_call_terminate_timeout_seconds only waits longer. N launch
  tasks and N shares fit in 2N threads."""
  devices = forced_cpu_devices(environ)
  if devices <= 1:
    return None
  if "PJRT_NPROC" in environ:
    try:
      if int(environ["PJRT_NPROC"]) >= 2 * devices:
        return None
    except ValueError:
      pass
    return (f"warning: PJRT_NPROC={environ['PJRT_NPROC']} is fewer than twice the {devices} CPU "
            "devices: a step over them can deadlock (XLA aborts after 40 s); unset it or set "
            f"PJRT_NPROC={2 * devices}")
  try:  # what XLA would use: NPROC (a CI's CPU reservation), else the CPUs we may run on
    cores = int(environ["NPROC"])
  except (KeyError, ValueError):
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
  environ["PJRT_NPROC"] = str(max(cores, 2 * devices))
  return None


def main(argv=None) -> int:
  cfgs, args = parse_members(argv)  # before importing JAX: --help and flag errors are instant
  warning = size_cpu_thread_pool()  # before JAX creates its CPU client
  if warning:
    print(warning, file=sys.stderr)
  try:
    import jax
    if args.distributed or args.coordinator_address:
      jax.distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
    jax.devices()  # the backend: JAX_PLATFORMS=gpu on a machine without one fails here
  except ModuleNotFoundError as e:  # jax itself
    print(f"error: experiments.run needs JAX ({e.name} is missing): pip install -e '.[train]'",
          file=sys.stderr)
    return 2
  except Exception as e:  # RuntimeError, or AssertionError for an unknown platform
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    print(f"error: JAX has no usable backend here (JAX_PLATFORMS="
          f"{os.environ.get('JAX_PLATFORMS', '')!r}): {first}", file=sys.stderr)
    return 2
  enable_compilation_cache()
  try:
    from inforeg_jax.data.records import MissingDataError
    from inforeg_jax.trainer import RunError, train
  except ModuleNotFoundError as e:
    if (e.name or "").split(".")[0] in ("inforeg_jax", "experiments"):
      raise
    print(f"error: experiments.run needs the [train] extra ({e.name} is missing): pip install "
          "-e '.[train]'", file=sys.stderr)
    return 2

  files = {}
  if args.config:
    with open(args.config) as f:
      files["config.py"] = f.read()
  try:
    summaries = train(cfgs, files=files)
  except (MissingDataError, RunError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except OSError as e:  # a full disk, a vanished directory, ...
    print(os_error_line(e), file=sys.stderr)
    return 2
  except KeyboardInterrupt as e:
    what = "interrupted" if str(e) in ("", "SIGINT") else f"stopped by {e}"
    where = cfgs[0].resolved_workdir if len(cfgs) == 1 else \
        f"the {len(cfgs)} members' workdirs"
    print(f"\n{what}: the last checkpointed epoch is in {where}; continue with the same "
          "flags and --resume", file=sys.stderr)
    return 130
  if jax.process_index() == 0:
    for s in summaries:
      if "final" in s:
        print(json.dumps({k: s[k] for k in ("dataset", "method", "seed", "epochs",
                                            "num_devices", "final", "selected", "best")
                          if k in s}, indent=2))
      print(f"wrote {s['workdir']}: metrics.jsonl, summary.json, plots, log.txt, checkpoints/"
            + (f" (stopped: {s['stopped']})" if s.get("stopped") else ""))
  stopped = [s for s in summaries if s.get("stopped")]
  if stopped:
    print(f"error: {len(stopped)} of {len(summaries)} members stopped (their summaries say "
          "why)", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
