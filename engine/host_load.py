"""How much of the CPU a virtual machine's hypervisor took while something ran (Linux).

On a shared VM the hypervisor runs other guests on our cores now and then; the kernel counts
that time as "steal" in /proc/stat. A run that lost a fifth of its CPU time that way is a
fifth slower than the profile that predicts it, whatever the model: validation records the
share per engine run so that such a run can be told from a wrong prediction. Yardsticks (fixed
pieces of work, timed) tell how fast the machine is just before a run: a small matrix product
(compute) and a 64 MB copy (memory bandwidth, which other guests share and which moves far more:
over 30 s idle on the 2-core machine, the copy took 2.2-4.2 ms while the product varied 5 %).
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

STAT = Path("/proc/stat")


def cpu_counters() -> tuple[int, int] | None:
    """(busy ticks, stolen ticks) summed over the CPUs since boot; None where /proc/stat has
    no such line (not Linux)."""
    try:
        fields = STAT.read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    if len(fields) < 9 or fields[0] != "cpu":
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[1:9])
    return user + nice + system + irq + softirq + steal, steal


def stolen_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """The share of the busy CPU time between two ``cpu_counters()`` readings that the
    hypervisor took (None where unknown or nothing ran)."""
    if before is None or after is None or after[0] <= before[0]:
        return None
    return (after[1] - before[1]) / (after[0] - before[0])


def _median_ms(work, calls: int, cuda: bool) -> float:
    """Median milliseconds of ``calls`` runs of ``work()`` (synchronised on a GPU)."""
    import torch

    times = []
    for _ in range(calls):
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        work()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def yardstick_ms(device, size: int = 256, calls: int = 30) -> float:
    """Milliseconds of a fixed piece of work (a ``size`` x ``size`` fp32 matrix product), the
    median of ``calls``: how fast the machine is right now, so that runs measured minutes apart
    can be told apart from the machine changing speed under them."""
    import torch

    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    return _median_ms(lambda: torch.mm(a, b), calls, a.is_cuda)


def copy_ms(device, megabytes: int = 64, calls: int = 7) -> float:
    """Milliseconds to copy ``megabytes`` of fp32 from one tensor into another, the median of
    ``calls``: the memory bandwidth the machine gives right now."""
    import torch

    source = torch.ones(megabytes * 2**18, device=device)
    target = torch.empty_like(source)
    return _median_ms(lambda: target.copy_(source), calls, source.is_cuda)
