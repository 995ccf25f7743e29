"""SGLang's steps (``ScheduleConfig.mixed_batches=False``): prompt chunks and decodes apart.

vLLM (and Sarathi-Serve) fill every step with the running decodes first and prompt chunks in
the rest of the token budget. SGLang by default (``--enable-mixed-chunk`` off) runs a prefill
batch whenever it has prompt work it can admit (the chunked request under way, then requests
from the queue, within ``--chunked-prefill-size``), and the decodes only in the steps between:
its ``get_next_batch_to_run`` tries ``get_new_batch_prefill`` first and updates the running
(decode) batch only where that finds nothing. A step of prompt chunks here is the same: the
decoding requests wait, their decode cohort paused (``DecodeCohort.pause``). A running
request's prompt chunk short of KV blocks waits for the decodes to free some (SGLang admits a
prompt only where all its blocks are free, so its chunks never wait; vLLM's admission, which
looks at the first chunk only, needs the wait: preempting for the chunk would readmit the
victim in the next step of prompts, and the decodes would never run). Where no decode can run
either, the chunks preempt as vLLM's do (the caller's decode step).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .admission import admit

if TYPE_CHECKING:
    from .scheduler import Scheduler


def prefill_step(scheduler: "Scheduler", now: float, tokens_left: int, chunks: list, scheduled: set[int]) -> bool:
    """Schedules a step of prompt chunks (the running requests' next ones, in admission order,
    then admissions) where there are any, and answers whether it did; else the step is left to
    the decodes."""
    size, emit = scheduler.block_size, scheduler.emit_block_ids
    for state in list(scheduler._others.values()):
        if tokens_left <= 0:
            break
        computed = state.num_computed_tokens
        if state.num_tokens - computed == 1 and computed >= state.prompt_len:
            continue  # decoding
        count = min(state.num_tokens - computed, tokens_left)  # (short of blocks, it waits for the decodes)
        tokens_left -= scheduler._schedule_running(state, count, chunks, scheduled, [], size, emit, waits=True)
    if tokens_left > 0:
        admit(scheduler, now, tokens_left, chunks)
    if not chunks:
        return False
    scheduler.cohort.pause()  # its members do not decode in this step
    return True
