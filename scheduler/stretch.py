"""Decode stretches: runs of steps whose plans are known in advance.

When every running request is decoding, nothing can be admitted (the queue is empty, or its
head is blocked for a reason a decode-only step cannot lift), no request finishes before the
last step and every new KV block the decodes need is free, then the next k plans are the same
decodes with contexts one longer each step. The simulator costs them in one call and advances
the scheduler in one call; a test holds the result equal to step-by-step simulation.

Why a blocked head stays blocked (for the policies here, LPM excepted): a decode-only step
frees nothing and only takes free blocks (evicting cached ones), so the head's cache hits can
only shrink and its needs only grow; the token budget and request count stay the same.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .scheduler import Scheduler


@dataclass(frozen=True)
class DecodeStretch:
    max_steps: int
    req_ids: tuple[int, ...]                # the decodes, in plan order
    context_sums: np.ndarray                # per step: sum of contexts after the step
    shared: tuple[tuple[int, int], ...]     # (decoding members, prefix length) per shared group
    shared_tokens: int                      # prefix tokens read through the shared-prefix kernel
    kv_blocks_used: np.ndarray              # per step: blocks in use after its allocations
    first_block_step: np.ndarray            # per request: first step needing a new block (1-based)

    @property
    def batch(self) -> int:
        return len(self.req_ids)


def _admission_blocked(scheduler: "Scheduler", batch: int) -> bool:
    if scheduler._ungrouped:
        return False
    head = scheduler.waiting.peek()
    if head is None:
        return True
    cfg = scheduler.config
    if cfg.max_num_seqs is not None and batch >= cfg.max_num_seqs:
        return True
    tokens_left = cfg.max_num_batched_tokens - batch
    if tokens_left <= 0:
        return True
    if cfg.order == "lpm":
        return False  # the head may change as evictions change cache matches
    state = head.prefix if hasattr(head, "prefix") else head
    return scheduler._admission(state, tokens_left) is None


def find_decode_stretch(scheduler: "Scheduler", max_steps: int) -> DecodeStretch | None:
    # every running request must be a cohort member (steady decode); joining changes nothing
    if not scheduler.lazy_decodes or not scheduler._join_decodes() or scheduler._others:
        return None
    cohort = scheduler.cohort
    batch = len(cohort)
    if not batch or batch > scheduler.config.max_num_batched_tokens:
        return None
    if not _admission_blocked(scheduler, batch):
        return None
    step = scheduler.step
    limit = min(max_steps, min(cohort.ends) - step + 1)
    size = scheduler.block_size
    computed = np.array(cohort.offsets, dtype=np.int64) + step
    capacity = np.array([len(s.block_table) for s in cohort.states], dtype=np.int64) * size
    first = capacity - computed + 1  # the step whose decode needs the first new block
    steps = np.arange(1, limit + 1, dtype=np.int64)
    allocated = np.clip((steps[:, None] - first[None, :]) // size + 1, 0, None).sum(axis=1)
    fits = int(np.searchsorted(allocated, scheduler.kv.num_free_blocks, side="right"))
    if fits < 1:
        return None
    steps, allocated = steps[:fits], allocated[:fits]
    groups = scheduler._cohort_shared_prefix_groups() if scheduler.config.prefix_aware_attention else ()
    shared = tuple((len(g.req_ids), g.prefix_len) for g in groups)
    shared_tokens = sum(m * p for m, p in shared)
    base = cohort.offset_sum + batch * step
    return DecodeStretch(fits, tuple(cohort.ids), base + steps * batch, shared,
                         shared_tokens, scheduler.kv.num_used_blocks + allocated, first)


def apply_decode_stretch(scheduler: "Scheduler", stretch: DecodeStretch, num_steps: int, end_times) -> None:
    if not 1 <= num_steps <= stretch.max_steps:
        raise ValueError(f"num_steps {num_steps} outside 1..{stretch.max_steps}")
    cohort = scheduler.cohort
    states = cohort.states
    if tuple(cohort.ids) != stretch.req_ids or scheduler._others:
        raise AssertionError("decode stretch applied after the running requests changed")
    size = scheduler.block_size
    # the new blocks, in the order step-by-step scheduling would have taken them
    events = []
    for index, first in enumerate(stretch.first_block_step.tolist()):
        events.extend((step, index) for step in range(first, num_steps + 1, size))
    events.sort()
    kv = scheduler.kv
    blocks = kv.allocate(len(events))
    if blocks is None:
        raise AssertionError("decode stretch ran out of KV blocks it had counted as free")
    for (_, index), block in zip(events, blocks):
        states[index].block_table.append(block)
    last = scheduler.step + num_steps - 1
    scheduler.stats.computed_tokens += num_steps * len(states)
    scheduler.step += num_steps  # the members' counters follow lazily
    if events:
        cohort.rebucket_due()
    finished = []
    end = float(end_times[num_steps - 1])
    for state in cohort.take_ends(last):
        scheduler._finish(state, end)
        finished.append(state.req_id)
    scheduler._finished_last_update = tuple(finished)
