"""Prints the scheduler's speed figures (issue 2). Run: python benchmarks/bench_scheduler.py

- grouping of the BatchLLM microbenchmark shape (prefix 2000, distinct 200, share degree 16)
  for 8,000 and 100,000 requests (targets: <= 0.1 s and <= 2 s on a 2-core machine);
- one scheduling step (schedule + update) over 256 running decodes, with and without block
  tables in the plan (the simulator runs without them).
"""
from __future__ import annotations

import statistics
import time

from scheduler import Request, Scheduler, StepResult, group_requests, schedule_config
from traces.synthetic import batchllm_microbenchmark


def time_grouping(num_requests: int, repeats: int = 3) -> float:
    requests = batchllm_microbenchmark(num_requests=num_requests).requests
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        group_requests(requests, 16)
        best = min(best, time.perf_counter() - started)
    return best


def time_decode_step(schedule: str, emit_block_ids: bool, running: int = 256, steps: int = 2000) -> float:
    scheduler = Scheduler(schedule_config(schedule, max_num_seqs=None, max_num_batched_tokens=8192),
                          num_kv_blocks=200_000, block_size=16, emit_block_ids=emit_block_ids)
    for req_id in range(running):
        scheduler.add(Request(req_id, 0.0, ((req_id, 2000),), 10 * steps))
    now = 0.0
    while True:  # prefill everything first
        plan = scheduler.schedule(now)
        scheduler.update(plan, StepResult(plan.step, 0.0), now)
        if all(c.is_decode for c in plan.chunks) and len(plan.chunks) == running:
            break
    samples = []
    for _ in range(steps):
        started = time.perf_counter()
        plan = scheduler.schedule(now)
        scheduler.update(plan, StepResult(plan.step, 0.0), now)
        samples.append(time.perf_counter() - started)
    assert len(plan.chunks) == running
    return statistics.median(samples)


def main() -> None:
    for count in (8_000, 100_000):
        print(f"grouping {count:>7,} requests: {time_grouping(count) * 1000:8.1f} ms (best of 3)")
    for schedule in ("fcfs", "batchllm"):
        for emit in (False, True):
            per_step = time_decode_step(schedule, emit)
            print(f"{schedule:>9} step, 256 running decodes, block tables {'on ' if emit else 'off'}: "
                  f"{per_step * 1e6:7.1f} us per schedule+update ({per_step * 1e6 / 256:.2f} us per request)")


if __name__ == "__main__":
    main()
