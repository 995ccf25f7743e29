"""SGLang's retraction (``ScheduleConfig.preemption="sglang"``; SGLang's
``ScheduleBatch.retract_decode`` and ``Scheduler.update_running_batch``).

vLLM preempts as it goes: a decode short of a KV block takes it from the newest running request
not yet scheduled in the step, which goes back to the front of the queue. SGLang checks before
a decode batch whether the new KV pages its decodes need are free (cached pages no one holds
count as free); where not, it retracts requests, fewest tokens sampled first (the longest prompt
first among equals), until the rest fit, and appends them to its waiting queue. A request that
was retracted keeps its answer so far and computes it again with its prompt, so it is not the
next victim, where vLLM's newest-first takes it again and again. The share of the answers kept
in reserve is then re-estimated (reserve.py). What stays vLLM's here: a running prompt chunk
short of blocks (SGLang admits chunks only within its budget) preempts as vLLM does, as does a
decode the check could not make room for (one request left).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .preemption import preempt

if TYPE_CHECKING:
    from .request import RequestState
    from .scheduler import Scheduler


def victim_order(state: "RequestState") -> tuple[int, int, int]:
    """Sort key, first retracted first: fewest tokens sampled, longest prompt, newest admitted
    (SGLang sorts its running batch stably and retracts from the end)."""
    return state.num_output_tokens, -state.prompt_len, -state.admit_seq


def retract_for_decodes(scheduler: "Scheduler", preempted: list[int]) -> None:
    """Before a step's decodes take their blocks: where they need more new blocks than are
    free, retracts decoding requests in ``victim_order`` until the others' fit (at least one
    request keeps running). Victims are appended to ``preempted``."""
    size = scheduler.block_size
    step = scheduler.step
    cohort = scheduler.cohort
    need = len(cohort.due.get(step, ()))
    decoding = []
    for state in scheduler._others.values():
        computed = state.num_computed_tokens
        if state.request is None or state.num_tokens - computed != 1 or computed < state.prompt_len:
            continue  # a prompt chunk, or a group's prefix
        decoding.append(state)
        need += computed + 1 > len(state.block_table) * size
    free = scheduler.kv.num_free_blocks
    if need <= free:
        return
    cohort.sync_all(step)  # members' counters, for the order
    candidates = sorted(cohort.states + decoding, key=victim_order)
    left = len(candidates)
    for victim in candidates:
        if need <= free or left == 1:
            break
        need -= victim.num_computed_tokens + 1 > len(victim.block_table) * size  # it needed one
        preempt(scheduler, victim)
        preempted.append(victim.req_id)
        left -= 1
        free = scheduler.kv.num_free_blocks
