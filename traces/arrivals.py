"""Arrival processes: offline (all at t=0), Poisson, gamma (bursty), or the trace's own times,
each with a time scale (``scale=2`` stretches the trace to twice its length); or a closed loop
(``closed``): ``clients`` clients each keep one request in flight, sending the next one
``think_s`` after the last one finished, as a benchmark client with a concurrency limit does
(``vllm bench serve --max-concurrency``, an evaluation harness's worker pool)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from scheduler.errors import ConfigError

from .workload import ClosedLoop, Workload

PROCESSES = ("offline", "trace", "poisson", "gamma", "closed")


def with_arrivals(workload: Workload, process: str = "trace", rate: float | None = None,
                  cv: float = 1.0, scale: float = 1.0, seed: int = 0, clients: int | None = None,
                  think_s: float = 0.0, think_cv: float = 0.0) -> Workload:
    """``rate`` in requests/s (poisson, gamma); ``cv`` the gamma inter-arrival coefficient of
    variation (1 is Poisson, larger is burstier); ``clients``, ``think_s`` (mean) and
    ``think_cv`` (0: fixed, 1: exponential, drawn from ``seed``) for ``closed``."""
    if process not in PROCESSES:
        raise ConfigError(f"unknown arrival process {process!r}; expected one of {PROCESSES}")
    if process == "closed":
        if isinstance(clients, bool) or not isinstance(clients, int) or clients < 1:
            raise ConfigError(f"closed-loop arrivals need clients >= 1 (requests kept in flight), got {clients!r}")
        for name, value, expected in (("think_s", think_s, "seconds >= 0"), ("think_cv", think_cv, ">= 0")):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ConfigError(f"closed-loop {name} is {value!r}; expected {expected}")
        requests = tuple(r if r.arrival_s == 0.0 else r.with_arrival(0.0) for r in workload.requests)
        return replace(workload, requests=requests,
                       closed_loop=ClosedLoop(clients, float(think_s), float(think_cv), seed))
    sessions = workload.sessions
    if sessions is not None and process == "trace":
        raise ConfigError(f"workload {workload.name!r} holds sessions, whose turns wait for each other: give the "
                          f"sessions' arrivals (process=poisson, gamma or offline, think_s between turns) or a client "
                          f"pool (process=closed with clients=N)")
    for name, value, unset in (("clients", clients, None), ("think_s", think_s, 0.0), ("think_cv", think_cv, 0.0)):
        if value != unset and (sessions is None or name == "clients"):
            raise ConfigError(f"{name} is for closed-loop arrivals (process=closed)"
                              + (", or sessions' turns" if name != "clients" else "") + f", not {process!r}")
    if not scale > 0:
        raise ConfigError(f"arrival time scale is {scale}; expected > 0")
    count = len(workload.requests) if sessions is None else len(sessions)
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
    if sessions is not None:  # the sessions' first turns at these times; the rest sent as turns finish
        return _session_arrivals(workload, times * scale, think_s, think_cv, seed)
    if process == "trace" and scale == 1.0:  # the same times: the same (immutable) requests
        requests = workload.requests
    else:
        times = times * scale
        requests = tuple(r.with_arrival(t) for r, t in zip(workload.requests, times.tolist()))
    order = np.argsort(times, kind="stable")  # by time, ties in workload order
    if (order != np.arange(count)).any():
        requests = tuple(requests[i] for i in order.tolist())
    return replace(workload, requests=requests)


def _session_arrivals(workload: Workload, times: np.ndarray, think_s: float, think_cv: float,
                      seed: int) -> Workload:
    for name, value, expected in (("think_s", think_s, "seconds >= 0"), ("think_cv", think_cv, ">= 0")):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ConfigError(f"sessions' {name} is {value!r} (workload.arrivals.{name}, between a session's "
                              f"turns); expected {expected}")
    start = {session[0]: t for session, t in zip(workload.sessions, times.tolist())}
    requests = tuple(r.with_arrival(start.get(r.req_id, 0.0)) for r in workload.requests)
    return replace(workload, requests=requests, closed_loop=ClosedLoop(None, float(think_s), float(think_cv), seed))
