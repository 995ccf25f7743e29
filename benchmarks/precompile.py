"""Compiles a kernel benchmark's variants in worker processes side by side before the benchmark
times them one by one. On a GPU machine each new variant of the shared-prefix kernel costs
seconds of compiling (Triton's passes, then ptxas) against a fraction of a second of timing, and
a lent GPU's minutes are few: 16 cores compile 8 variants at once. Each worker calls every
kernel of its share once on the benchmark's own inputs, so that Triton compiles the very
specialisations the timing process launches and leaves them in its on-disk cache
(``~/.triton/cache``), which then serves the timing process. Nothing here is timed; a worker's
failure is said and left to the timing process, which compiles what is missing itself.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context


def warm(tasks: list[tuple[str, dict]], shape: tuple, dry: bool) -> list[str]:
    """(In a worker) each (kernel, options) of ``tasks`` called once on the benchmarks' shared-
    prefix case; what failed, said."""
    import torch

    from shared_prefix_case import shared_prefix_case, sweep_calls
    from kernels.shared_prefix import shared_prefix_layout

    device, dtype = ("cpu", torch.float32) if dry else ("cuda", torch.bfloat16)
    case = shared_prefix_case(shape, dtype, device, dry)
    layout = shared_prefix_layout(case["tables"].tolist(), case["contexts"].tolist(), case["group_list"], shape[3],
                                  device)
    per_request, shared = sweep_calls(case, shape[2], layout)
    failed = []
    for kind, options in tasks:
        try:
            (shared if kind == "shared" else per_request)(**options)
        except Exception as error:  # noqa: BLE001 - said; the timing process meets it again
            failed.append(f"{kind} {options}: {type(error).__name__}: {str(error)[:160]}")
    if not dry:
        torch.cuda.synchronize()
    return failed


def precompile(tasks: list[tuple[str, dict]], shape: tuple, dry: bool, workers: int | None = None) -> list[str]:
    """``tasks`` warmed by ``workers`` processes (default: half the cores, at most 8; a dry run: 2,
    two tasks), dealt round-robin; prints what it did and returns the failures."""
    if dry:
        tasks, workers = tasks[:2], 2
    workers = max(1, min(workers or min(8, (os.cpu_count() or 2) // 2), len(tasks)))
    started = time.perf_counter()
    shares = [tasks[index::workers] for index in range(workers)]
    try:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            failed = [line for done in pool.map(warm, shares, [shape] * workers, [dry] * workers) for line in done]
    except Exception as error:  # noqa: BLE001 - the timing process compiles them itself, one by one
        print(f"precompile: the workers failed ({type(error).__name__}: {str(error)[:200]}); compiling as timed")
        return [str(error)]
    print(f"precompile: {len(tasks) - len(failed)} of {len(tasks)} kernel calls compiled by {workers} processes "
          f"in {time.perf_counter() - started:.1f} s", flush=True)
    for line in failed:
        print(f"precompile: failed: {line}")
    return failed
