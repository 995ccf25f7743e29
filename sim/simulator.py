"""The SimPy driver: an arrivals process and an engine-loop process running DESIGN.md's loop
``plan = schedule(now); result = execute(plan); update(plan, result, now')`` with the cost
model as the executor.

Arrival rule: a request is schedulable in the first step that starts at or after its arrival
time. The engine loop takes arrivals by time from the sorted workload (so the order of SimPy
events at equal times cannot change a result); the arrivals process wakes an idle engine at
the next arrival, and sleeps while the engine is busy (an event per request cost 3 % of the
Azure replay's instructions and changed nothing). In a closed loop (``Workload.closed_loop``)
arrival times come from the run: each request that finishes frees its client, whose next
request arrives at the end of that step plus the think time.
The loop keeps its own clock, ``now + duration`` step after step, the same additions whether
steps are simulated one by one or a decode stretch at a time. It hands control to SimPy (a
timeout to the step's end) only where another process has an event due before the step ends
or the engine goes idle: in between nothing else could act, and SimPy's clock catches up at
the next hand-over.
"""
from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import simpy

from scheduler import Scheduler, ScheduleConfig
from scheduler.contract import new_step_result
from scheduler.errors import WorkloadError
from scheduler.gc_pause import cyclic_gc_paused
from traces.client_pool import add_sent, arrival_order
from traces.workload import Workload

from .cost_model import KERNELS, CostModel
from traces.step_log import StepLog

MAX_STRETCH = 4096  # steps one decode stretch may cover
# A stretch is looked for only where the next arrival is estimated this many decode steps away
# or more: a shorter one costs more in set-up (numpy over a few steps) than the steps it
# replaces (the Azure replay's arrivals come every three steps: 5 % fewer instructions)
MIN_LOOKAHEAD = 10


def lookahead(now: float, next_arrival: float, decode_s: float | None) -> int:
    """How many steps a decode stretch looks ahead: past the next arrival it ends anyway.
    An estimate from the last decode step's time (stretches get slower, not faster, as
    contexts grow), with slack; one that falls short only splits a stretch in two."""
    if decode_s is None or next_arrival == math.inf:
        return MAX_STRETCH
    steps = (next_arrival - now) / decode_s
    if steps < MIN_LOOKAHEAD:  # a stretch would end within a few steps: not worth looking for
        return 1
    return int(min(MAX_STRETCH, 1.25 * steps + 8))


def record_stretch(scheduler: Scheduler, log: StepLog, cost: CostModel, stretch, now: float,
                   next_arrival: float) -> tuple[int, np.ndarray, float]:
    """Costs a decode stretch starting at ``now`` and logs its steps that start before
    ``next_arrival`` (the first one always): (how many, every step's end, the first step's
    duration). The scheduler is advanced by the caller, at the last one's end."""
    shared, shared_tokens = (stretch.shared, stretch.shared_tokens) if cost.prefix_aware else ((), 0)
    durations, kernels = cost.decode_steps(stretch.batch, stretch.context_sums, shared, shared_tokens)
    ends = np.cumsum(np.concatenate([[now], durations]))[1:]
    # step j >= 2 starts at ends[j-2]; it must start before the next arrival
    count = 1 + int(np.searchsorted(ends[:stretch.max_steps - 1], next_arrival, side="left"))
    starts = np.concatenate([[now], ends[:count - 1]])
    first_step = scheduler.step
    batch = stretch.batch
    log.add_steps({"step": np.arange(first_step, first_step + count), "start_s": starts,
                   "duration_s": durations[:count], "num_tokens": batch, "num_prefill_tokens": 0,
                   "num_decode_tokens": batch, "num_requests": batch, "num_sampled": batch,
                   "kv_blocks_used": stretch.kv_blocks_used[:count], "num_waiting": scheduler.num_waiting,
                   "num_preempted": 0, "num_loaded_tokens": 0}, kernels, count)
    return count, ends, float(durations[0])


def start_loads(loads: list, channel: float, plan, now: float, cost: CostModel) -> float:
    """Queues the host-tier loads ``plan`` starts beside its step (``BatchPlan.loading``) on the
    link, one after the other from ``now`` or when the link is free (``channel``), each as
    (when in, request) on the heap ``loads``; returns when the link is free again."""
    for req_id, tokens, remote in plan.loading:
        channel = max(channel, now) + cost.load_seconds(tokens, remote)
        heapq.heappush(loads, (channel, req_id))
    return channel


def loads_in(loads: list, now: float) -> list[int]:
    """The requests whose loads are in by ``now``, taken off the heap."""
    done = []
    while loads and loads[0][0] <= now:
        done.append(heapq.heappop(loads)[1])
    return done


@dataclass
class SimOutcome:
    schedule: str
    scheduler: Scheduler
    steps: StepLog
    makespan_s: float
    wall_s: float
    num_events: int
    profile_label: str
    profile_kind: str
    extra: dict = field(default_factory=dict)


def simulate(workload: Workload, config: ScheduleConfig, cost: CostModel, num_kv_blocks: int,
             block_size: int = 16, fast_forward: bool = True, step_dir: Path | None = None,
             progress: Callable[[str], None] | None = None, progress_every_s: float = 2.0,
             on_plan: Callable | None = None) -> SimOutcome:
    """``on_plan`` sees every plan scheduled one by one (not the steps of a decode stretch)."""
    started = time.perf_counter()
    cost = cost.for_schedule(config.name)  # the schedule's own scheduler work, where measured
    scheduler = Scheduler(config, num_kv_blocks, block_size, emit_block_ids=False,
                          window_blocks=cost.model.window_blocks(block_size, cost.tensor_parallel))
    # the requests arrived or due, by arrival time; a closed loop's clients send them as they go
    closed, ordered, requests = arrival_order(workload)
    # fail before simulating anything if one cannot ever fit: if the longest does, and the longest
    # prompt (which a step without chunked prefill takes whole)
    if ordered:
        try:
            scheduler.check_fits(max(ordered, key=lambda r: r.prompt_len + r.output_len))
            scheduler.check_fits(max(ordered, key=lambda r: r.prompt_len))
        except WorkloadError:
            for request in ordered:  # the first to arrive that cannot is named
                scheduler.check_fits(request)
    log = StepLog(KERNELS, step_dir)
    env = simpy.Environment()
    # "idle": the event an idle engine waits on; "wait": the one the sleeping arrivals process waits on
    state = {"next": 0, "events": 0, "idle": None, "decode_s": None, "wait": env.event()}
    total = len(workload.requests)

    def release(now: float) -> float:
        """Closed loop: the requests clients send as theirs finished at ``now`` (the end of the
        step just simulated); the earliest one's arrival."""
        sent = closed.sent_after(scheduler.finished_last_update, now)
        add_sent(requests, state["next"], sent)
        return min((r.arrival_s for r in sent), default=math.inf)

    def arrivals():
        """Wakes the engine, each time it goes idle, at the next arrival. Asleep while the
        engine is busy (it takes arrivals by time itself): an event per request would only
        make SimPy step through the queue while nothing waits for it."""
        while True:
            yield state["wait"]  # the engine went idle
            state["wait"] = env.event()  # for its next idle spell
            index = state["next"]
            if index < len(requests) and requests[index].arrival_s > env.now:
                yield env.timeout(requests[index].arrival_s - env.now)
            state["idle"].succeed()

    def take_arrivals(now: float) -> float:
        """Adds the requests arrived by ``now``; returns the next one's arrival time."""
        index = state["next"]
        while index < len(requests) and requests[index].arrival_s <= now:
            scheduler.add(requests[index])
            index += 1
        state["next"] = index
        return requests[index].arrival_s if index < len(requests) else math.inf

    last_report = [time.perf_counter()]

    def report(now: float) -> None:
        if time.perf_counter() - last_report[0] < progress_every_s:
            return
        last_report[0] = time.perf_counter()
        progress(f"{config.name}: step {scheduler.step:,}, simulated {now:,.1f} s, "
                 f"{scheduler.num_finished:,}/{total:,} requests finished")

    def engine():
        loads: list[tuple[float, int]] = []  # (when in, request): host-tier loads beside the steps
        channel = 0.0  # when the host link is free
        now = 0.0
        next_arrival = take_arrivals(now)
        while True:
            if next_arrival <= now:
                next_arrival = take_arrivals(now)
            if loads and loads[0][0] <= now:  # requests whose blocks are in run from this step
                scheduler.loads_done(loads_in(loads, now))
            horizon = min(next_arrival, loads[0][0]) if loads else next_arrival  # the next event
            if not scheduler.has_unfinished:
                if state["next"] >= total:
                    break
                yield from idle_until_an_arrival(now)
                now = max(now, next_arrival)
                continue
            state["events"] += 1
            if progress is not None:
                report(now)
            stretch = None  # looked for up to about the next event (an arrival, a load done)
            if fast_forward:
                look = lookahead(now, horizon, state["decode_s"])
                if look > 1:
                    stretch = scheduler.decode_stretch(look)
            if stretch is not None:
                now = yield from run_stretch(stretch, now, horizon)
                if closed is not None:
                    next_arrival = min(next_arrival, release(now))
                continue
            waiting = scheduler.num_waiting
            plan = scheduler.schedule(now)
            if plan.is_empty and not plan.loading:  # nothing fits until an arrival or a load is in
                if loads:
                    if env.now < horizon:
                        yield env.timeout(horizon - env.now)
                    now = max(now, horizon)
                    continue
                if state["next"] >= total:
                    raise RuntimeError(f"{config.name}: empty plan with nothing left to arrive")
                yield from idle_until_an_arrival(now)
                now = max(now, next_arrival)
                continue
            if plan.loading:
                channel = start_loads(loads, channel, plan, now, cost)
            if on_plan is not None:
                on_plan(plan)
            duration, kernels, (tokens, prefill, sampled) = cost.step(plan)
            log.add_row((plan.step, now, duration, tokens, prefill, tokens - prefill, plan.num_requests, sampled,
                         scheduler.kv.num_used_blocks, waiting, len(plan.preempted), plan.loaded_tokens),
                        kernels)  # STEP_COLUMNS
            end = now + duration
            if env.peek() < end:  # another process has an event due before this step ends
                yield env.timeout(end - env.now)
            scheduler.update(plan, new_step_result(plan.step, duration), end)
            now = end
            if closed is not None:
                next_arrival = min(next_arrival, release(now))

    def idle_until_an_arrival(now: float):
        """Waits (SimPy's clock first brought to ``now``) until the arrivals process wakes it."""
        if env.now < now:
            yield env.timeout(now - env.now)
        state["idle"] = env.event()
        state["wait"].succeed()
        yield state["idle"]

    def run_stretch(stretch, now: float, horizon: float):
        next_arrival = requests[state["next"]].arrival_s if state["next"] < len(requests) else math.inf
        next_event = min(next_arrival, horizon)
        count, ends, state["decode_s"] = record_stretch(scheduler, log, cost, stretch, now, next_event)
        end = float(ends[count - 1])
        if env.peek() < end:  # as after a single step
            yield env.timeout(end - env.now)
        scheduler.advance_decodes(stretch, count, ends)
        return end

    env.process(arrivals())
    env.process(engine())
    # the loop makes no reference cycles (a test holds it to that); the collector's passes over a
    # million requests' states cost a fifth of the run (100k requests: 6.2 -> 5.1 s)
    with cyclic_gc_paused():
        env.run()
    makespan = max((s.finish_s for s in scheduler.states.values() if s.request is not None and s.finish_s),
                   default=0.0)
    return SimOutcome(config.name, scheduler, log, makespan, time.perf_counter() - started,
                      state["events"], cost.profile.label, cost.profile.kind)
