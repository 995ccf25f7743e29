# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""Compiled twins of two scheduler data structures, for speed: the same operations with the
same results, at C speed per block or segment. The Python classes are the specification and
the fallback where this module was not built; tests hold each pair to the same answers, and
the simulator's records are the same with either.

- ``BlockManager`` (``kv_blocks.PythonBlockManager``): reference counts, the blocks handed
  out, the eviction order. Only the representation differs: the LRU queue of free cached
  blocks is a doubly linked list over block ids (a cache hit unlinks its block in O(1)) where
  the Python manager keeps a numpy buffer with stale entries.
- ``ChainIndex`` (``prompt.PythonChainIndex``): the same dense block identities, in the same
  order, written into the key array directly instead of through numpy calls per segment.
"""
from cpython.mem cimport PyMem_Malloc, PyMem_Realloc, PyMem_Free
from libc.stdint cimport int32_t, int64_t

import numpy as np

from .errors import ConfigError


cdef class BlockManager:
    cdef readonly int num_blocks
    cdef readonly int block_size
    cdef readonly str caching
    cdef public long long num_evictions
    cdef bint _off
    cdef int32_t* _ref
    cdef int64_t* _key_of      # -1: no cached identity
    cdef int32_t* _block_of    # by key; -1: no block; grows with the keys
    cdef int64_t _keys_cap
    cdef int32_t* _plain       # free blocks without identity; popped from the end
    cdef int _num_plain
    cdef int32_t* _prev        # the LRU queue of free cached blocks, oldest first
    cdef int32_t* _next
    cdef int _head
    cdef int _tail
    cdef int _num_cached_free
    cdef tuple _ints  # the block ids as Python ints, made once: lists of them allocate nothing

    def __cinit__(self):
        self._ref = NULL
        self._key_of = NULL
        self._block_of = NULL
        self._plain = NULL
        self._prev = NULL
        self._next = NULL

    def __init__(self, num_blocks, block_size=16, caching="lru"):
        from .kv_blocks import check_arguments  # here: kv_blocks imports this module
        check_arguments(num_blocks, block_size, caching)
        if num_blocks >= 2 ** 31 - 1:
            raise ConfigError(f"KV capacity is {num_blocks} blocks; at most {2 ** 31 - 2} are supported")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.caching = caching
        self._off = caching == "off"
        self.num_evictions = 0
        cdef int n = num_blocks
        self._ref = <int32_t*> PyMem_Malloc(n * sizeof(int32_t))
        self._key_of = <int64_t*> PyMem_Malloc(n * sizeof(int64_t))
        self._plain = <int32_t*> PyMem_Malloc(n * sizeof(int32_t))
        self._prev = <int32_t*> PyMem_Malloc(n * sizeof(int32_t))
        self._next = <int32_t*> PyMem_Malloc(n * sizeof(int32_t))
        self._keys_cap = 1024
        self._block_of = <int32_t*> PyMem_Malloc(self._keys_cap * sizeof(int32_t))
        if (self._ref == NULL or self._key_of == NULL or self._plain == NULL or self._prev == NULL
                or self._next == NULL or self._block_of == NULL):
            raise MemoryError()
        cdef int i
        for i in range(n):
            self._ref[i] = 0
            self._key_of[i] = -1
            self._plain[i] = n - 1 - i  # block 0 is handed out first
            self._prev[i] = -1
            self._next[i] = -1
        self._num_plain = n
        self._ints = tuple(range(n))
        cdef int64_t k
        for k in range(self._keys_cap):
            self._block_of[k] = -1
        self._head = -1
        self._tail = -1
        self._num_cached_free = 0

    def __dealloc__(self):
        PyMem_Free(self._ref)
        PyMem_Free(self._key_of)
        PyMem_Free(self._block_of)
        PyMem_Free(self._plain)
        PyMem_Free(self._prev)
        PyMem_Free(self._next)

    # --- queries -----------------------------------------------------------------------
    @property
    def num_free_blocks(self):
        return self._num_plain + self._num_cached_free

    @property
    def num_used_blocks(self):
        return self.num_blocks - self._num_plain - self._num_cached_free

    @property
    def num_cached_free_blocks(self):
        return self._num_cached_free

    @property
    def queue_length(self):
        """Entries in the LRU queue (a linked list holds no stale ones)."""
        return self._num_cached_free

    def cached_free_blocks(self):
        """The free blocks with a cached identity, in eviction order (oldest first)."""
        out = []
        cdef int block = self._head
        while block >= 0:
            out.append(self._ints[block])
            block = self._next[block]
        return out

    cdef inline int _check(self, long long block) except -1:
        if block < 0 or block >= self.num_blocks:
            raise IndexError(f"KV block {block} out of range [0, {self.num_blocks})")
        return 0

    def ref_count(self, long long block):
        self._check(block)
        return self._ref[block]

    def blocks_for(self, num_tokens):
        return -(-num_tokens // self.block_size)

    def lookup(self, keys, max_blocks):
        """The cached blocks matching the leading ``keys`` (at most ``max_blocks``)."""
        return self.match(keys, max_blocks)[0]

    def match(self, keys, long long max_blocks):
        """``lookup`` and ``num_free_among`` of its hits, in one pass."""
        hits = []
        free = self._scan(keys, max_blocks, hits)[1]
        return hits, free

    def match_count(self, keys, long long max_blocks):
        """``match`` without listing the hits: (how many, how many of them are free)."""
        return self._scan(keys, max_blocks, None)

    cdef tuple _scan(self, keys, long long max_blocks, list hits):
        """(leading keys with a cached block, how many of those blocks are free); the blocks
        are appended to ``hits`` unless it is None."""
        if self._off or max_blocks <= 0 or len(keys) == 0:
            return 0, 0
        cdef const int64_t[::1] view = _int64(keys)
        cdef Py_ssize_t count = min(<Py_ssize_t> max_blocks, view.shape[0])
        cdef Py_ssize_t i
        cdef int64_t key
        cdef int block
        cdef int free = 0
        for i in range(count):
            key = view[i]
            if key < 0 or key >= self._keys_cap:
                return i, free
            block = self._block_of[key]
            if block < 0:
                return i, free
            if hits is not None:
                hits.append(self._ints[block])
            if self._ref[block] == 0:
                free += 1
        return count, free

    def num_free_among(self, blocks):
        """How many of ``blocks`` are free (cached, in the LRU queue)."""
        cdef int free = 0
        cdef long long block
        for item in _as_list(blocks):
            block = item
            self._check(block)
            if self._ref[block] == 0:
                free += 1
        return free

    # --- the LRU queue -------------------------------------------------------------------
    cdef inline void _unlink(self, int block):
        cdef int before = self._prev[block]
        cdef int after = self._next[block]
        if before >= 0:
            self._next[before] = after
        else:
            self._head = after
        if after >= 0:
            self._prev[after] = before
        else:
            self._tail = before
        self._prev[block] = -1
        self._next[block] = -1

    cdef inline void _append(self, int block):
        self._prev[block] = self._tail
        self._next[block] = -1
        if self._tail >= 0:
            self._next[self._tail] = block
        else:
            self._head = block
        self._tail = block

    # --- mutations -----------------------------------------------------------------------
    def touch(self, hits):
        cdef long long block
        for item in _as_list(hits):
            block = item
            self._check(block)
            if self._ref[block] == 0:  # a free block found by identity is in the LRU queue
                self._unlink(<int> block)
                self._num_cached_free -= 1
            self._ref[block] += 1

    def allocate(self, long long count):
        """``count`` fresh blocks with reference count 1, or None (nothing changed) if short."""
        if count > self._num_plain + self._num_cached_free:
            return None
        cdef list taken = []
        cdef int block
        cdef long long i
        for i in range(count):
            if self._num_plain:
                self._num_plain -= 1
                block = self._plain[self._num_plain]
            else:
                block = self._head
                self._unlink(block)
                self._num_cached_free -= 1
                self.num_evictions += 1
                self._block_of[self._key_of[block]] = -1
                self._key_of[block] = -1
            self._ref[block] = 1
            taken.append(self._ints[block])
        return taken

    cdef int _fit_keys(self, int64_t top) except -1:
        if top < self._keys_cap:
            return 0
        cdef int64_t size = max(2 * self._keys_cap, top + 1)
        cdef int32_t* grown = <int32_t*> PyMem_Realloc(self._block_of, size * sizeof(int32_t))
        if grown == NULL:
            raise MemoryError()
        cdef int64_t k
        for k in range(self._keys_cap, size):
            grown[k] = -1
        self._block_of = grown
        self._keys_cap = size
        return 0

    def register_run(self, blocks, keys, Py_ssize_t begin, Py_ssize_t end):
        """Makes ``blocks[i]`` findable by ``keys[i]`` for ``begin <= i < end``; a block that
        has an identity keeps it, and a key that names a block already keeps it."""
        if self._off or end <= begin:
            return
        cdef const int64_t[::1] view = _int64(keys)
        cdef list table = _as_list(blocks)
        if end > view.shape[0] or end > len(table):
            raise IndexError(f"register_run: [{begin}, {end}) beyond {len(blocks)} blocks / "
                             f"{view.shape[0]} keys")
        cdef Py_ssize_t i
        cdef long long block
        cdef int64_t key
        for i in range(begin, end):
            block = table[i]
            self._check(block)
            key = view[i]
            if key < 0:
                raise ValueError(f"register_run: key {key} is negative")
            self._fit_keys(key)
            if self._key_of[block] < 0 and self._block_of[key] < 0:
                self._block_of[key] = <int32_t> block
                self._key_of[block] = key

    def release(self, blocks):
        """Drops one reference from each block; blocks reaching zero are freed tail first."""
        cdef list table = _as_list(blocks)
        cdef Py_ssize_t n = len(table)
        cdef Py_ssize_t i
        cdef long long block
        # a block freed more often than allocated changes nothing; one listed twice in a call
        # (never done by the scheduler) is caught when its second entry is reached
        for i in range(n):
            block = table[i]
            self._check(block)
            if self._ref[block] <= 0:
                raise AssertionError(f"KV block {block} freed more often than allocated")
        for i in range(n - 1, -1, -1):
            block = table[i]
            if self._ref[block] <= 0:  # listed twice in one call
                raise AssertionError(f"KV block {block} freed more often than allocated")
            self._ref[block] -= 1
            if self._ref[block]:
                continue
            if self._key_of[block] >= 0:
                self._append(<int> block)
                self._num_cached_free += 1
            else:
                self._plain[self._num_plain] = <int32_t> block
                self._num_plain += 1


cdef inline list _as_list(blocks):
    """``blocks`` as a list (itself when it is one: indexed without the generic protocol)."""
    return blocks if type(blocks) is list else list(blocks)


cdef object _int64(keys):
    """``keys`` as a contiguous int64 array (no copy when it is one already)."""
    if type(keys) is np.ndarray and keys.dtype == np.int64 and keys.flags.c_contiguous:
        return keys
    return np.ascontiguousarray(keys, dtype=np.int64)


cdef class ChainIndex:
    """Interns segment-chain prefixes; see ``prompt.PythonChainIndex``."""
    cdef readonly int block_size
    cdef readonly long long num_keys
    cdef dict _nodes  # (node, segment_id, length) -> (node, its first key)

    def __init__(self, int block_size):
        self.block_size = block_size
        self.num_keys = 0
        self._nodes = {}

    def __len__(self):
        return len(self._nodes)

    def full_block_keys(self, prompt):
        """Identities of every block that lies wholly inside the prompt, in order (int64)."""
        cdef dict nodes = self._nodes
        cdef long long size = self.block_size
        cdef Py_ssize_t n = len(prompt)
        cdef Py_ssize_t i, used = 0
        cdef long long seg_start = 0, seg_end, length, count, total = 0, node = 0, first, k
        cdef int64_t[::1] out
        # (first key, count) per segment with blocks ending in it; most prompts have few
        cdef long long small_firsts[16]
        cdef long long small_counts[16]
        cdef long long* firsts = small_firsts
        cdef long long* counts = small_counts
        if n > 16:
            firsts = <long long*> PyMem_Malloc(n * sizeof(long long))
            counts = <long long*> PyMem_Malloc(n * sizeof(long long))
            if firsts == NULL or counts == NULL:
                PyMem_Free(firsts)
                PyMem_Free(counts)
                raise MemoryError()
        try:
            for i in range(n):
                segment_id, segment_length = prompt[i]
                length = segment_length
                seg_end = seg_start + length
                count = seg_end // size - seg_start // size  # blocks ending inside this segment
                lookup = (node, segment_id, segment_length)
                entry = nodes.get(lookup)
                if entry is None:
                    entry = (len(nodes) + 1, self.num_keys)
                    nodes[lookup] = entry
                    self.num_keys += count
                node = entry[0]
                if count:
                    firsts[used] = entry[1]
                    counts[used] = count
                    used += 1
                    total += count
                seg_start = seg_end
            keys = np.empty(total, dtype=np.int64)
            if total:
                out = keys
                k = 0
                for i in range(used):
                    first = firsts[i]
                    for count in range(counts[i]):
                        out[k] = first + count
                        k += 1
            return keys
        finally:
            if n > 16:
                PyMem_Free(firsts)
                PyMem_Free(counts)
