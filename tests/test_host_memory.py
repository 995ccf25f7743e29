"""engine/host_memory.py: freed large tensors stay in the process instead of being unmapped."""
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]

PROBE = """
import resource, sys
import torch
if sys.argv[1] == "keep":
    from engine.host_memory import keep_freed_memory
    print(keep_freed_memory())
faults = []
for _ in range(30):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = torch.empty(16 << 20)   # 64 MiB: above glibc's largest dynamic mmap threshold
    a.fill_(1.0)
    small = torch.ones(1000)
    del a
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sum(faults[-10:]))
"""


def _probe(mode: str) -> list[str]:
    """A fresh process (mallopt is process-wide): what keep_freed_memory said, and the page
    faults of the last ten of 30 allocate-fill-free rounds."""
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                          env={"OMP_NUM_THREADS": "1"}, cwd=ROOT)
    return done.stdout.split()


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_freed_tensors_are_reused_without_page_faults():
    pages = (64 << 20) // 4096
    plain = int(_probe("plain")[-1])
    *said, kept = _probe("keep")
    assert " ".join(said).startswith("glibc mmap/trim threshold")
    # without it every 64 MiB tensor is a fresh mapping, faulted in page by page; with it the
    # last ten steps reuse the heap
    assert plain >= 10 * pages * 0.9
    assert int(kept) < pages * 0.05
