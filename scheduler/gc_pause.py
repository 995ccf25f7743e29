"""Pausing Python's cyclic garbage collector around work that makes no reference cycles.

Reference counting frees everything such work lets go of; the cyclic collector would find
nothing, yet each of its full passes walks every live object (hundreds of thousands of request
states and prefix-tree nodes), again and again as the work allocates. Callers say why their
work is acyclic, and a test holds each of them to it.
"""
from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

T = TypeVar("T")


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


def call_with_cyclic_gc_paused(function: Callable[..., T], *args) -> T:
    """``function(*args)`` with the collector disabled, as ``cyclic_gc_paused`` does; without
    entering a context where it is disabled already (a call repeated inside the simulator's
    paused event loop, thousands of times a run)."""
    if not gc.isenabled():
        return function(*args)
    gc.disable()
    try:
        return function(*args)
    finally:
        gc.enable()
