"""The host-memory KV tier's copies, measured for a profile (``host_kv_copy``, ``host_kv_store``):
a 16-token prompt chunk alone, and the same chunk with ``n`` blocks loaded from the engine's host
copies before it (or its blocks' KV copied out), for a few ``n``; a table holds each one's
median excess over the chunk alone, by tokens copied. The identities loaded are stored once
beforehand, so a load cell finds them wherever the pass puts it."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

HOST_BLOCKS = (1, 4, 16, 64)   # blocks copied in a measured step
_IDENTITY = 1 << 50            # identities no run hands out


def host_cells(profiler) -> dict:
    """The cells that time the copies, ("host", "base") and ("host", "load" | "store", n), each
    a function building its plan (when the profiler prepares it: a cell left out costs nothing)."""
    runner = profiler.runner
    if not hasattr(runner.cache, "host_transfers"):
        return {}
    count = min(max(HOST_BLOCKS), runner.cache.num_blocks)
    stored: list = []

    def plan(kind: str = "", n: int = 0):
        """A 16-token chunk of its own, with ``n`` blocks loaded before it or stored."""
        if not stored:  # the blocks and identities copied, stored once (what the load cells read)
            blocks = profiler._scattered_blocks(count)(count)
            stored.extend(zip(blocks, (_IDENTITY + i for i in range(count))))
            runner.cache.host_transfers(tuple(stored), ())
        base = profiler._plan([(16, 16, False)])
        pairs = tuple(stored[:n])
        return replace(base, host_loads=pairs) if kind == "load" else replace(base, host_stores=pairs)

    cells = {("host", "base"): plan}
    for n in (n for n in HOST_BLOCKS if n <= count):
        for kind in ("load", "store"):
            cells["host", kind, n] = lambda kind=kind, n=n: plan(kind, n)
    return cells


def host_tables(medians: dict, block_size: int) -> dict[str, tuple]:
    """``host_kv_copy`` (loads) and ``host_kv_store`` from the medians of ``host_cells``: seconds
    by tokens copied, from 0; never below zero, nor below a smaller copy's (noise)."""
    if ("host", "base") not in medians:
        return {}
    base = medians["host", "base"]["overhead"]  # the copies are host work, outside the timed kernels
    tables = {}
    for kind, name in (("load", "host_kv_copy"), ("store", "host_kv_store")):
        counts = sorted(n for key in medians if key[:2] == ("host", kind) for n in key[2:])
        tokens = np.array([0.0] + [n * block_size for n in counts])
        seconds = np.array([0.0] + [max(medians["host", kind, n]["overhead"] - base, 0.0) for n in counts])
        tables[name] = (("tokens",), (tokens,), np.maximum.accumulate(seconds))
    return tables


def forget_host(runner) -> None:
    """Drops the identities ``host_cells`` stored from the engine's host copies."""
    host = getattr(runner.cache, "host", None)
    for identity in [i for i in (host or ()) if i >= _IDENTITY]:
        del host[identity]
