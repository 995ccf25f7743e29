"""Admission from the waiting queue: what admitting a request (or a group's prefix) would take
(cache hits or the group's held prefix, the first chunk, new blocks), and admitting while the
token budget, the request count and the KV cache allow. Functions of the ``Scheduler``, split
out of scheduler.py.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .contract import ScheduledChunk, new_chunk
from .errors import WorkloadError
from .group_state import GroupState
from .host_tier import as_ints
from .request import RequestState

if TYPE_CHECKING:
    from .request import Request
    from .scheduler import Scheduler


def check_fits(scheduler: "Scheduler", request: "Request") -> None:
    """A WorkloadError where ``request`` needs more KV blocks than the whole cache holds (with
    the blocks it holds for its sliding window, or linear layers' state, while it runs)."""
    tokens = request.prompt_len + request.output_len - 1
    kv = scheduler.kv
    window = window_blocks_of(scheduler, tokens)
    if tokens > scheduler._capacity_tokens or window and kv.blocks_for(tokens) + window > kv.num_blocks:
        held = (f", {window} of which it would hold for its sliding layers' window or linear layers' state"
                if window else "")
        raise WorkloadError(
            f"request {request.req_id}: needs {kv.blocks_for(tokens)} KV blocks ({request.prompt_len} prompt + "
            f"{request.output_len} output tokens, block size {scheduler.block_size}) but the KV cache holds only "
            f"{kv.num_blocks} blocks{held}")
    config = scheduler.config
    if not config.enable_chunked_prefill and request.prompt_len > config.max_num_batched_tokens:
        # (vLLM refuses such a configuration outright: max_num_batched_tokens >= max_model_len)
        raise WorkloadError(
            f"request {request.req_id}: its prompt of {request.prompt_len} tokens goes into one step without "
            f"chunked prefill, and schedule {config.name!r} takes at most {config.max_num_batched_tokens} tokens a "
            f"step: set enable_chunked_prefill=true or max_num_batched_tokens >= {request.prompt_len}")


def window_blocks_of(scheduler: "Scheduler", tokens: int, shared: int = 0) -> int:
    """Blocks a request that will hold ``tokens`` tokens keeps for its sliding layers' window
    while it runs: the scheduler's ``window_blocks``, or as many as its tokens fill if fewer.
    ``shared``: its first blocks, which running requests hold too (a group's prefix, a prefix
    hit in use): their window blocks are theirs already, as vLLM shares a prefix's blocks in
    every group; only the rest of its window is its own. (A linear-attention model's state, one
    block a group, is its own whatever it shares: the blocks it has past the shared ones always
    fill at least one, as a prefix hit stops a token short of the prompt.)"""
    window = scheduler.window_blocks
    if not window:
        return 0
    filled = scheduler.kv.blocks_for(max(tokens, 1)) - shared
    if filled <= 0:
        return 0
    return min(window, filled) if isinstance(window, int) else window.held(filled)


def final_blocks(scheduler: "Scheduler", state: RequestState) -> int:
    """The blocks ``state``'s tokens fill at its end (its last token is never fed back)."""
    return scheduler.kv.blocks_for(max(state.num_tokens + state.output_len - state.num_output_tokens - 1, 1))


def admit(scheduler: "Scheduler", now: float, tokens_left: int, chunks: list[ScheduledChunk]) -> int:
    """Admits from the head of the waiting queue while the budget, the request count and the KV
    cache allow; appends each admission's first chunk; returns the tokens left."""
    max_seqs = scheduler.config.max_num_seqs
    waiting = scheduler.waiting
    while tokens_left > 0:
        unit = waiting.peek()
        if unit is None or (max_seqs is not None and len(scheduler.running) >= max_seqs):
            break
        state = unit.prefix if isinstance(unit, GroupState) else unit
        count = try_admit(scheduler, state, now, tokens_left)
        if not count:
            break
        waiting.pop()
        if isinstance(unit, GroupState):  # (started while its prefix's blocks load, too: its
            unit.started = True           # members find it among the active groups once it is done)
            scheduler._active_groups[unit.group_id] = unit
        if count < 0:  # its blocks are loading from the host tier: it computes once they are in
            continue
        chunks.append(_chunk(scheduler, state, count))
        tokens_left -= count
    return tokens_left


def _chunk(scheduler: "Scheduler", state: RequestState, count: int) -> ScheduledChunk:
    start = state.num_computed_tokens
    samples = start + count == state.num_tokens and state.request is not None
    blocks = tuple(state.block_table) if scheduler.emit_block_ids else ()
    return new_chunk(state.req_id, start, count, blocks, samples, state.prompt_len)


def beyond_prefix(scheduler: "Scheduler", state: RequestState, group) -> bool:
    """Whether the LRU cache holds more of a group member's prompt than its group's prefix (its
    siblings' blocks past it: completions of one prompt, deeper sharing), the prefix's blocks
    first, as the group holds them."""
    keys = scheduler._keys(state)
    held = len(group.holder_blocks)
    return hit_limit(scheduler, state, keys) > held and scheduler.kv.match_count(keys, held + 1)[0] == held + 1


def hit_limit(scheduler: "Scheduler", state: RequestState, keys) -> int:
    """The most of ``state``'s blocks (``keys``) a cache hit covers: it stops a token short of
    the prompt, whose last token the request computes to sample."""
    return min(len(keys), (state.num_tokens - 1) // scheduler.block_size)


def lru_hits(scheduler: "Scheduler", keys, limit: int) -> tuple[int, int, int]:
    """(hits, how many of them are free, free blocks of their pages): the LRU cache's blocks of
    ``keys`` up to ``limit``, cut back to where a hybrid model's pages of the last ones are
    cached (window_pages.py)."""
    kv = scheduler.kv
    num_hits, free_hits = kv.match_count(keys, limit)
    free_pages = 0
    if scheduler.pages is not None and num_hits:  # with its last blocks' sliding or state pages
        cut, free_pages = scheduler.pages.hit(keys, num_hits)
        if cut < num_hits:
            num_hits, free_hits = kv.match_count(keys, cut)
    return num_hits, free_hits, free_pages


def admission(scheduler: "Scheduler", state: RequestState, tokens_left: int):
    """What admitting ``state`` now would take: (hits, tokens already there, first chunk,
    new blocks, blocks loaded from the host tier, blocks for its sliding window), or None when
    it does not fit. Changes
    nothing. ``hits`` is None where they are cache hits, counted but not listed (a blocked head
    is asked every step, and its hundreds of hits are listed only when ``try_admit`` admits
    it). Tokens already there are the hits' and the loaded blocks'; the loaded blocks take new
    blocks like computed ones."""
    kv = scheduler.kv
    size = scheduler.block_size
    num_tokens = state.num_tokens
    group = state.group
    loaded = 0
    member = group is not None and group.prefix_done and state.request is not None
    if member and not (scheduler.members_cache and beyond_prefix(scheduler, state, group)):
        hits = group.holder_blocks[:]  # a member reads its group's prefix, held for it
        num_hits = len(hits)
        free_hits = kv.num_free_among(hits)
    elif kv.caching != "off":  # (a member whose siblings left blocks past the prefix: those too)
        keys = scheduler._keys(state)
        hits = None
        limit = hit_limit(scheduler, state, keys)
        num_hits, free_hits, free_pages = lru_hits(scheduler, keys, limit)
        host = scheduler.host
        if host is not None and num_hits < limit and (group is None or state.request is None):
            loaded = host.count(keys, num_hits, limit, scheduler._fresh_host)
    else:
        hits, num_hits, free_hits = [], 0, 0
    computed = (num_hits + loaded) * size
    count = num_tokens - computed
    if not scheduler.config.enable_chunked_prefill and count > tokens_left:
        return None
    count = min(count, tokens_left)
    need = kv.blocks_for(computed + count) - num_hits
    free_after = kv.num_free_blocks - free_hits
    if hits is None and scheduler.pages is not None:  # the pages of its hit's last blocks taken with it
        window = scheduler.pages.cost(final_blocks(scheduler, state), num_hits, free_pages)
    else:
        window = window_blocks_of(scheduler, num_tokens + state.output_len - state.num_output_tokens - 1,
                                  num_hits - free_hits)
    if need + window > free_after:  # its sliding layers' window taken too
        return None
    threshold = scheduler._kv_threshold_blocks
    if threshold is not None and scheduler.running and kv.num_blocks - free_after + need + window > threshold:
        return None
    reserve = scheduler.reserve  # SGLang's: room for the running requests' answers and its own
    if reserve is not None and scheduler.running and need + window + reserve.blocks(
            scheduler, state, (num_hits + need) * size) > free_after:
        return None
    return hits, computed, count, need, loaded, window


def try_admit(scheduler: "Scheduler", state: RequestState, now: float, tokens_left: int) -> int:
    """Admits ``state`` with what is already there; returns its first chunk size, or 0."""
    needs = admission(scheduler, state, tokens_left)
    if needs is None:
        return 0
    hits, computed, count, need, loaded, window = needs
    pages = None
    if hits is None:  # the cache hits counted, listed now (nothing changed since)
        keys = scheduler._keys(state)
        hits = scheduler.kv.lookup(keys, computed // scheduler.block_size - loaded)
        pages = scheduler.pages
    waits = loaded and scheduler.config.host_load_async  # blocks for the loads only, for now
    scheduler.kv.touch(hits)
    if pages is not None:  # it holds its hit's last pages, and reserves the rest of its window
        window = pages.hold(state, keys, len(hits), final_blocks(scheduler, state))
    state.block_table = hits + scheduler.kv.allocate(loaded if waits else need)
    if window:
        state.window_blocks = scheduler.kv.allocate(window)
    if loaded:  # their KV comes back from host memory into the first new blocks
        keys = as_ints(scheduler._keys(state)[len(hits):len(hits) + loaded])
        remote = scheduler.host.load(keys, scheduler.replica)
        scheduler._loaded_blocks += loaded
        scheduler._remote_blocks += remote
        scheduler.stats.host_loaded_blocks += loaded
        scheduler.stats.host_remote_blocks += remote
        if scheduler._transfers:
            scheduler._host_loads.extend(zip(state.block_table[len(hits):len(hits) + loaded], keys))
    state.num_computed_tokens = computed
    state.num_registered_blocks = len(hits)
    if state.first_scheduled_s is None:
        state.first_scheduled_s = now
        state.num_cached_tokens = computed
        state.first_admission = scheduler.stats.first_admissions  # the order a batch could be sent in
        scheduler.stats.first_admissions += 1
    if waits:  # registered, and running, once the executor reports the blocks in (loads_done)
        size = scheduler.block_size
        scheduler._loading[state.req_id] = state
        scheduler._load_starts.append((state.req_id, loaded * size, remote * size))
        return -1
    scheduler._register(state, computed + count)
    start_running(scheduler, state)
    return count


def start_running(scheduler: "Scheduler", state: RequestState) -> None:
    """``state`` runs from now on, the most recently admitted."""
    scheduler._admit_counter += 1
    state.admit_seq = scheduler._admit_counter
    scheduler.running[state.req_id] = state
    scheduler._others[state.req_id] = state


def loads_done(scheduler: "Scheduler", req_ids) -> None:
    """These requests' blocks are in from the host tier: registered in the GPU cache now, as
    they are there whether or not a step's blocks are cached only after it (``cache_in_step``;
    held by the tier already: nothing written through), and running from the next step."""
    for req_id in req_ids:
        state = scheduler._loading.pop(req_id)
        scheduler._register(state, state.num_computed_tokens, at_once=True)
        start_running(scheduler, state)


def cached_tokens_of(scheduler: "Scheduler", unit) -> int:
    """The prompt's tokens in the GPU cache, then in the host tier (as SGLang's HiCache matches)."""
    state = unit.prefix if isinstance(unit, GroupState) else unit
    keys = scheduler._keys(state)
    hits = len(scheduler.kv.lookup(keys, len(keys)))
    if scheduler.pages is not None:
        hits = scheduler.pages.hits(keys, hits)
    if scheduler.host is not None:
        hits += scheduler.host.count(keys, hits, len(keys))
    return hits * scheduler.block_size
