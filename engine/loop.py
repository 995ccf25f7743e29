"""The engine loop: DESIGN.md's ``schedule -> execute -> update`` on the wall clock.

Offline (every request at t=0) the plans are exactly the simulator's for the same workload and
schedule. Online replay sleeps until the next arrival when idle. Records use the same columns
as the simulator's, with measured durations.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from scheduler import Scheduler, ScheduleConfig
from scheduler.errors import ConfigError
from traces.client_pool import add_sent, arrival_order
from traces.step_log import StepLog
from traces.workload import Workload

from .model import ENGINE_KERNELS
from .runner import ModelRunner

KERNELS = ENGINE_KERNELS + ("overhead", "scheduler")


@dataclass
class EngineOutcome:
    schedule: str
    scheduler: Scheduler
    steps: StepLog
    makespan_s: float
    plans: list = field(default_factory=list)  # (step, ((req_id, start, num_tokens), ...)) per step
    batch_plans: list = field(default_factory=list)  # the plans themselves, one a logged step (keep_plans)


def run_engine(workload: Workload, config: ScheduleConfig, runner: ModelRunner, num_kv_blocks: int,
               block_size: int = 16, online: bool | None = None, step_dir: Path | None = None,
               progress: Callable[[str], None] | None = None, keep_plans: bool = False) -> EngineOutcome:
    scheduler = Scheduler(config, num_kv_blocks, block_size, emit_block_ids=True,
                          window_blocks=runner.spec.window_blocks(block_size))
    closed, _, requests = arrival_order(workload)  # a closed loop's clients extend `requests`
    if closed is None:
        online = (not workload.is_offline) if online is None else online
    elif online is False:
        raise ConfigError(f"workload {workload.name!r} is a closed loop: its clients send requests as earlier ones "
                          f"finish, on the wall clock; it cannot run with online=false")
    else:
        online = True
    if workload.segment_tokens is not None:  # prompts of real token ids: the model reads those
        runner.use_prompt_tokens(workload.segment_tokens)
    for request in workload.requests:  # every request checked against the KV capacity before any work
        scheduler.check_fits(request)
        runner.add_request(request)
    log = StepLog(KERNELS, step_dir)
    plans, batch_plans = [], []
    index, total = 0, len(workload.requests)
    started = time.perf_counter()
    last_report = started
    while True:
        now = time.perf_counter() - started
        while index < len(requests) and (not online or requests[index].arrival_s <= now):
            scheduler.add(requests[index])
            index += 1
        if not scheduler.has_unfinished:
            if index >= total:
                break
            time.sleep(max(requests[index].arrival_s - now, 0.0))
            continue
        waiting = scheduler.num_waiting
        step_started = time.perf_counter()
        plan = scheduler.schedule(now)
        if plan.is_empty and not plan.loading:
            time.sleep(0.001)
            continue
        for chunk in plan.chunks:
            if chunk.req_id < 0 and chunk.req_id not in runner.prefixes:
                runner.add_prefix(chunk.req_id, scheduler.states[chunk.req_id].prompt)
        kv_used = scheduler.kv.num_used_blocks
        scheduled = time.perf_counter()
        result = runner.execute(plan)
        executed = time.perf_counter()
        scheduler.update(plan, result, executed - started)
        if plan.loading:  # the runner copied them in before computing: they run from the next step
            scheduler.loads_done([req_id for req_id, _, _ in plan.loading])
        if closed is not None:  # clients whose requests finished send their next ones
            add_sent(requests, index, closed.sent_after(scheduler.finished_last_update, executed - started))
        # a step spans the whole iteration, scheduling included, so that steps tile the timeline
        end = time.perf_counter()
        kernels = dict(result.kernel_s)
        kernels["scheduler"] = (scheduled - step_started) + (end - executed)
        prefill = sum(c.num_tokens for c in plan.chunks if not c.is_decode)
        tokens = plan.num_tokens
        log.add_step({"step": plan.step, "start_s": step_started - started, "duration_s": end - step_started,
                      "num_tokens": tokens, "num_prefill_tokens": prefill, "num_decode_tokens": tokens - prefill,
                      "num_requests": len(plan.chunks), "num_sampled": len(result.sampled_tokens),
                      "kv_blocks_used": kv_used, "num_waiting": waiting, "num_preempted": len(plan.preempted),
                      "num_loaded_tokens": plan.loaded_tokens},
                     kernels)
        if keep_plans:
            plans.append(plan.outline())
            batch_plans.append(plan)  # a frozen value: priced after the run (batchlab validate)
        if progress is not None and time.perf_counter() - last_report > 2.0:
            last_report = time.perf_counter()
            progress(f"{config.name}: step {plan.step:,}, {end - started:,.1f} s, "
                     f"{scheduler.num_finished:,}/{total:,} requests finished")
    makespan = max((s.finish_s for s in scheduler.states.values() if s.request is not None and s.finish_s), default=0.0)
    return EngineOutcome(config.name, scheduler, log, makespan, plans, batch_plans)
