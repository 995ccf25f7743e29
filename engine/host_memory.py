"""Keep freed host memory in the process, so CPU step times measure the model, not the allocator.

glibc's malloc serves blocks above ``M_MMAP_THRESHOLD`` (128 KiB to 32 MiB, adapting) with
fresh ``mmap`` calls and returns them with ``munmap`` on free; it also trims the heap's top
above ``M_TRIM_THRESHOLD``. A CPU forward pass allocates and frees many such tensors (attention
scores of a 1024-token chunk are megabytes) every step, so each step pays page faults and
system calls: on the 2-core development machine that was 20-30 % system time and made one
profile cell read 53 ms in one measurement and 134 ms in the next. With both thresholds raised,
freed tensors stay in the heap and are reused by the next step: system time near 0, repeated
cells within a few percent (figures in the note of issue 7).

Linux with glibc only; anywhere else (macOS, musl) this does nothing and says so.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
_WANTED = (1 << 30, 32 << 20)   # 1 GiB; 32 MiB (glibc's largest dynamic threshold) if refused


def for_device(device: str) -> str:
    """``keep_freed_memory()`` where the tensors live in host memory (CPU runs); what was done,
    for run records."""
    return keep_freed_memory() if str(device).startswith("cpu") else "not applied (device memory)"


@functools.cache
def keep_freed_memory() -> str:
    """Raise glibc's mmap and trim thresholds (once per process). Returns what took effect
    ("glibc mmap/trim threshold 1024 MiB", or why nothing did), for run records."""
    result = "unchanged (not Linux/glibc)"
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            for size in _WANTED:
                if libc.mallopt(M_MMAP_THRESHOLD, size) == 1 and libc.mallopt(M_TRIM_THRESHOLD, size) == 1:
                    result = f"glibc mmap/trim threshold {size >> 20} MiB"
                    break
            else:
                result = "unchanged (mallopt refused)"
        except (OSError, AttributeError) as error:
            result = f"unchanged ({error})"
    return result
