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

from collections import OrderedDict

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
        self._free_cached: OrderedDict[int, None] = OrderedDict()
        self.num_evictions = 0

    # --- queries -----------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self._free_plain) + len(self._free_cached)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self._free_plain) - len(self._free_cached)

    @property
    def num_cached_free_blocks(self) -> int:
        return len(self._free_cached)

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
        free_cached = self._free_cached
        for block in hits:
            if ref[block] == 0:
                del free_cached[block]
            ref[block] += 1

    def allocate(self, count: int) -> list[int] | None:
        """``count`` fresh blocks with reference count 1, or None (nothing changed) if short."""
        if count > len(self._free_plain) + len(self._free_cached):
            return None
        ref = self._ref
        plain = self._free_plain
        from_plain = min(count, len(plain))
        taken = plain[len(plain) - from_plain:]
        del plain[len(plain) - from_plain:]
        taken.reverse()  # the same order as popping one at a time
        while len(taken) < count:
            block, _ = self._free_cached.popitem(last=False)
            del self._block_of[self._key_of[block]]
            self._key_of[block] = None
            self.num_evictions += 1
            taken.append(block)
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
        ref = self._ref
        for block in reversed(blocks):
            count = ref[block] - 1
            if count < 0:
                raise AssertionError(f"KV block {block} freed more often than allocated")
            ref[block] = count
            if count:
                continue
            if self._key_of[block] is not None:
                self._free_cached[block] = None
            else:
                self._free_plain.append(block)
