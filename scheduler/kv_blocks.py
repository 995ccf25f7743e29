"""KV block manager: fixed-size blocks, reference counts and prefix caching by identity.

Caching modes:
- ``lru``: vLLM automatic prefix caching. A freed block keeps its identity in an LRU free
  queue until it is reused; a request's blocks are queued tail first, so its tail is evicted
  before its head. One deviation from vLLM: a free block that never held a cached identity is
  handed out before any cached block is evicted (vLLM pops the queue head regardless).
- ``off``: blocks are never found by identity. Prefix-grouped schedules use this: a group's
  members share the prefix blocks their group holds, so sharing never depends on what LRU kept.
"""
from __future__ import annotations

from collections import deque

from .errors import ConfigError

CACHING_MODES = ("lru", "off")


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int = 16, caching: str = "lru") -> None:
        if not isinstance(num_blocks, int) or num_blocks <= 0:
            raise ConfigError(f"KV capacity is {num_blocks!r} blocks; expected a positive integer")
        if not isinstance(block_size, int) or block_size <= 0:
            raise ConfigError(f"block_size is {block_size!r}; expected a positive integer")
        if caching not in CACHING_MODES:
            raise ConfigError(f"unknown caching mode {caching!r}; expected one of {CACHING_MODES}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.caching = caching
        self._ref = [0] * num_blocks
        self._key_of: list[int | None] = [None] * num_blocks
        self._block_of: dict[int, int] = {}
        # Popped from the end: block 0 is handed out first.
        self._free_plain: list[int] = list(range(num_blocks - 1, -1, -1))
        # The LRU queue of free blocks that keep a cached identity, oldest first. Taking a block
        # out of the middle (a cache hit) leaves its entry behind, stale: an entry counts only if
        # it is its block's last one (``_entries``) and the block is still free. Stale entries
        # are skipped when evicting and dropped when they outnumber the live ones.
        self._lru: deque[int] = deque()
        self._entries = [0] * num_blocks  # entries of each block in ``_lru``
        self._num_cached_free = 0
        self.num_evictions = 0

    # --- queries -----------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self._free_plain) + self._num_cached_free

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self._free_plain) - self._num_cached_free

    @property
    def num_cached_free_blocks(self) -> int:
        return self._num_cached_free

    def cached_free_blocks(self) -> list[int]:
        """The free blocks with a cached identity, in eviction order (oldest first)."""
        ref = self._ref
        seen: dict[int, None] = {}
        for block in reversed(self._lru):
            if block not in seen and ref[block] == 0:
                seen[block] = None
        return list(reversed(seen))

    def ref_count(self, block: int) -> int:
        return self._ref[block]

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def lookup(self, keys: list[int], max_blocks: int) -> list[int]:
        """The cached blocks matching the leading ``keys`` (at most ``max_blocks``)."""
        if self.caching == "off":
            return []
        block_of = self._block_of
        hits: list[int] = []
        for key in keys[:max_blocks]:
            block = block_of.get(key)
            if block is None:
                break
            hits.append(block)
        return hits

    def num_free_after_touch(self, hits: list[int]) -> int:
        """Free blocks left once ``hits`` are taken out of the free queue."""
        ref = self._ref
        return self.num_free_blocks - sum(1 for block in hits if ref[block] == 0)

    # --- mutations -----------------------------------------------------------------------
    def touch(self, hits: list[int]) -> None:
        ref = self._ref
        for block in hits:
            if ref[block] == 0:  # a free block found by identity is in the LRU queue
                self._num_cached_free -= 1
            ref[block] += 1

    def allocate(self, count: int) -> list[int] | None:
        """``count`` fresh blocks with reference count 1, or None (nothing changed) if short."""
        if count > len(self._free_plain) + self._num_cached_free:
            return None
        ref = self._ref
        plain = self._free_plain
        from_plain = min(count, len(plain))
        taken = plain[len(plain) - from_plain:]
        del plain[len(plain) - from_plain:]
        taken.reverse()  # the same order as popping one at a time
        if len(taken) < count:
            lru, entries, key_of, block_of = self._lru, self._entries, self._key_of, self._block_of
            evict = count - len(taken)
            self._num_cached_free -= evict
            self.num_evictions += evict
            while evict:
                block = lru.popleft()
                entries[block] -= 1
                if entries[block] or ref[block]:
                    continue  # stale: the block was taken by a hit, or freed again later
                del block_of[key_of[block]]
                key_of[block] = None
                taken.append(block)
                evict -= 1
        for block in taken:
            ref[block] = 1
        return taken

    def register_run(self, blocks: list[int], keys: list[int], begin: int, end: int) -> None:
        """``register(blocks[i], keys[i])`` for ``begin <= i < end``."""
        if self.caching == "off":
            return
        key_of = self._key_of
        block_of = self._block_of
        for index in range(begin, end):
            block = blocks[index]
            if key_of[block] is None:
                key = keys[index]
                if key not in block_of:
                    block_of[key] = block
                    key_of[block] = key

    def register(self, block: int, key: int) -> None:
        """Makes a full, computed (or being computed this step) block findable by identity."""
        if self.caching == "off" or self._key_of[block] is not None:
            return
        if key not in self._block_of:  # a duplicate computed concurrently stays private
            self._block_of[key] = block
            self._key_of[block] = key

    def release(self, blocks: list[int]) -> None:
        """Drops one reference from each block; blocks reaching zero are freed tail first."""
        ref, key_of, entries, lru, plain = self._ref, self._key_of, self._entries, self._lru, self._free_plain
        cached = 0
        for block in reversed(blocks):
            count = ref[block] - 1
            if count < 0:
                raise AssertionError(f"KV block {block} freed more often than allocated")
            ref[block] = count
            if count:
                continue
            if key_of[block] is not None:
                lru.append(block)
                entries[block] += 1
                cached += 1
            else:
                plain.append(block)
        self._num_cached_free += cached
        if len(lru) > 2 * self._num_cached_free + 1024:
            self._compact()

    def _compact(self) -> None:
        """Drops the stale entries of the LRU queue (amortised: it has doubled since the last)."""
        live = self.cached_free_blocks()
        entries = self._entries
        for block in self._lru:
            entries[block] = 0
        for block in live:
            entries[block] = 1
        self._lru = deque(live)
