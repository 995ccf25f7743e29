"""A fake executor for scheduler tests: every step takes one second, tokens are ignored."""
from __future__ import annotations

from scheduler import Scheduler, StepResult


def run_to_completion(scheduler: Scheduler, max_steps: int = 100_000) -> list:
    """Drives schedule -> execute -> update until done; returns the plans."""
    plans = []
    now = 0.0
    while scheduler.has_unfinished:
        plan = scheduler.schedule(now)
        assert not plan.is_empty, f"step {plan.step}: empty plan while work is pending"
        now += 1.0
        scheduler.update(plan, StepResult(plan.step, 1.0), now)
        plans.append(plan)
        assert len(plans) < max_steps, "scheduler did not finish"
    return plans


def chunk_triples(plan) -> list[tuple[int, int, int]]:
    return [(c.req_id, c.start, c.num_tokens) for c in plan.chunks]
