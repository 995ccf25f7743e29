"""The scheduler's own work per step, as the profiler measures it: schedule + update, each
right after a model step (a run's scheduler finds the CPU caches full of the model's data).

Measured back to back, with the CPU caches holding nothing but the scheduler, a 10-decode fcfs
step read 6.6 us (13 us with its sampled tokens, which a run's update appends); after model
steps 41 us, where a validation run's fcfs decode steps spent 64 us (with a waiting queue to
try each step).
"""
from __future__ import annotations

import time
from dataclasses import replace

from scheduler import BatchPlan, Request, Scheduler, StepResult, schedule_config


def sampled_tokens(plan: BatchPlan) -> dict[int, int]:
    """A token for every request that samples in ``plan`` (what a run's update receives)."""
    tokens = {r: 0 for r in plan.decodes.req_ids}
    tokens.update((c.req_id, 0) for c in plan.listed if c.samples)
    return tokens


def timed_scheduler_step(runner, scheduler: Scheduler, model_step: BatchPlan) -> float:
    """Seconds of one schedule + update of ``scheduler``, right after ``runner`` executed
    ``model_step``; the update receives the sampled tokens."""
    runner.execute(replace(model_step))
    started = time.perf_counter()
    plan = scheduler.schedule(0.0)
    scheduler.update(plan, StepResult(plan.step, 0.0, sampled_tokens(plan)), 0.0)
    return time.perf_counter() - started


def steady_scheduler(batch: int, schedule: str, steps: int) -> Scheduler:
    """A scheduler of ``schedule`` whose ``batch`` requests all decode, for ``steps`` more steps
    at least. The requests come in groups of 8 sharing a prefix, as in ``validate``'s workload,
    so that grouped schedules find their shared-prefix groups."""
    from traces.synthetic import batchllm_microbenchmark

    workload = batchllm_microbenchmark(32, 16, steps + 256, 8, batch, shuffle=False, seed=0)
    scheduler = Scheduler(schedule_config(schedule, max_num_seqs=None, kv_threshold=None),
                          batch * (steps + 320) // 16 + 2 * batch + 64, 16)
    for request in workload.requests:
        scheduler.add(request)
    for _ in range(64):
        plan = scheduler.schedule(0.0)
        scheduler.update(plan, StepResult(plan.step, 0.0, sampled_tokens(plan)), 0.0)
        if len(plan.decodes.req_ids) == batch and not plan.listed:
            return scheduler
    raise AssertionError(f"{schedule}: {batch} requests never reached steady decode")


def fresh_prompts_scheduler(chunks: int, tokens: int, sample: int) -> Scheduler:
    """An fcfs scheduler holding ``chunks`` fresh prompts of ``tokens`` tokens in all, which its
    next step schedules whole (block hashing and allocation grow with the tokens); ``sample``
    makes the prompts' segment ids distinct from other samples'."""
    each = max(tokens // chunks, 1)
    config = schedule_config("fcfs", max_num_seqs=None, max_num_batched_tokens=max(each * chunks, 16))
    scheduler = Scheduler(config, chunks * (each // 16 + 2) + 8, 16)
    for request in range(chunks):
        scheduler.add(Request(request, 0.0, ((sample * chunks + request, each),), 2))
    return scheduler
