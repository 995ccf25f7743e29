"""The host-memory KV tier against a published LMCache analysis (hungchun0201.github.io,
agentic-ai-survey, "LMCache bottleneck analysis" and the 2026-04-14 research update).

Run: python benchmarks/lmcache_agents.py [--duration 60] [--gpus h100-sxm,h200,a100-40gb,l40s]

Their setting: Llama-3.1-8B in bf16 on one GPU; agents' jobs of 8 turns arriving on a Poisson
process at 1, 3, 6, 10 and 15 jobs a second; each turn re-sends the whole context and grows it
by about 2,000 tokens (to about 13,000 at turn 8), answers in 20 tokens, and the next turn
follows a 0.5 s tool call; the jobs share no prefix. vLLM's LRU prefix cache alone ("FCFS")
against LMCache 0.3.7 offloading to 64 GB of CPU memory, and to 400 GB (H100, H200), 200 GB
(A100 40GB), 100 GB (L40S). What they report (the text; the figures' numbers are not in it):
64 GB never helps, on any GPU and load; with the large memory the H100 gains at 3-10 jobs a
second (-31 % mean job time at 3), the H200 at 6 only, the A100 at 3 only.

Here: workload ``agent_jobs`` (1,000-token task, 1,700-token tool outputs: 13,040 tokens at
turn 8), fcfs, the roofline profile of each GPU, and the tier's stores delaying the step as
LMCache 0.3's do. The page does not say how many jobs a run sent; ``--duration`` assumes the
jobs of that many seconds of arrivals (rate x duration jobs), which moves the results a lot
at high loads (the unique KV of 15 jobs a second for 60 s is 1.5 TB, more than any tier here).
Printed: the mean job time (first turn's arrival to last answer) with the GPU's cache alone
and the change with each tier, and in how many cells the verdict agrees with the page's
(faster: more than ``--threshold`` faster).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from batchlab.records import request_columns  # noqa: E402
from reports.metrics import summarize  # noqa: E402
from scheduler import schedule_config  # noqa: E402
from scheduler.model_spec import model_spec  # noqa: E402
from sim.cost_model import CostModel  # noqa: E402
from sim.hardware import hardware_spec, kv_capacity_blocks  # noqa: E402
from sim.roofline import build_roofline_profile  # noqa: E402
from sim.simulator import simulate  # noqa: E402
from traces.arrivals import with_arrivals  # noqa: E402
from traces.synthetic import agent_sessions  # noqa: E402

RATES = (1, 3, 6, 10, 15)
LARGE_GB = {"h100-sxm": 400, "h200": 400, "a100-40gb": 200, "l40s": 100}
# jobs a second at which the page reports LMCache (large memory) faster than FCFS
PUBLISHED_GAINS = {"h100-sxm": {3, 6, 10}, "h200": {6}, "a100-40gb": {3}, "l40s": None}


def job_time(gpu: str, rate: float, duration: float, host_gb: float) -> dict:
    model = model_spec("llama-3.1-8b")
    hardware = hardware_spec(gpu)
    cost = CostModel(build_roofline_profile(model, hardware), model)
    jobs = agent_sessions(num_sessions=max(1, round(rate * duration)), turns=8, system_len=0, task_len=1000,
                          observation_len=1700, output_len=20)
    jobs = with_arrivals(jobs, "poisson", rate=rate, seed=42, think_s=0.5)
    config = schedule_config("fcfs", host_cache_blocks=int(host_gb * 1e9 // (model.kv_bytes_per_token * 16)))
    outcome = simulate(jobs, config, cost, kv_capacity_blocks(model, hardware, 16), 16)
    return summarize(request_columns(outcome.scheduler, "fcfs", jobs.sessions), outcome.steps.columns())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of job arrivals a run sends")
    parser.add_argument("--gpus", default="h100-sxm,h200,a100-40gb,l40s")
    parser.add_argument("--threshold", type=float, default=0.05, help="a tier counts as faster beyond this")
    args = parser.parse_args()
    agree = {"large": [0, 0], "64 GB": [0, 0]}  # cells agreeing, cells with a verdict
    started = time.perf_counter()
    print(f"mean job time, s (fcfs, GPU cache only) and its change with a host tier; "
          f"{args.duration:g} s of arrivals a run")
    print(f"{'GPU':<10} {'jobs/s':>6} {'jobs':>5}  {'GPU only':>9}  {'64 GB':>7}  {'large':>13}  published (large)")
    for gpu in args.gpus.split(","):
        large = LARGE_GB[gpu]
        for rate in RATES:
            alone, small, big = (job_time(gpu, rate, args.duration, gb)["session_s_mean"] for gb in (0, 64, large))
            published = PUBLISHED_GAINS[gpu]
            said = "-" if published is None else ("faster" if rate in published else "not faster")
            faster = lambda time: time / alone - 1 < -args.threshold
            verdicts = [("64 GB", faster(small), False)]  # the page: 64 GB never faster, on any GPU
            if published is not None:
                verdicts.append(("large", faster(big), rate in published))
            for key, ours, theirs in verdicts:
                agree[key][0] += ours == theirs
                agree[key][1] += 1
            print(f"{gpu:<10} {rate:>6} {round(rate * args.duration):>5}  {alone:>9,.1f}  {small / alone - 1:>+7.0%}  "
                  f"{big / alone - 1:>+7.0%} {large:>3} GB  {said}")
    print("verdicts agreeing with the page's (faster by more than "
          f"{args.threshold:.0%}): large tier {agree['large'][0]} of {agree['large'][1]}, "
          f"64 GB {agree['64 GB'][0]} of {agree['64 GB'][1]} ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
