"""Prints the simulator's speed figures (issue 3). Run: python benchmarks/bench_sim.py [--million]

1. Azure LLM 2023 conversation trace (19,366 requests), fcfs with chunked prefill 512, A100,
   Llama-2-7B: the whole ``batchlab simulate`` command, wall clock (target <= 2 s); the median
   of ``--repeat`` runs (3), with the fastest and slowest, as the machine is shared.
2. Mooncake conversation trace (12,031 requests, 145M prompt tokens), fcfs with prefix caching,
   H100, Llama-3.1-8B: wall clock and peak memory of the whole command (targets <= 5 s, < 1 GB).
3. Growth with the number of requests (system-prompt workload, Poisson arrivals at a rate the
   GPU sustains): seconds per 1,000 requests should stay flat. ``--million`` adds 1,000,000.
Traces are read from ../shared/traces; a missing one is reported and skipped.

The development machine's speed drifts by up to a third between spells, so the figures come
with a yardstick: a fixed pure-Python loop (dicts, lists, attribute access and calls, none of
batchlab's code), timed before and after. Figures are comparable across runs in proportion to it.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRACES = ROOT.parent / "shared" / "traces"


# runs the CLI in a child that prints its own peak RSS at exit (RUSAGE_CHILDREN would give the
# peak over every child so far, not this command's)
CHILD = ("import resource, sys\nfrom batchlab.cli import main\ntry:\n    main(sys.argv[1:])\nfinally:\n"
         "    print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)")


class _Point:
    __slots__ = ("x", "n")

    def __init__(self, x: int) -> None:
        self.x, self.n = x, 0


def _yardstick_once() -> float:
    started = time.perf_counter()
    points = [_Point(i) for i in range(20_000)]
    index: dict[int, _Point] = {}
    for rep in range(12):
        for point in points:
            point.n += point.x & 7
            index[point.x ^ rep] = point
        points.sort(key=lambda p: (p.n * 7919) % 10_007)
    return time.perf_counter() - started


def yardstick() -> str:
    """The fixed loop's median and fastest of five, in milliseconds (lower: a faster spell)."""
    times = sorted(_yardstick_once() for _ in range(5))
    return f"yardstick (fixed pure-Python loop): median {times[2] * 1e3:.0f} ms, fastest {times[0] * 1e3:.0f} ms"


def run_command(args: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MB of that command, its last progress line)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as run_dir:
        result = subprocess.run([sys.executable, "-c", CHILD, "simulate", *args, "report=false",
                                 "progress=false", f"hydra.run.dir={run_dir}"], cwd=ROOT, env=env,
                                capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"command failed: {result.stderr[-2000:]}")
    lines = result.stderr.strip().splitlines()
    peak_kb = next(int(line.split()[1]) for line in reversed(lines) if line.startswith("PEAK_RSS_KB"))
    progress = [line for line in lines if not line.startswith("PEAK_RSS_KB")]
    return wall, peak_kb / 1024, progress[-1]


def scaling(sizes: list[int]) -> None:
    from scheduler import schedule_config
    from scheduler.model_spec import model_spec
    from sim.cost_model import CostModel
    from sim.hardware import hardware_spec, kv_capacity_blocks
    from sim.roofline import build_roofline_profile
    from sim.simulator import simulate
    from traces.arrivals import with_arrivals
    from traces.synthetic import system_prompt_workload

    model, hardware = model_spec("llama-3.1-8b"), hardware_spec("h100-sxm")
    cost = CostModel(build_roofline_profile(model, hardware), model)
    blocks = kv_capacity_blocks(model, hardware, 16)
    print("requests   schedule        sim wall s   s per 1k requests   steps      events")
    for size in sizes:
        workload = with_arrivals(system_prompt_workload(num_requests=size, seed=1), "poisson", rate=40.0, seed=2)
        for name in ("fcfs", "batchllm"):
            outcome = simulate(workload, schedule_config(name), cost, blocks, 16)
            print(f"{size:>9,}  {name:<14} {outcome.wall_s:>10.2f}   {outcome.wall_s / size * 1000:>17.3f}   "
                  f"{outcome.steps.num_steps:>8,}  {outcome.num_events:>8,}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--million", action="store_true", help="also simulate 1,000,000 requests")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each replay command (the median is printed)")
    args = parser.parse_args()
    print(yardstick(), "(before)", flush=True)
    replays = (("Azure conv replay", "azure-llm-2023/AzureLLMInferenceTrace_conv.csv", "azure_replay"),
               ("Mooncake conversation replay", "mooncake/conversation_trace.jsonl", "mooncake_replay"))
    for title, trace, experiment in replays:
        if not (TRACES / trace).exists():
            print(f"{title}: skipped, {TRACES / trace} not found")
            continue
        runs = sorted((run_command([f"+experiment={experiment}"]) for _ in range(args.repeat)), key=lambda r: r[0])
        wall, peak, line = runs[len(runs) // 2]
        spread = f" (of {len(runs)} runs: {runs[0][0]:.2f} to {runs[-1][0]:.2f} s)" if len(runs) > 1 else ""
        print(f"{title}, whole command: median {wall:.2f} s wall{spread}, peak RSS {peak:,.0f} MB  [{line}]")
    scaling([10_000, 30_000, 100_000] + ([1_000_000] if args.million else []))
    print(yardstick(), "(after)")


if __name__ == "__main__":
    main()
