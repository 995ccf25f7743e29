"""KV block manager: fixed-size blocks, reference counts and prefix caching by identity.

Caching modes:
- ``lru``: vLLM automatic prefix caching. A freed block keeps its identity in an LRU free
  queue until it is reused; a request's blocks are queued tail first, so its tail is evicted
  before its head. One deviation from vLLM: a free block that never held a cached identity is
  handed out before any cached block is evicted (vLLM pops the queue head regardless).
- ``off``: blocks are never found by identity. Prefix-grouped schedules use this: a group's
  members share the prefix blocks their group holds, so sharing never depends on what LRU kept.

Identities (keys) are small dense integers (``prompt.ChainIndex`` hands them out), so that
key -> block is an array, not a dict. The state lives in numpy arrays: a request's hundreds
of blocks (a Mooncake prompt averages 750) are looked up, allocated, registered and released
in a few vectorised operations, while the one-block operations of decodes go through
memoryviews of the same arrays (Python-int speed, no numpy scalar boxing). Both paths change
the state identically; ``tests/test_kv_blocks.py`` holds them to a plain reference model.

``BlockManager`` is the compiled twin of this class (``_native.pyx``, built by
``pip install``) where it was built, and ``PythonBlockManager`` where not (no C compiler) or
where ``BATCHLAB_PURE_PYTHON=1`` is set. The two give the same results operation for operation
(the same reference-model tests run on both); the compiled one is 3-15x faster per operation
than the faster Python path; in pure Python the block manager was a third of the Azure replay's
simulation time and two fifths of the Mooncake replay's.
"""
from __future__ import annotations

import numpy as np

from ._compiled import compiled
from .errors import ConfigError

CACHING_MODES = ("lru", "off")

# Operations on at most ``_SMALL * weight`` blocks run as Python loops over memoryviews,
# longer ones as numpy operations: a numpy call costs microseconds, a loop step tens of
# nanoseconds. The weights put each operation's switch near where the two cost the same on
# this machine (benchmarks/bench_kv_blocks.py): register 1, release 2, allocate 3, lookup 4.
_SMALL = 16
# Slack of the LRU queue's buffer over twice its live entries (stale entries are dropped when
# it is used up).
_SLACK = 1024


def _as_index(items) -> np.ndarray:
    return items if isinstance(items, np.ndarray) else np.array(items, dtype=np.int64)


def check_arguments(num_blocks: int, block_size: int, caching: str) -> None:
    """A block manager's arguments (both managers check them here)."""
    if not isinstance(num_blocks, int) or num_blocks <= 0:
        raise ConfigError(f"KV capacity is {num_blocks!r} blocks; expected a positive integer")
    if not isinstance(block_size, int) or block_size <= 0:
        raise ConfigError(f"block_size is {block_size!r}; expected a positive integer")
    if caching not in CACHING_MODES:
        raise ConfigError(f"unknown caching mode {caching!r}; expected one of {CACHING_MODES}")


class PythonBlockManager:
    def __init__(self, num_blocks: int, block_size: int = 16, caching: str = "lru") -> None:
        check_arguments(num_blocks, block_size, caching)
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.caching = caching
        self._ref = np.zeros(num_blocks, dtype=np.int32)
        self._key_of = np.full(num_blocks, -1, dtype=np.int64)   # -1: no cached identity
        self._block_of = np.full(1024, -1, dtype=np.int32)       # by key; grows with the keys
        # Popped from the end: block 0 is handed out first.
        self._free_plain: list[int] = list(range(num_blocks - 1, -1, -1))
        # The LRU queue of free blocks that keep a cached identity, oldest first, as a buffer
        # with a head. Taking a block out of the middle (a cache hit) leaves its entry behind,
        # stale: the entry at position p of block b counts only while ``_last_pos[b] == p`` (it
        # is b's newest entry) and b is free. Stale entries are skipped when evicting and
        # dropped when the buffer fills up.
        self._lru = np.empty(max(_SLACK, 2 * num_blocks), dtype=np.int32)
        self._head = 0
        self._tail = 0
        self._last_pos = np.full(num_blocks, -1, dtype=np.int64)
        self._num_cached_free = 0
        self.num_evictions = 0
        self._views()

    def _views(self) -> None:
        self._ref_v = memoryview(self._ref)
        self._key_of_v = memoryview(self._key_of)
        self._block_of_v = memoryview(self._block_of)
        self._lru_v = memoryview(self._lru)
        self._last_pos_v = memoryview(self._last_pos)

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

    @property
    def queue_length(self) -> int:
        """Entries in the LRU queue, stale ones included (bounded by compaction)."""
        return self._tail - self._head

    def _live(self, begin: int, end: int) -> np.ndarray:
        """Positions in [begin, end) of the queue whose entries count."""
        window = self._lru[begin:end]
        live = (self._last_pos[window] == np.arange(begin, end)) & (self._ref[window] == 0)
        return np.flatnonzero(live) + begin

    def cached_free_blocks(self) -> list[int]:
        """The free blocks with a cached identity, in eviction order (oldest first)."""
        return self._lru[self._live(self._head, self._tail)].tolist()

    def ref_count(self, block: int) -> int:
        return self._ref_v[block]

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def lookup(self, keys, max_blocks: int) -> list[int]:
        """The cached blocks matching the leading ``keys`` (at most ``max_blocks``)."""
        return self.match(keys, max_blocks)[0]

    def match(self, keys, max_blocks: int) -> tuple[list[int], int]:
        """``lookup`` and ``num_free_among`` of its hits, in one pass."""
        if self.caching == "off" or max_blocks <= 0 or len(keys) == 0:
            return [], 0
        if max_blocks <= 4 * _SMALL:
            block_of, ref, top = self._block_of_v, self._ref_v, len(self._block_of)
            hits = []
            free = 0
            for key in keys[:max_blocks].tolist() if isinstance(keys, np.ndarray) else keys[:max_blocks]:
                block = block_of[key] if key < top else -1
                if block < 0:
                    break
                hits.append(block)
                if ref[block] == 0:
                    free += 1
            return hits, free
        keys = _as_index(keys[:max_blocks])
        known = keys < len(self._block_of)  # a key never registered ends the hits
        if not known.all():
            keys = keys[:int(np.argmin(known))]
        found = self._block_of[keys]
        misses = np.flatnonzero(found < 0)
        if len(misses):
            found = found[:misses[0]]
        return found.tolist(), int(np.count_nonzero(self._ref[found] == 0))

    def match_count(self, keys, max_blocks: int) -> tuple[int, int]:
        """``match`` without listing the hits: (how many, how many of them are free)."""
        hits, free = self.match(keys, max_blocks)
        return len(hits), free

    def num_free_among(self, blocks: list[int]) -> int:
        """How many of ``blocks`` are free (cached, in the LRU queue): taking them as hits
        leaves ``num_free_blocks`` minus that many."""
        if len(blocks) <= _SMALL:
            ref = self._ref_v
            return sum(1 for block in blocks if ref[block] == 0)
        return int(np.count_nonzero(self._ref[_as_index(blocks)] == 0))

    # --- mutations -----------------------------------------------------------------------
    def touch(self, hits: list[int]) -> None:
        if len(hits) <= _SMALL:
            ref = self._ref_v
            for block in hits:
                if ref[block] == 0:  # a free block found by identity is in the LRU queue
                    self._num_cached_free -= 1
                ref[block] += 1
            return
        index = _as_index(hits)
        self._num_cached_free -= int(np.count_nonzero(self._ref[index] == 0))
        self._ref[index] += 1  # blocks of one request are distinct

    def allocate(self, count: int) -> list[int] | None:
        """``count`` fresh blocks with reference count 1, or None (nothing changed) if short."""
        if count > len(self._free_plain) + self._num_cached_free:
            return None
        plain = self._free_plain
        from_plain = min(count, len(plain))
        taken = plain[len(plain) - from_plain:]
        del plain[len(plain) - from_plain:]
        taken.reverse()  # the same order as popping one at a time
        evict = count - from_plain
        if evict:
            # the queue holds the evictees, the other cached free blocks and stale entries
            no_stale = self._tail - self._head == self._num_cached_free
            self._num_cached_free -= evict
            self.num_evictions += evict
            if no_stale:
                taken.extend(self._evict_head(evict))
            else:
                taken.extend(self._evict_small(evict) if evict <= 3 * _SMALL else self._evict_many(evict))
        if count <= 3 * _SMALL:
            ref = self._ref_v
            for block in taken:
                ref[block] = 1
        else:
            self._ref[taken] = 1
        return taken

    def _evict_head(self, count: int) -> list[int]:
        """The ``count`` oldest entries, when the queue holds no stale ones."""
        head = self._head
        self._head = head + count
        if count <= 3 * _SMALL:
            taken = self._lru[head:head + count].tolist()
            key_of, block_of = self._key_of_v, self._block_of_v
            for block in taken:
                block_of[key_of[block]] = -1
                key_of[block] = -1
            return taken
        return self._forget_identities(self._lru[head:head + count])

    def _forget_identities(self, blocks: np.ndarray) -> list[int]:
        self._block_of[self._key_of[blocks]] = -1
        self._key_of[blocks] = -1
        return blocks.tolist()

    def _evict_small(self, count: int) -> list[int]:
        """The ``count`` oldest live entries, skipping stale ones, one at a time."""
        lru, last_pos, ref, key_of, block_of = (self._lru_v, self._last_pos_v, self._ref_v,
                                                self._key_of_v, self._block_of_v)
        head = self._head
        taken = []
        while count:
            block = lru[head]
            if last_pos[block] == head and ref[block] == 0:
                block_of[key_of[block]] = -1
                key_of[block] = -1
                taken.append(block)
                count -= 1
            head += 1
        self._head = head
        return taken

    def _evict_many(self, count: int) -> list[int]:
        """The ``count`` oldest live entries, skipping stale ones, a window at a time."""
        head = self._head
        # ``allocate`` has taken the evictees off ``_num_cached_free`` already
        stale = self._tail - head - self._num_cached_free - count
        parts = []
        missing = count
        while missing:
            end = min(self._tail, head + missing + min(stale, missing + 64))
            live = self._live(head, end)
            if len(live) >= missing:
                live = live[:missing]
                end = int(live[-1]) + 1
            parts.append(self._lru[live])
            missing -= len(live)
            head = end
        self._head = head
        return self._forget_identities(np.concatenate(parts) if len(parts) > 1 else parts[0])

    def _fit_keys(self, top: int) -> None:
        if top >= len(self._block_of):
            grown = np.full(max(2 * len(self._block_of), top + 1), -1, dtype=np.int32)
            grown[:len(self._block_of)] = self._block_of
            self._block_of = grown
            self._views()

    def register_run(self, blocks: list[int], keys, begin: int, end: int) -> None:
        """Makes ``blocks[i]`` (full, computed or being computed this step) findable by
        ``keys[i]`` for ``begin <= i < end``; a block that has an identity keeps it, and a key
        that names a block already keeps it (a duplicate computed concurrently stays private)."""
        if self.caching == "off" or end <= begin:
            return
        if end - begin <= _SMALL:
            keys = keys[begin:end]
            self._fit_keys(int(max(keys)))  # (along a prompt the last; not so a window's pages)
            key_of, block_of = self._key_of_v, self._block_of_v
            for block, key in zip(blocks[begin:end], keys.tolist() if isinstance(keys, np.ndarray) else keys):
                if key_of[block] < 0 and block_of[key] < 0:
                    block_of[key] = block
                    key_of[block] = key
            return
        keys = _as_index(keys[begin:end])
        self._fit_keys(int(keys.max()))
        blocks = np.array(blocks[begin:end], dtype=np.int64)
        # blocks of one request are distinct, and so are its keys: no pair affects another
        new = (self._key_of[blocks] < 0) & (self._block_of[keys] < 0)
        self._block_of[keys[new]] = blocks[new]
        self._key_of[blocks[new]] = keys[new]

    def release(self, blocks: list[int]) -> None:
        """Drops one reference from each block; blocks reaching zero are freed tail first."""
        if len(blocks) <= 2 * _SMALL:
            self._release_small(blocks)
        else:
            self._release_many(blocks)
        if self._tail - self._head > 2 * self._num_cached_free + _SLACK:
            self._compact()

    def _release_small(self, blocks: list[int]) -> None:
        ref, key_of, plain = self._ref_v, self._key_of_v, self._free_plain
        cached = []
        for block in reversed(blocks):
            count = ref[block] - 1
            if count < 0:
                raise AssertionError(f"KV block {block} freed more often than allocated")
            ref[block] = count
            if count:
                continue
            if key_of[block] >= 0:
                cached.append(block)
            else:
                plain.append(block)
        if cached:
            self._enqueue(cached)

    def _release_many(self, blocks: list[int]) -> None:
        index = np.array(blocks[::-1], dtype=np.int64)
        ref = self._ref
        counts = ref[index] - 1  # blocks of one table are distinct
        if (counts < 0).any():
            raise AssertionError(f"KV block {int(index[np.argmax(counts < 0)])} freed more often than allocated")
        ref[index] = counts
        freed = index[counts == 0]
        cached = self._key_of[freed] >= 0
        self._free_plain.extend(freed[~cached].tolist())
        if cached.any():
            self._enqueue(freed[cached])

    def _enqueue(self, blocks) -> None:
        """Appends newly freed cached blocks to the LRU queue, oldest first."""
        count = len(blocks)
        if self._tail + count > len(self._lru):
            self._compact(count)
        tail = self._tail
        if count <= _SMALL:
            lru, last_pos = self._lru_v, self._last_pos_v
            for offset, block in enumerate(blocks):
                lru[tail + offset] = block
                last_pos[block] = tail + offset
        else:
            self._lru[tail:tail + count] = blocks
            self._last_pos[blocks] = np.arange(tail, tail + count)
        self._tail = tail + count
        self._num_cached_free += count

    def _compact(self, room: int = 0) -> None:
        """Drops the stale entries of the queue and moves it to the start of its buffer, with
        ``room`` for more (amortised: the queue has doubled since the last compaction)."""
        live = self._lru[self._live(self._head, self._tail)]
        size = max(len(self._lru), 2 * (len(live) + room) + _SLACK)
        if size > len(self._lru):
            self._lru = np.empty(size, dtype=np.int32)
        self._lru[:len(live)] = live
        self._last_pos[live] = np.arange(len(live))
        self._head, self._tail = 0, len(live)
        self._views()


NativeBlockManager = compiled("BlockManager")
BlockManager = NativeBlockManager or PythonBlockManager
