"""A host-memory tier behind the prefix cache: KV blocks kept in CPU memory after the GPU's LRU
cache has dropped them, and loaded back instead of recomputed (LMCache, vLLM's CPU offloading,
SGLang's HiCache; Mooncake pools such memory across machines).

Write-through, as those offload every computed block: each full block the scheduler registers in
the GPU cache is stored here too, by identity (the chain key), and the tier keeps the
``capacity`` most recently stored or loaded identities (LRU). At admission, after the GPU cache's
hits, the prompt's next blocks found here are loaded: they take fresh GPU blocks but no prefill.
Only identities are kept; an executor that loads them must keep the KV itself (the engine here
has no host tier and refuses one).
"""
from __future__ import annotations

from collections import OrderedDict


class HostTier:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._keys: OrderedDict[int, None] = OrderedDict()
        self.num_loaded_blocks = 0   # over the run

    def __len__(self) -> int:
        return len(self._keys)

    def store(self, keys) -> None:
        """Keeps these identities (the most recent last), dropping the least recently used."""
        held = self._keys
        for key in keys:
            if key in held:
                held.move_to_end(key)
            else:
                held[key] = None
        while len(held) > self.capacity:
            held.popitem(last=False)

    def count(self, keys, begin: int, end: int) -> int:
        """How many of ``keys[begin:end]`` are held, from ``begin`` on without a gap."""
        held = self._keys
        found = 0
        for key in keys[begin:end]:
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
