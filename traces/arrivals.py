"""Arrival processes: offline (all at t=0), Poisson, gamma (bursty), or the trace's own times,
each with a time scale (``scale=2`` stretches the trace to twice its length); or a closed loop
(``closed``): ``clients`` clients each keep one request in flight, sending the next one
``think_s`` after the last one finished, as a benchmark client with a concurrency limit does
(``vllm bench serve --max-concurrency``, an evaluation harness's worker pool)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from scheduler.errors import ConfigError

from .workload import Workload

PROCESSES = ("offline", "trace", "poisson", "gamma", "closed")


def with_arrivals(workload: Workload, process: str = "trace", rate: float | None = None,
                  cv: float = 1.0, scale: float = 1.0, seed: int = 0, clients: int | None = None,
                  think_s: float = 0.0) -> Workload:
    """``rate`` in requests/s (poisson, gamma); ``cv`` the gamma inter-arrival coefficient of
    variation (1 is Poisson, larger is burstier); ``clients`` and ``think_s`` for ``closed``."""
    if process not in PROCESSES:
        raise ConfigError(f"unknown arrival process {process!r}; expected one of {PROCESSES}")
    if process == "closed":
        if isinstance(clients, bool) or not isinstance(clients, int) or clients < 1:
            raise ConfigError(f"closed-loop arrivals need clients >= 1 (requests kept in flight), got {clients!r}")
        if isinstance(think_s, bool) or not isinstance(think_s, (int, float)) or not think_s >= 0:
            raise ConfigError(f"closed-loop think_s is {think_s!r}; expected seconds >= 0")
        requests = tuple(r if r.arrival_s == 0.0 else r.with_arrival(0.0) for r in workload.requests)
        return replace(workload, requests=requests, closed_loop=(clients, float(think_s)))
    if workload.sessions is not None:
        raise ConfigError(f"workload {workload.name!r} holds sessions, whose turns wait for each other: arrivals "
                          f"{process!r} cannot send them; give process=closed with clients=N")
    if clients is not None:
        raise ConfigError(f"clients is for closed-loop arrivals (process=closed), not {process!r}")
    if not scale > 0:
        raise ConfigError(f"arrival time scale is {scale}; expected > 0")
    count = len(workload.requests)
    if process == "offline":
        times = np.zeros(count)
    elif process == "trace":
        times = np.array([r.arrival_s for r in workload.requests], dtype=float)
    else:
        if rate is None or not rate > 0:
            raise ConfigError(f"arrival process {process!r} needs rate > 0 (requests per second), got {rate!r}")
        if not cv > 0:
            raise ConfigError(f"gamma arrivals need cv > 0, got {cv}")
        rng = np.random.default_rng(seed)
        if process == "poisson":
            gaps = rng.exponential(1.0 / rate, count)
        else:  # gamma with mean 1/rate and coefficient of variation cv
            shape = 1.0 / (cv * cv)
            gaps = rng.gamma(shape, 1.0 / (rate * shape), count)
        times = np.concatenate([[0.0], np.cumsum(gaps)[:-1]]) if count else gaps
    if process == "trace" and scale == 1.0:  # the same times: the same (immutable) requests
        requests = workload.requests
    else:
        times = times * scale
        requests = tuple(r.with_arrival(t) for r, t in zip(workload.requests, times.tolist()))
    order = np.argsort(times, kind="stable")  # by time, ties in workload order
    if (order != np.arange(count)).any():
        requests = tuple(requests[i] for i in order.tolist())
    return replace(workload, requests=requests)
