"""vLLM's prefix cache for linear-attention models (Qwen3-Next, Qwen3.5): state snapshots.

A prefix hit on such a model needs, besides the full layers' KV blocks, the linear layers'
state after the hit's last block. vLLM keeps one for every block boundary a request computes
through: a page of state in each linear group (``ModelSpec.kv_groups``), in the same pool as
the KV pages, freed as soon as the request has moved on (so evictable, least recently used
first) and found by the block's hash. Its hit is the longest run of cached KV blocks cut back
to the last boundary whose snapshot is still cached (``MambaManager.find_longest_cache_hit``
searches right to left). vLLM PR #45845 reports the snapshots taking most of the pool at small
blocks: they compete with the KV for the cache.

Here a snapshot is ``blocks`` blocks of the block manager (``StateBlocks.held(1)``: one page in
each linear group, counted in blocks of the full groups' pages), registered under identities of
their own, ``blocks`` of them per KV block identity, and released at once. Their identities
are interned by the scheduler's ``ChainIndex`` as one-block prompts of reserved segment ids, so
they are dense and shared by every engine that shares the index.
"""
from __future__ import annotations

SNAPSHOT_SEGMENTS = 1 << 61  # segment ids from here up name snapshots, never prompt tokens


class StateSnapshots:
    def __init__(self, kv, chains, blocks: int) -> None:
        self.kv = kv
        self.chains = chains
        self.blocks = blocks
        self._keys: dict[int, tuple[int, ...]] = {}
        self.num_kept = 0     # snapshots left in the cache
        self.num_skipped = 0  # boundaries left without one: no block free even by eviction

    def keys(self, key: int) -> tuple[int, ...]:
        """The identities of the snapshot after the KV block ``key``."""
        keys = self._keys.get(key)
        if keys is None:
            size, first = self.chains.block_size, SNAPSHOT_SEGMENTS + key * self.blocks
            keys = self._keys[key] = tuple(int(self.chains.full_block_keys(((first + g, size),))[0])
                                           for g in range(self.blocks))
        return keys

    def keep(self, keys, begin: int, end: int) -> None:
        """Snapshots after the KV blocks ``keys[begin:end]``, just computed: new blocks, findable
        by their identities, released to the LRU queue (oldest evicted first)."""
        kv = self.kv
        for i in range(begin, end):
            snapshot = self.keys(int(keys[i]))
            if self._cached(snapshot):
                continue  # kept already (another request computed the same prefix)
            blocks = kv.allocate(self.blocks)
            if blocks is None:
                self.num_skipped += 1
                continue
            kv.register_run(blocks, snapshot, 0, self.blocks)
            kv.release(blocks)
            self.num_kept += 1

    def hits(self, keys, num_hits: int) -> int:
        """``num_hits`` cached KV blocks cut back to the last whose snapshot is cached (0 where none)."""
        while num_hits and not self._cached(self.keys(int(keys[num_hits - 1]))):
            num_hits -= 1
        return num_hits

    def _cached(self, snapshot: tuple[int, ...]) -> bool:
        return self.kv.match_count(snapshot, len(snapshot))[0] == len(snapshot)

    def use(self, keys, num_hits: int) -> None:
        """A request starts from the snapshot after its ``num_hits``-th block: it becomes the most
        recently used."""
        if num_hits:
            blocks = self.kv.lookup(self.keys(int(keys[num_hits - 1])), self.blocks)
            self.kv.touch(blocks)
            self.kv.release(blocks)
