"""``batchlab`` command line. Subcommands:

  batchlab simulate [hydra overrides]   compare schedules on a workload (the main job)
  batchlab plan [hydra overrides]       every way to deploy the model on N GPUs (TP x replicas), ranked
  batchlab calibrate [hydra overrides]  fit the roofline's assumptions to benchmarks measured on your GPU
  batchlab run [hydra overrides]        the same schedules on the real engine, measured
  batchlab profile [hydra overrides]    measure the engine's per-kernel costs on this device
  batchlab validate [hydra overrides]   profile, simulate, run the engine, report the prediction error
  batchlab report RUN_DIR [RUN_DIR ...]  report.md/.html and timeline.json from run records
  batchlab import PROMPTS OUTPUT        your own prompts (token ids, text, chat) as a workload file
  batchlab order RUN_DIR OUTPUT         your prompts file in the order a simulated schedule admitted them
  batchlab group [options]              global prefix grouping of a built-in workload
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path


def _group(argv: list[str]) -> int:
    from scheduler import group_requests
    from traces.synthetic import batchllm_microbenchmark

    parser = argparse.ArgumentParser(prog="batchlab group",
                                     description="BatchLLM global prefix grouping of the microbenchmark workload")
    parser.add_argument("--prefix-len", type=int, default=2000)
    parser.add_argument("--distinct-len", type=int, default=200)
    parser.add_argument("--output-len", type=int, default=100)
    parser.add_argument("--share-degree", type=int, default=16)
    parser.add_argument("--num-requests", type=int, default=6400)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    requests = batchllm_microbenchmark(args.prefix_len, args.distinct_len, args.output_len,
                                       args.share_degree, args.num_requests, True, args.seed).requests
    started = time.perf_counter()
    grouping = group_requests(requests, args.block_size)
    elapsed = time.perf_counter() - started
    degrees = grouping.share_degrees
    print(f"workload: BatchLLM microbenchmark, {len(requests)} shuffled requests, prefix "
          f"{args.prefix_len}, distinct {args.distinct_len}, share degree {args.share_degree}")
    print(f"groups: {len(grouping.groups)} (share degree {min(degrees, default=0)}..{max(degrees, default=0)}), "
          f"plain requests: {len(grouping.plain_ids)}")
    print(f"prefill tokens: logical {grouping.logical_prefill_tokens:,}, computed {grouping.computed_prefill_tokens:,}")
    print(f"prefill token saving: {grouping.saving:.4f}")
    print(f"grouping took {elapsed * 1000:.1f} ms")
    return 0


def _import(argv: list[str]) -> int:
    from .import_prompts import import_main

    return import_main(argv)


def _order(argv: list[str]) -> int:
    from .order import order_main

    return order_main(argv)


def _report(argv: list[str]) -> int:
    from reports.build import build_report
    from reports.run_records import RunRecordError

    parser = argparse.ArgumentParser(prog="batchlab report",
                                     description="report.md, report.html and timeline.json from run directories")
    parser.add_argument("run_dirs", nargs="+", help="run directories written by batchlab simulate or run")
    parser.add_argument("--out", default=None, help="output directory (default: the first run directory)")
    args = parser.parse_args(argv)
    try:
        page = build_report(args.run_dirs, args.out or args.run_dirs[0])
    except RunRecordError as error:
        print(f"batchlab report: error: {error}", file=sys.stderr)
        return 2
    print(f"report: {page}")
    return 0


# ``model.overrides``, ``hardware.overrides`` and ``schedule.overrides`` are open mappings
# (any field of the preset, any schedule option): Hydra would only take a new key in them as
# ``+key=value``, or ``++key=value`` where an experiment already set it. Users write the plain
# form the configs' comments show; it is passed on as ``++``, which adds or replaces.
FREE_FORM = re.compile(r"^(model|hardware|schedule)\.overrides\.[A-Za-z_][A-Za-z0-9_]*=")


def hydra_overrides(argv: list[str]) -> list[str]:
    return ["++" + arg if FREE_FORM.match(arg) else arg for arg in argv]


SETS_MODE = re.compile(r"^\s*mode\s*:", re.MULTILINE)  # a YAML key `mode:` (as in `hydra: {mode: ...}`)


def mode_is_unset(argv: list[str], conf_dir: str) -> bool:
    """Whether nothing can set ``hydra.mode``: no override names it or adds config paths, and
    no file of the config tree has a ``mode:`` key."""
    if any("hydra.mode" in arg or "hydra.searchpath" in arg for arg in argv):
        return False
    return not any(SETS_MODE.search(path.read_text()) for path in Path(conf_dir).rglob("*.yaml"))


def _hydra(name: str, module: str, function: str):
    """A subcommand whose arguments are Hydra overrides (see conf/)."""
    def command(argv: list[str]) -> int:
        import importlib

        from hydra._internal.hydra import Hydra

        from .command import CONF_DIR

        main = getattr(importlib.import_module(f"batchlab.{module}"), function)
        sys.argv = [f"batchlab {name}"] + hydra_overrides(argv)
        probe = getattr(Hydra, "get_mode", None)
        # Hydra composes the whole config twice: once only to read hydra.mode (RUN or MULTIRUN,
        # which a config may set), then to run. Where nothing sets it the first answer is known,
        # None (Hydra then runs, or sweeps with -m), and the first composition, 0.07 s of a
        # replay's 2 s, is skipped.
        if probe is not None and mode_is_unset(argv, CONF_DIR):
            Hydra.get_mode = lambda self, config_name, overrides: None
        try:
            main()
        finally:
            if probe is not None:
                Hydra.get_mode = probe
        return 0
    return command


COMMANDS = {"group": _group, "simulate": _hydra("simulate", "simulate", "simulate_main"),
            "plan": _hydra("plan", "plan", "plan_main"),
            "calibrate": _hydra("calibrate", "calibrate", "calibrate_main"),
            "run": _hydra("run", "run", "run_main"), "profile": _hydra("profile", "validate", "profile_main"),
            "validate": _hydra("validate", "validate", "validate_main"), "report": _report,
            "import": _import, "order": _order}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    command = argv.pop(0)
    if command not in COMMANDS:
        print(f"batchlab: unknown command {command!r}; expected one of {sorted(COMMANDS)}", file=sys.stderr)
        return 2
    return COMMANDS[command](argv)


if __name__ == "__main__":
    sys.exit(main())


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
