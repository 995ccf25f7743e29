"""vLLM's prefix cache for hybrid models: the pages a sliding-window or linear-attention group
keeps of each block, and what a prefix hit needs of them.

vLLM's hybrid KV cache (``ModelSpec.kv_groups``) gives every group of layers a page per block of
tokens, all from one pool. A full-attention group keeps every page a request computes. A
sliding-window group keeps only the pages its window still reaches, freeing older ones as the
window moves on (``SlidingWindowManager.remove_skipped_blocks``); a linear-attention group (Gated
DeltaNet, Mamba), caching every block boundary, keeps only the page holding the state after its
last one (``MambaManager``). A freed page stays cached, found by its block's hash, until evicted
(least recently used first). So a prefix hit needs, besides the full groups' pages of every
block it covers, the other groups' pages of its last ``need`` blocks: ceil((W - 1) / block
size) for a window of W tokens (``SlidingWindowManager.find_longest_cache_hit``), the last one
for a state; vLLM searches right to left for the longest hit that has them, and a hit from a
prompt's first block needs only what lies before it. vLLM PR #45845 reports linear models'
state pages taking most of the pool at small blocks: they compete with the KV for the cache.

Here a block's pages in those groups are a set of ``size`` blocks of the block manager
(``WindowBlocks.held(1)``: a page in each sliding or linear group, counted in blocks of the full
groups' pages) with identities of their own, interned by the scheduler's ``ChainIndex`` (runs of
a reserved segment's: dense, shared by every engine that shares the index). A running request
holds the sets of its last full blocks its window reaches (``per_group - 1``; none for a state)
and one for the block it is in, no more than its window (``WindowBlocks.held``): those of its
hit's last blocks (with whoever else holds them), and a reserve taken at admission for the rest.
Each block it computes leaves a set, registered; the sets its window has left are released, so
freed (where no one else holds them) and cached, the last of them first as vLLM frees them; a
chunk longer than the window leaves the sets it passes cached at once, as does every boundary of
a state. Under vLLM's retention interval (its default from 0.29) sets are registered only
where a hit can start from them (``_retained``); the others are freed plain. Leaving, a request
releases what it holds before its KV blocks (a model's first layer is a sliding or linear one,
and vLLM frees group by group), so they are evicted first.
"""
from __future__ import annotations

import numpy as np

from .errors import ConfigError
from .model_spec import WindowBlocks

WINDOW_SEGMENTS = 1 << 61  # segment ids from here up name these pages, never prompt tokens


def window_pages(kv, chains, window, config) -> "WindowPages | None":
    """The pages of ``window`` (``ModelSpec.window_blocks``: a ``WindowBlocks`` for a hybrid
    model, else a count or 0) in the LRU prefix cache of a schedule ``config``; None where there
    are none to cache."""
    if not isinstance(window, WindowBlocks) or config.caching != "lru":
        return None
    return WindowPages(kv, chains, window, config.retention_interval)


class WindowPages:
    def __init__(self, kv, chains, window, retention: int | None = None) -> None:
        """``window``: the model's ``WindowBlocks`` (or ``StateBlocks``). ``retention``: vLLM's
        retention interval in tokens (``ScheduleConfig.retention_interval``): None caches every
        set; 0 only the ``need`` sets before a boundary a hit can start from (the prompt's end,
        where a resend or an extension of it resumes, and a shared-prefix junction: where a hit
        on the full layers' blocks went further than on these pages); N also those before each
        N tokens' end (``SlidingWindowManager``'s and ``MambaManager``'s
        ``reachable_block_mask``)."""
        self.kv = kv
        self.chains = chains
        self.window = window
        self.size = window.held(1)       # blocks a set takes
        self.need = window.need          # sets of a hit's last blocks it needs
        self.reads_hit = window.per_group <= window.need  # a state: the hit's snapshot is read, not held
        self.sparse = retention is not None
        if self.sparse and retention % chains.block_size:
            raise ConfigError(f"schedule retention_interval {retention} is not a multiple of the block size "
                              f"({chains.block_size} tokens): vLLM keeps a tail every so many whole blocks")
        self.segment = (retention or 0) // chains.block_size  # blocks; 0: none
        self._bounds: dict[int, list[int]] = {}  # request -> block boundaries a hit can start from
        self._cap: dict[int, int] = {}   # request -> the sets it holds at most
        self._first = np.full(1024, -1, dtype=np.int32)  # KV block identity -> its set's first identity
        self._offsets = np.arange(self.size, dtype=np.int64)
        self._held: dict[int, list[int]] = {}  # request -> its sets' blocks, oldest set first
        self._runs = 0  # identity runs taken from the chain index

    def keys(self, kv_keys) -> np.ndarray:
        """The identities of the sets of the KV blocks ``kv_keys``, set after set (int64)."""
        kv_keys = np.asarray(kv_keys, dtype=np.int64)
        if not len(kv_keys):
            return kv_keys
        top = int(kv_keys.max()) + 1
        if top > len(self._first):
            grown = np.full(max(top, 2 * len(self._first)), -1, dtype=np.int32)
            grown[:len(self._first)] = self._first
            self._first = grown
        firsts = self._first[kv_keys]
        if (firsts < 0).any():  # new ones: a run of identities from a one-segment prompt of theirs
            new = np.unique(kv_keys[firsts < 0])
            size = self.size
            segment = ((WINDOW_SEGMENTS + self._runs, len(new) * size * self.chains.block_size),)
            self._runs += 1
            ids = self.chains.full_block_keys(segment)
            assert len(ids) == len(new) * size and ids[-1] - ids[0] == len(ids) - 1, "a segment's identities are a run"
            if ids[-1] >= 2 ** 31:
                raise OverflowError("more than 2**31 block identities")
            self._first[new] = ids[0] + size * np.arange(len(new), dtype=np.int64)
            firsts = self._first[kv_keys]
        return (firsts.astype(np.int64)[:, None] + self._offsets).ravel()

    def hit(self, keys, num_hits: int) -> tuple[int, int]:
        """The longest hit of at most ``num_hits`` cached KV blocks whose last ``need`` blocks
        (all of them, where fewer) have their sets cached; and how many blocks of those sets
        are free (taking the hit takes them). vLLM searches right to left; here a window with a
        set missing moves to end where that set would have been, which finds the same hit."""
        size, need, kv = self.size, self.need, self.kv
        end = num_hits
        while end > 0:
            begin = max(0, end - need)
            pages = self.keys(keys[begin:end])
            count, free = kv.match_count(pages, len(pages))
            if count == len(pages):
                return end, free
            end = begin + count // size
        return 0, 0

    def free_blocks(self, keys) -> set[int]:
        """The free (cached, evictable) blocks of the sets of the KV blocks ``keys`` that are
        cached, each set up to its first missing block (``hit`` counts no further). Interns no
        identities: a KV block with none yet has no set cached."""
        kv_keys = np.asarray(keys, dtype=np.int64)
        firsts = self._first[kv_keys[kv_keys < len(self._first)]]
        free = set()
        for first in firsts[firsts >= 0].tolist():
            free.update(block for block in self.kv.lookup(first + self._offsets, self.size)
                        if self.kv.ref_count(block) == 0)
        return free

    def hits(self, keys, num_hits: int) -> int:
        return self.hit(keys, num_hits)[0]

    def cost(self, filled: int, num_hits: int, free: int) -> int:
        """Blocks admitting a request whose tokens will fill ``filled`` blocks, with a hit of
        ``num_hits`` blocks (``free`` of its sets' blocks free), takes for its window: the
        hit's free sets, and a reserve for the sets of the blocks it will compute itself; no
        more than its whole window (``WindowBlocks.held``), which it never holds more of."""
        if self.reads_hit:
            free = 0
        return min(self.window.held(filled), free + self.window.held(filled - num_hits))

    def hold(self, state, keys, num_hits: int, filled: int) -> int:
        """``state`` is admitted with ``num_hits`` hits: it holds its hit's last sets its window
        reaches (before anything is allocated for it, which could evict them), and those it
        only reads (a state's snapshot) become the most recently used; returns the blocks it
        reserves for the rest of its window."""
        begin, kv, size = max(0, num_hits - self.need), self.kv, self.size
        cap = self._cap[state.req_id] = max(1, self.window.held(filled) // size)  # sets its window holds
        pages = kv.lookup(self.keys(keys[begin:num_hits]), (num_hits - begin) * size)
        read = max(0, len(pages) // size - (cap - 1)) * size
        free = kv.num_free_among(pages[read:])
        kv.touch(pages)
        if read:
            kv.release(pages[:read])
            pages = pages[read:]
        self._held[state.req_id] = pages
        if self.sparse:
            bounds = self._prompt_bounds(state)
            full = kv.match_count(keys, min(len(keys), (state.num_tokens - 1) // self.chains.block_size))[0]
            if full > num_hits:  # vLLM's shared_prefix_boundary: its full layers' hit went further
                bounds.append(full)
            self._bounds[state.req_id] = bounds
        return self.cost(filled, num_hits, free) - free

    def _prompt_bounds(self, state) -> list[int]:
        """The blocks where a resend (a token short of the prompt) or an extension of ``state``'s
        prompt resumes."""
        size, prompt = self.chains.block_size, state.prompt_len
        return [(prompt - 1) // size, prompt // size]

    def _retained(self, state, begin: int, end: int) -> np.ndarray | None:
        """Which of the blocks ``begin..end`` keep their sets cached (None: all): those among
        the ``need`` before a boundary of ``state``'s (and before ``end`` where these are the
        blocks of its answer, which a next turn extends), and the last ``need`` of a segment."""
        if not self.sparse:
            return None
        bounds = self._bounds.get(state.req_id) or self._prompt_bounds(state)
        if end * self.chains.block_size > state.prompt_len:
            bounds = [*bounds, end]
        blocks = np.arange(begin, end)
        edges = np.asarray(bounds)
        keep = ((blocks[:, None] >= edges - self.need) & (blocks[:, None] < edges)).any(axis=1)
        if self.segment:
            keep |= blocks % self.segment >= self.segment - self.need
        return keep

    def keep(self, state, keys, begin: int, end: int) -> None:
        """``state`` has computed the KV blocks ``keys[begin:end]``: each leaves a set, registered
        where its identities name no block yet. It holds those of its last blocks its window
        still reaches (none for a state: each boundary's snapshot is left at once), besides the
        set of the block it is in (its reserve's last); those its window has left go (freed if
        no one else holds them; cached), the oldest first, and a chunk longer than the window
        leaves its first sets cached as it goes. Its blocks are never more than its window's."""
        count = end - begin
        if count <= 0:
            return
        kv, size, reserve, req_id = self.kv, self.size, state.window_blocks, state.req_id
        held = self._held.setdefault(req_id, [])
        cap = self._cap.setdefault(req_id, max(1, (len(held) + len(reserve)) // size)) - 1  # full blocks' sets
        out = min(len(held) // size, max(0, len(held) // size + count - cap)) * size
        if out:
            kv.release(held[:out])
            del held[:out]
        ids = self._ids(keys, begin, end, self._retained(state, begin, end))
        passed = max(0, count - cap) * size  # sets its window has passed by the chunk's end
        if passed:  # computed, left at once: those retained and not cached already
            new = [ids[i:i + size] for i in range(0, passed, size)
                   if ids[i] >= 0 and kv.match_count(ids[i:i + size], size)[0] < size]
            if new:
                new = np.concatenate(new)
                pages = self._allocate(len(new))
                kv.register_run(pages, new, 0, len(pages))
                kv.release(pages)
        kept = count * size - passed
        taken = min(kept, max(0, len(reserve) - size) // size * size)  # the reserve's last set stays
        pages = reserve[len(reserve) - taken:]
        del reserve[len(reserve) - taken:]
        if taken < kept:
            pages += self._allocate(kept - taken)
        mine = ids[passed:passed + len(pages)]
        if len(mine) and mine.min() >= 0:
            kv.register_run(pages, mine, 0, len(pages))
        elif len(mine):  # those not retained are its own while it holds them, and freed plain
            chosen = mine >= 0
            kv.register_run(np.asarray(pages)[chosen].tolist(), mine[chosen], 0, int(chosen.sum()))
        held += pages
        if len(reserve) < size:  # the set of the block it is in (where it took the hit's: now its own)
            reserve += self._allocate(size - len(reserve))

    def _ids(self, keys, begin: int, end: int, retained) -> np.ndarray:
        """The identities of the sets of the KV blocks ``keys[begin:end]``, set after set; -1 for
        those not ``retained`` (None: all are), which are never looked up."""
        if retained is None:
            return self.keys(keys[begin:end])
        ids = np.full((end - begin, self.size), -1, dtype=np.int64)
        chosen = np.flatnonzero(retained)
        if len(chosen):
            ids[chosen] = self.keys(np.asarray(keys[begin:end])[chosen]).reshape(-1, self.size)
        return ids.ravel()

    def _allocate(self, blocks: int) -> list[int]:
        """``blocks`` new blocks, or as many whole sets of them as can be had (where the sets a
        request let go are others' too, or all the cache is in use): the rest go without."""
        pages = self.kv.allocate(blocks)
        if pages is None:
            pages = []
            while len(pages) < blocks and (got := self.kv.allocate(self.size)) is not None:
                pages += got
        return pages

    def held_blocks(self, req_id: int) -> int:
        """Blocks of the sets a running request holds (besides its reserve)."""
        return len(self._held.get(req_id, ()))

    def leave(self, state) -> None:
        """``state`` stops running: its sets go, the last block's first (then its reserve)."""
        held = self._held.pop(state.req_id, None)
        self._cap.pop(state.req_id, None)
        self._bounds.pop(state.req_id, None)
        if held:
            self.kv.release(held)
