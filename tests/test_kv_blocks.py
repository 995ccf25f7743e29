"""The block manager's LRU prefix cache against a plain reference model (an OrderedDict): the
Python manager on each of its paths, and its compiled twin (where it was built)."""
from collections import OrderedDict

import contextlib
import os

import numpy as np

import pytest
from hypothesis import given, settings, strategies as st

from scheduler import kv_blocks
from scheduler.kv_blocks import PythonBlockManager
from scheduler.prompt import NativeChainIndex as NATIVE_CHAINS, PythonChainIndex

NATIVE = kv_blocks.NativeBlockManager
needs_native = pytest.mark.skipif(NATIVE is None, reason="the compiled block manager was not built "
                                  "(no C compiler at install time, or BATCHLAB_PURE_PYTHON set)")


@contextlib.contextmanager
def paths(small: int, slack: int):
    """Forces the block manager's loop or numpy paths, and a tiny queue buffer (compactions)."""
    saved = kv_blocks._SMALL, kv_blocks._SLACK
    kv_blocks._SMALL, kv_blocks._SLACK = small, slack
    try:
        yield
    finally:
        kv_blocks._SMALL, kv_blocks._SLACK = saved


# (small-operation threshold, queue slack): the defaults; every operation through numpy; every
# operation through Python loops; both with a buffer that compacts all the time
PATHS = [(kv_blocks._SMALL, kv_blocks._SLACK), (0, 1), (10**9, 1), (3, 0)]


class ReferenceLRU:
    """vLLM-style caching as written down in kv_blocks.py's docstring, the slow obvious way."""

    def __init__(self, num_blocks: int) -> None:
        self.ref = [0] * num_blocks
        self.key_of = [None] * num_blocks
        self.block_of = {}
        self.plain = list(range(num_blocks - 1, -1, -1))
        self.cached = OrderedDict()
        self.evictions = 0

    def lookup(self, keys):
        hits = []
        for key in keys:
            if key not in self.block_of:
                break
            hits.append(self.block_of[key])
        return hits

    def touch(self, hits):
        for block in hits:
            if self.ref[block] == 0:
                del self.cached[block]
            self.ref[block] += 1

    def allocate(self, count):
        if count > len(self.plain) + len(self.cached):
            return None
        taken = []
        for _ in range(count):
            if self.plain:
                block = self.plain.pop()
            else:
                block, _ = self.cached.popitem(last=False)
                self.evictions += 1
                del self.block_of[self.key_of[block]]
                self.key_of[block] = None
            self.ref[block] = 1
            taken.append(block)
        return taken

    def register(self, block, key):
        if self.key_of[block] is None and key not in self.block_of:
            self.block_of[key] = block
            self.key_of[block] = key

    def release(self, blocks):
        for block in reversed(blocks):
            self.ref[block] -= 1
            if self.ref[block] == 0:
                if self.key_of[block] is not None:
                    self.cached[block] = None
                else:
                    self.plain.append(block)


operations = st.lists(st.tuples(st.sampled_from(["new", "hit", "free"]), st.integers(0, 7), st.integers(1, 40)),
                      min_size=1, max_size=200)


@pytest.mark.parametrize("small,slack", PATHS)
def test_lru_cache_matches_the_reference(small, slack):
    with paths(small, slack):
        check_against_reference(PythonBlockManager)


@needs_native
def test_compiled_lru_cache_matches_the_reference():
    check_against_reference(NATIVE)


@pytest.mark.parametrize("pure", ["", "0", "1"])
def test_the_compiled_twins_serve_where_built_unless_pure_python_is_asked_for(pure):
    """In a fresh interpreter: the compiled classes where the module was built and
    BATCHLAB_PURE_PYTHON is unset or 0; the Python classes where it is 1 (or not built)."""
    import subprocess
    import sys

    probe = ("from scheduler import BlockManager, ChainIndex; "
             "print(BlockManager.__module__, ChainIndex.__module__)")
    env = dict(os.environ, BATCHLAB_PURE_PYTHON=pure)
    modules = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                             check=True).stdout.split()
    import importlib.util

    built = importlib.util.find_spec("scheduler._native") is not None
    compiled = built and pure != "1"
    expected = ["scheduler._native"] * 2 if compiled else ["scheduler.kv_blocks", "scheduler.prompt"]
    assert modules == expected


@settings(max_examples=150, deadline=None)
@given(ops=operations, num_blocks=st.integers(4, 96), keys_as_array=st.booleans())
def check_against_reference(manager, ops, num_blocks, keys_as_array):
    kv, model = manager(num_blocks, 4, "lru"), ReferenceLRU(num_blocks)
    held = []  # block lists in use
    for op, prefix, length in ops:
        keys = [prefix * 100 + i for i in range(length)]  # prompts sharing leading keys
        if keys_as_array:  # as the scheduler passes them
            keys = np.array(keys, dtype=np.int64)
        if op == "free" and held:
            blocks = held.pop(prefix % len(held))
            kv.release(blocks)
            model.release(blocks)
        elif op in ("new", "hit"):
            hits, free_hits = kv.match(keys, len(keys)) if op == "hit" else ([], 0)
            assert hits == (model.lookup(keys.tolist() if keys_as_array else keys) if op == "hit" else [])
            assert free_hits == kv.num_free_among(hits) == sum(model.ref[b] == 0 for b in hits)
            if op == "hit":
                assert kv.match_count(keys, len(keys)) == (len(hits), free_hits)
                assert kv.match_count(keys, 2) == (min(2, len(hits)), kv.num_free_among(hits[:2]))
            if kv.num_free_blocks - free_hits < length - len(hits):
                continue
            kv.touch(hits)
            model.touch(hits)
            fresh = kv.allocate(length - len(hits))
            assert fresh == model.allocate(length - len(hits))
            blocks = hits + fresh
            kv.register_run(blocks, keys, 0, len(blocks))
            for block, key in zip(blocks, keys):
                model.register(block, int(key))
            held.append(blocks)
        assert kv.num_free_blocks == len(model.plain) + len(model.cached)
        assert kv.cached_free_blocks() == list(model.cached)  # the same eviction order
        assert [kv.ref_count(b) for b in range(num_blocks)] == model.ref
        assert kv.num_evictions == model.evictions
    for blocks in held:
        kv.release(blocks)
        model.release(blocks)
    assert kv.num_used_blocks == 0 and kv.cached_free_blocks() == list(model.cached)


@pytest.mark.parametrize("manager", [PythonBlockManager, pytest.param(NATIVE, marks=needs_native)])
def test_stale_queue_entries_are_compacted(manager):
    kv = manager(8, 4, "lru")
    blocks = kv.allocate(4)
    kv.register_run(blocks, [1, 2, 3, 4], 0, 4)
    kv.release(blocks)
    for _ in range(5000):  # hit, use, free again: each round leaves stale entries behind
        hits = kv.lookup([1, 2, 3, 4], 4)
        kv.touch(hits)
        kv.release(hits)
    assert kv.queue_length <= 2 * kv.num_cached_free_blocks + 1024 + 4
    assert blocks == [0, 1, 2, 3] and kv.cached_free_blocks() == [3, 2, 1, 0]  # released tail first
    assert kv.allocate(8) is not None and kv.num_evictions == 4


segment_chains = st.lists(st.lists(st.tuples(st.integers(0, 3), st.sampled_from([1, 3, 4, 7, 16, 20])),
                                   min_size=1, max_size=6), min_size=1, max_size=8)


CHAIN_INDEXES = [PythonChainIndex, pytest.param(NATIVE_CHAINS, marks=needs_native)]


@pytest.mark.parametrize("index", CHAIN_INDEXES)
def test_block_identities_are_equal_exactly_when_the_tokens_before_them_are(index):
    check_identities(index)


@settings(max_examples=150, deadline=None)
@given(prompts=segment_chains, block_size=st.sampled_from([1, 4, 16]))
def check_identities(index, prompts, block_size):
    """Dense keys from ChainIndex against token-level truth: a segment (id, length) is the
    token run ((id, length, 0), ..., (id, length, length - 1))."""
    chains = index(block_size)
    seen = {}  # the tokens up to a block's end -> its key
    for segments in prompts:
        prompt = tuple(segments)
        tokens = [(sid, length, i) for sid, length in prompt for i in range(length)]
        keys = chains.full_block_keys(prompt).tolist()
        assert len(keys) == len(tokens) // block_size
        assert keys == sorted(set(keys)) and all(k < chains.num_keys for k in keys)  # increasing, dense
        for index, key in enumerate(keys):
            before = tuple(tokens[:(index + 1) * block_size])
            assert seen.setdefault(before, key) == key
    assert len(set(seen.values())) == len(seen)  # different token prefixes, different keys


@pytest.mark.parametrize("manager", [PythonBlockManager, pytest.param(NATIVE, marks=needs_native)])
def test_misuse_is_refused_by_both_managers(manager):
    kv = manager(4, 16, "lru")
    blocks = kv.allocate(2)
    kv.release(blocks)
    with pytest.raises(AssertionError, match="freed more often than allocated"):
        kv.release(blocks)
    with pytest.raises(IndexError):
        kv.release([7])
    assert kv.allocate(5) is None and kv.num_free_blocks == 4  # short: nothing changed
    with pytest.raises(kv_blocks.ConfigError, match="caching mode"):
        manager(4, 16, "fifo")
    with pytest.raises(kv_blocks.ConfigError, match="positive integer"):
        manager(0, 16, "lru")


@pytest.mark.parametrize("manager", [PythonBlockManager, pytest.param(NATIVE, marks=needs_native)])
def test_caching_off_never_finds_a_block(manager):
    kv = manager(8, 4, "off")
    blocks = kv.allocate(3)
    kv.register_run(blocks, np.arange(3, dtype=np.int64), 0, 3)
    kv.release(blocks)
    assert kv.lookup(np.arange(3, dtype=np.int64), 3) == [] and kv.num_cached_free_blocks == 0


@needs_native
@settings(max_examples=100, deadline=None)
@given(prompts=st.lists(st.lists(st.tuples(st.integers(0, 5), st.integers(1, 40)), min_size=1, max_size=24),
                        min_size=1, max_size=12), block_size=st.sampled_from([1, 3, 16]))
def test_compiled_chain_index_hands_out_the_same_keys(prompts, block_size):
    """The same keys in the same order (chains of up to 24 segments: past the compiled index's
    16 on its stack), so a run's key space is the same with either."""
    python, compiled = PythonChainIndex(block_size), NATIVE_CHAINS(block_size)
    for segments in prompts:
        expected = python.full_block_keys(tuple(segments))
        got = compiled.full_block_keys(tuple(segments))
        assert got.dtype == expected.dtype and got.tolist() == expected.tolist()
        assert (compiled.num_keys, len(compiled)) == (python.num_keys, len(python))
