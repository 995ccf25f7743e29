"""A host-memory tier behind the prefix cache: KV blocks kept in CPU memory after the GPU's LRU
cache has dropped them, and loaded back instead of recomputed (LMCache, vLLM's CPU offloading,
SGLang's HiCache; Mooncake pools such memory across machines).

Write-through, as those offload every computed block: each full block the scheduler registers in
the GPU cache is stored here too, by identity (the chain key), and the tier keeps the
``capacity`` most recently stored or loaded identities (LRU). At admission, after the GPU cache's
hits, the prompt's next blocks found here are loaded: they take fresh GPU blocks but no prefill.
Only identities are kept here; an executor that loads them keeps the KV itself (the engine's
``PagedKVCache`` copies and forgets what ``BatchPlan.host_stores``, ``host_loads`` and
``host_drops`` name).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .request import RequestState
    from .scheduler import Scheduler


class HostTier:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._keys: OrderedDict[int, None] = OrderedDict()
        self.num_loaded_blocks = 0   # over the run

    def __len__(self) -> int:
        return len(self._keys)

    def store(self, keys) -> list[int]:
        """Keeps these identities (the most recent last), dropping the least recently used;
        returns the identities dropped."""
        held = self._keys
        move = held.move_to_end
        for key in keys:
            if key in held:
                move(key)
            else:
                held[key] = None
        excess = len(held) - self.capacity
        if excess <= 0:
            return []
        drop = held.popitem
        return [drop(False)[0] for _ in range(excess)]

    def count(self, keys, begin: int, end: int) -> int:
        """How many of ``keys[begin:end]`` are held, from ``begin`` on without a gap."""
        held = self._keys
        if begin >= end or int(keys[begin]) not in held:  # the common answer, without a slice
            return 0
        found = 0
        for key in as_ints(keys[begin:end]):
            if key not in held:
                break
            found += 1
        return found

    def load(self, keys) -> None:
        """These identities are loaded: counted, and the most recently used now."""
        held = self._keys
        for key in keys:
            held.move_to_end(key)
        self.num_loaded_blocks += len(keys)


def as_ints(keys) -> list[int]:
    """Chain keys (a numpy slice or a list) as Python ints, which hash fast."""
    return keys.tolist() if hasattr(keys, "tolist") else list(keys)


def write_through(scheduler: "Scheduler", state: "RequestState", keys, upto: int) -> None:
    """Stores the blocks ``state`` registers now (from its registered count up to ``upto``) in
    the scheduler's tier, and lists them for an executor with one."""
    begin = state.num_registered_blocks
    stored = as_ints(keys[begin:upto])
    dropped = scheduler.host.store(stored)
    scheduler._stored_blocks += len(stored)
    if scheduler._transfers:
        pending = scheduler._host_stores  # identity -> block, for the next plan
        pending.update(zip(stored, state.block_table[begin:upto]))
        for key in dropped:  # an executor copies what the tier keeps, and forgets what it drops
            if pending.pop(key, None) is None:
                scheduler._host_drops.append(key)
