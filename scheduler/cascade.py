"""vLLM's cascade attention (``ScheduleConfig.cascade_attention``): where every running request
holds the same first blocks, a step reads them once for all its queries.

vLLM V1 (PR #11635; off by default since PR #36318, ``--no-disable-cascade-attn`` turns it on)
counts the blocks of its first running request that every running request holds (a block's
reference count equal to the number running: ``get_num_common_prefix_blocks``), caps that prefix
at the fewest tokens a scheduled request has computed (a prompt chunk without a cache hit leaves
none), and uses it where it is at least 256 tokens and at least 8 requests are scheduled, never
with sliding windows (``use_cascade_attention``). Here the step's decodes then read it through
the shared-prefix kernel as one group, as the grouped schedules' members read their prefix (the
engine's Triton backend runs that kernel; the cost model charges the prefix once); a step's
prompt chunks read it as they would, where vLLM's cascade takes their queries too. vLLM's last
test, between cascade and FlashDecoding by a count of thread blocks a GPU runs at once (which
turns cascade down for a few requests with grouped-query heads), is not made.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .contract import new_shared_prefix_group

if TYPE_CHECKING:
    from .contract import ScheduledChunk, SharedPrefixGroup
    from .scheduler import Scheduler

MIN_PREFIX_TOKENS = 256  # vLLM's thresholds
MIN_REQUESTS = 8


def cascade_groups(scheduler: "Scheduler", chunks: "list[ScheduledChunk]" = (),
                   cohort=None) -> "tuple[SharedPrefixGroup, ...]":
    """The step's one shared-prefix group under cascade attention (its decodes: the cohort's,
    then those among ``chunks``), or none. ``cohort``: the decoding one, where not the scheduler's."""
    running = scheduler.running
    cohort = scheduler.cohort if cohort is None else cohort
    if (not scheduler.config.cascade_attention or scheduler.window_blocks or not running
            or len(chunks) + len(cohort.ids) < MIN_REQUESTS):
        return ()
    size = scheduler.block_size
    limit = min((chunk.start for chunk in chunks), default=None)
    first = next(iter(running.values())).block_table
    blocks = len(first) if limit is None else min(len(first), limit // size)
    if blocks * size < MIN_PREFIX_TOKENS:
        return ()
    count, ref_count = len(running), scheduler.kv.ref_count
    blocks = next((i for i, block in enumerate(first[:blocks]) if ref_count(block) != count), blocks)
    decoding = [chunk.req_id for chunk in chunks if chunk.num_tokens == 1 and chunk.start >= chunk.prompt_len]
    if blocks * size < MIN_PREFIX_TOKENS or len(cohort.ids) + len(decoding) < 2:
        return ()
    req_ids = tuple(cohort.ids) + tuple(decoding)
    ids = tuple(first[:blocks]) if scheduler.emit_block_ids else ()
    return (new_shared_prefix_group(blocks * size, ids, req_ids, len(req_ids)),)
