"""Pausing Python's cyclic garbage collector around work that makes no reference cycles.

Reference counting frees everything such work lets go of; the cyclic collector would find
nothing, yet each of its full passes walks every live object (hundreds of thousands of request
states and prefix-tree nodes), again and again as the work allocates. Callers say why their
work is acyclic, and a test holds each of them to it.
"""
from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Disables the cyclic collector for the block; restores the previous setting however the
    block ends (nested use leaves it disabled until the outermost block ends)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
