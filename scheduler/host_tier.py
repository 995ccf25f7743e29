"""A host-memory tier behind the prefix cache: KV blocks kept in CPU memory after the GPU's LRU
cache has dropped them, and loaded back instead of recomputed (LMCache, vLLM's CPU offloading,
SGLang's HiCache; Mooncake pools such memory across machines).

Write-through, as those offload every computed block: each full block the scheduler registers in
the GPU cache is stored here too, by identity (the chain key), unless the tier holds it already
(then it is only marked as used: LMCache and vLLM's offloading look their keys up before they
copy), and the tier keeps the ``capacity`` most recently stored or loaded identities (LRU). At
admission, after the GPU cache's hits, the prompt's next blocks found here are loaded: they take
fresh GPU blocks but no prefill. Only identities are kept here; an executor that loads them keeps
the KV itself (the engine's ``PagedKVCache`` copies and forgets what ``BatchPlan.host_stores``,
``host_loads`` and ``host_drops`` name).

Simulated engines behind a router may share one tier (``shared_host`` in ``sim/cluster.py``:
Mooncake's store pools every machine's DRAM): the tier then remembers which engine stored each
block, and a load of another engine's block is counted as remote, to be costed at the network's
bandwidth (``BatchPlan.remote_loaded_tokens``).
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
        self._keys: OrderedDict[int, int] = OrderedDict()  # identity -> the engine that stored it

    def __len__(self) -> int:
        return len(self._keys)

    def store(self, keys, owner: int = 0) -> tuple[list[int], list[int]]:
        """Keeps these identities (the most recent last), dropping the least recently used;
        returns (the identities copied here now: those it did not hold, the identities dropped)."""
        held = self._keys
        move = held.move_to_end
        new = []
        for key in keys:
            if key in held:
                move(key)
            else:
                held[key] = owner
                new.append(key)
        excess = len(held) - self.capacity
        if excess <= 0:
            return new, []
        drop = held.popitem
        return new, [drop(False)[0] for _ in range(excess)]

    def count(self, keys, begin: int, end: int, fresh=()) -> int:
        """How many of ``keys[begin:end]`` are held, from ``begin`` on without a gap; ``fresh``:
        identities stored in the step being scheduled, whose KV that step computes (not there yet)."""
        held = self._keys
        if begin >= end or int(keys[begin]) not in held:  # the common answer, without a slice
            return 0
        found = 0
        for key in as_ints(keys[begin:end]):
            if key not in held or key in fresh:
                break
            found += 1
        return found

    def load(self, keys, owner: int = 0) -> int:
        """These identities are loaded by engine ``owner``: the most recently used now. Returns
        how many another engine stored (remote, in a shared tier)."""
        held = self._keys
        move = held.move_to_end
        remote = 0
        for key in keys:
            if held[key] != owner:
                remote += 1
            move(key)
        return remote


def as_ints(keys) -> list[int]:
    """Chain keys (a numpy slice or a list) as Python ints, which hash fast."""
    return keys.tolist() if hasattr(keys, "tolist") else list(keys)


def write_through(scheduler: "Scheduler", state: "RequestState", keys, upto: int) -> None:
    """Stores the blocks ``state`` registers now (from its registered count up to ``upto``) in
    the scheduler's tier, those it does not hold already, and lists them for an executor with one."""
    begin = state.num_registered_blocks
    keys = as_ints(keys[begin:upto])
    stored, dropped = scheduler.host.store(keys, scheduler.replica)
    drops = scheduler._host_drops
    if drops and stored and scheduler._transfers:
        # stored again before a plan told the executor to drop it: it never will (a plan's stores
        # come before its drops), so the executor still holds it, and nothing is copied
        again = set(stored).intersection(drops)
        if again:
            drops[:] = [key for key in drops if key not in again]
            stored = [key for key in stored if key not in again]
    scheduler._stored_blocks += len(stored)
    scheduler._fresh_host.update(stored)  # (scheduling a step: computed by it, not loadable in it)
    if scheduler._transfers:
        pending = scheduler._host_stores  # identity -> block, for the next plan
        if len(stored) == len(keys):
            pending.update(zip(keys, state.block_table[begin:upto]))
        else:
            new = set(stored)
            pending.update((key, block) for key, block in zip(keys, state.block_table[begin:upto]) if key in new)
        for key in dropped:  # an executor copies what the tier keeps, and forgets what it drops
            if pending.pop(key, None) is None:
                drops.append(key)
