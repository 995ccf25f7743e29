"""How much of the CPU a virtual machine's hypervisor took while something ran (Linux).

On a shared VM the hypervisor runs other guests on our cores now and then; the kernel counts
that time as "steal" in /proc/stat. A run that lost a fifth of its CPU time that way is a
fifth slower than the profile that predicts it, whatever the model: validation records the
share per engine run so that such a run can be told from a wrong prediction. A yardstick (a
fixed piece of work, timed) tells how fast the machine is just before a run.
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


def yardstick_ms(device, size: int = 256, calls: int = 30) -> float:
    import torch

    """Milliseconds of a fixed piece of work (a ``size`` x ``size`` fp32 matrix product), the
    median of ``calls``: how fast the machine is right now, so that runs measured minutes apart
    can be told apart from the machine changing speed under them."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    times = []
    for _ in range(calls):
        if a.is_cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        torch.mm(a, b)
        if a.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3
