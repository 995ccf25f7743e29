"""Prints the cost of the block manager's operations on n blocks: the Python manager's loop
path vs its numpy path, to place the switch between them (``scheduler/kv_blocks.py``'s
``_SMALL`` weights), and the compiled manager (``scheduler/_native.pyx``) beside them.

Run: python benchmarks/bench_kv_blocks.py. Each round allocates n blocks (evicting cached ones
after the first rounds), registers their keys, looks them up and releases them.
"""
from __future__ import annotations

import time

import numpy as np

from scheduler import kv_blocks
from scheduler.kv_blocks import NativeBlockManager, PythonBlockManager


def microseconds(small: int, n: int, rounds: int = 3000, manager=PythonBlockManager) -> list[float]:
    saved = kv_blocks._SMALL
    kv_blocks._SMALL = small
    try:
        kv = manager(20_000, 16, "lru")
        totals = [0.0] * 4
        for r in range(rounds):
            keys = np.arange(r * n, (r + 1) * n, dtype=np.int64)
            t0 = time.perf_counter()
            blocks = kv.allocate(n)
            t1 = time.perf_counter()
            kv.register_run(blocks, keys, 0, n)
            t2 = time.perf_counter()
            kv.lookup(keys, n)
            t3 = time.perf_counter()
            kv.release(blocks)
            t4 = time.perf_counter()
            for i, t in enumerate((t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                totals[i] += t
        return [1e6 * t / rounds for t in totals]
    finally:
        kv_blocks._SMALL = saved


def main() -> None:
    print("blocks  | loop: allocate register lookup release (us) | numpy: allocate register lookup release (us)"
          " | compiled: allocate register lookup release (us)")
    for n in (4, 8, 16, 32, 48, 64, 128, 512):
        loop, vector = microseconds(10**9, n), microseconds(0, n)
        native = microseconds(0, n, manager=NativeBlockManager) if NativeBlockManager else None
        print(f"{n:>6}  | " + " ".join(f"{x:8.1f}" for x in loop) + "        | " + " ".join(f"{x:8.1f}" for x in vector)
              + "         | " + (" ".join(f"{x:8.2f}" for x in native) if native else "not built"))


if __name__ == "__main__":
    main()
