"""Decode stretches: runs of steps whose plans are known in advance.

When every running request is decoding, nothing can be admitted (the queue is empty, or its
head is blocked for a reason a decode-only step cannot lift), no request finishes before the
last step and every new KV block the decodes need is free, then the next k plans are the same
decodes with contexts one longer each step. The simulator costs them in one call and advances
the scheduler in one call; a test holds the result equal to step-by-step simulation.

Why a blocked head stays blocked (for the policies here, LPM and SGLang's reserve excepted): a
decode-only step frees nothing and only takes free blocks (evicting cached ones), so the head's
cache hits can only shrink and its needs only grow; the token budget and request count stay the
same. (The room SGLang's admission keeps for the answers shrinks as they decode: reserve.py.)
Except with a hybrid model's pages in the prefix cache (window_pages.py): a hit is cut back to
where its last blocks' pages are cached, so losing one block can cut it to nothing, and the head,
computing from its start, then takes only its first chunk's blocks, fewer than the hit's pages
and reserve took. There a stretch ends before its decodes could evict a block of the head's hit
or of its pages (``_safe_allocations``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .admission import admission, hit_limit, lru_hits

if TYPE_CHECKING:
    from .request import RequestState
    from .scheduler import Scheduler


@dataclass(frozen=True)
class DecodeStretch:
    max_steps: int
    req_ids: tuple[int, ...]                # the decodes, in plan order
    context_sums: np.ndarray                # per step: sum of contexts after the step
    shared: tuple[tuple[int, int], ...]     # (decoding members, prefix length) per shared group
    shared_tokens: int                      # prefix tokens read through the shared-prefix kernel
    kv_blocks_used: np.ndarray              # per step: blocks in use after its allocations
    # (first step needing a new block, 1-based; the members it is first for), from the cohort's
    # due buckets: members of a bucket need one every block_size steps from there
    first_block_steps: tuple[tuple[int, tuple[RequestState, ...]], ...]

    @property
    def batch(self) -> int:
        return len(self.req_ids)


def _admission_blocked(scheduler: "Scheduler", batch: int) -> bool:
    if scheduler._ungrouped or scheduler.waiting.stale:  # the next step groups or ranks new arrivals
        return False  # first, whatever blocks admission: when it does changes the order (blend's)
    head = scheduler.waiting.peek()
    if head is None:
        return True
    cfg = scheduler.config
    if cfg.max_num_seqs is not None and batch >= cfg.max_num_seqs:
        return True
    tokens_left = cfg.max_num_batched_tokens - (batch if cfg.mixed_batches else 0)  # (apart: a step of prompts)
    if tokens_left <= 0:
        return True
    if scheduler.reserve is not None:
        return False  # the room kept for the answers shrinks as they decode (reserve.py): the head may fit
    if cfg.order == "lpm":
        return False  # the head may change as evictions change cache matches
    state = head.prefix if hasattr(head, "prefix") else head
    if scheduler.shared_host and _loads_from_the_tier(scheduler, state):
        return False  # other engines' writes may evict those blocks meanwhile: it then needs fewer
    return admission(scheduler, state, tokens_left) is None


def _loads_from_the_tier(scheduler: "Scheduler", state) -> bool:
    """Whether admitting ``state`` now would load blocks from the host tier (admission.py)."""
    if state.group is not None and state.request is not None:
        return False  # a member reads its group's prefix
    keys = scheduler._keys(state)
    limit = hit_limit(scheduler, state, keys)
    return scheduler.host.count(keys, lru_hits(scheduler, keys, limit)[0], limit) > 0


def _safe_allocations(scheduler: "Scheduler") -> int | None:
    """How many blocks decode steps may take before one could evict a block the queue's head
    would hit (or its hit's sets), with a hybrid model's pages in the prefix cache
    (window_pages.py); None: any number. Without those pages a head that loses hits only needs
    more (module doc). With them, a hit is cut back to where its last blocks' sets are cached:
    losing one block can cut it to nothing, and the head, computing from its start, may then
    take fewer blocks than it would have with the hit and its sets."""
    pages, head = scheduler.pages, scheduler.waiting.peek()
    if pages is None or head is None:
        return None
    state = head.prefix if hasattr(head, "prefix") else head
    group = state.group
    if group is not None and group.prefix_done and state.request is not None:
        return None  # a member reads its group's prefix, held for it (admission.py)
    kv = scheduler.kv
    keys = scheduler._keys(state)
    hits = kv.lookup(keys, hit_limit(scheduler, state, keys))
    if not hits:
        return None
    at_risk = pages.free_blocks(keys[:len(hits)])
    at_risk.update(block for block in hits if kv.ref_count(block) == 0)
    if not at_risk:
        return None
    plain = kv.num_free_blocks - kv.num_cached_free_blocks  # taken before any cached block is evicted
    for position, block in enumerate(kv.cached_free_blocks()):  # the eviction order
        if block in at_risk:
            return plain + position
    raise AssertionError("a free cached block is not in the LRU queue")


def find_decode_stretch(scheduler: "Scheduler", max_steps: int) -> DecodeStretch | None:
    # every running request must be a cohort member (steady decode); joining changes nothing
    if not scheduler.lazy_decodes or not scheduler._join_decodes() or scheduler._others:
        return None
    if scheduler._stored_blocks:  # the next plan copies blocks to the host tier (write-through), at a cost
        return None
    cohort = scheduler.cohort
    batch = len(cohort)
    if not batch or batch > scheduler.config.max_num_batched_tokens:
        return None
    step = scheduler.step
    limit = min(max_steps, min(cohort.ends) - step + 1)
    if limit < 2:  # a member finishes in this step's update, or the caller looks no further
        return None
    if not _admission_blocked(scheduler, batch):
        return None
    size = scheduler.block_size
    # the cohort buckets its members by the step whose decode needs their next block: a few
    # buckets (at most block_size), not one entry per member
    buckets = tuple((due - step + 1, tuple(members)) for due, members in cohort.due.items())
    first = np.array([f for f, _ in buckets], dtype=np.int64)
    counts = np.array([len(m) for _, m in buckets], dtype=np.int64)
    steps = np.arange(1, limit + 1, dtype=np.int64)
    allocated = (np.maximum((steps[:, None] - first[None, :]) // size + 1, 0) * counts[None, :]).sum(axis=1)
    room = scheduler.kv.num_free_blocks
    safe = _safe_allocations(scheduler)
    if safe is not None:
        room = min(room, safe)
    fits = int(np.searchsorted(allocated, room, side="right"))
    if fits < 2:
        return None
    steps, allocated = steps[:fits], allocated[:fits]
    groups = scheduler._cohort_shared_prefix_groups()  # (none where neither kind of shared attention is on)
    shared = tuple((len(g.req_ids), g.prefix_len) for g in groups)
    shared_tokens = sum(m * p for m, p in shared)
    base = cohort.offset_sum + batch * step
    return DecodeStretch(fits, tuple(cohort.ids), base + steps * batch, shared,
                         shared_tokens, scheduler.kv.num_used_blocks + allocated, buckets)


def apply_decode_stretch(scheduler: "Scheduler", stretch: DecodeStretch, num_steps: int, end_times) -> None:
    if not 1 <= num_steps <= stretch.max_steps:
        raise ValueError(f"num_steps {num_steps} outside 1..{stretch.max_steps}")
    cohort = scheduler.cohort
    states = cohort.states
    if tuple(cohort.ids) != stretch.req_ids or scheduler._others:
        raise AssertionError("decode stretch applied after the running requests changed")
    size = scheduler.block_size
    # the new blocks, in the order step-by-step scheduling would have taken them: by step, then
    # admission order (the cohort's order)
    events = []
    for first, members in stretch.first_block_steps:
        for state in members:
            events.extend((step, state.admit_seq, state) for step in range(first, num_steps + 1, size))
    events.sort(key=lambda event: (event[0], event[1]))
    kv = scheduler.kv
    blocks = kv.allocate(len(events))
    if blocks is None:
        raise AssertionError("decode stretch ran out of KV blocks it had counted as free")
    for (_, _, state), block in zip(events, blocks):
        state.block_table.append(block)
    last = scheduler.step + num_steps - 1
    scheduler.stats.computed_tokens += num_steps * len(states)
    if scheduler.reserve is not None:
        scheduler.reserve.after_step(scheduler, False, (), True, num_steps)
    scheduler.step += num_steps  # the members' counters follow lazily
    if events:
        cohort.rebucket_due()
    finished = []
    end = float(end_times[num_steps - 1])
    for state in cohort.take_ends(last):
        scheduler._finish(state, end)
        finished.append(state.req_id)
    scheduler._finished_last_update = tuple(finished)
