"""A closed loop's clients (``Workload.closed_loop``): each keeps one request in flight. At the
start each client sends the first turn of a session; when a request finishes, its client sends
that session's next turn after the think time, or, the session done, the first turn of the next
session nobody has started. Without sessions every request is a session of one turn, sent in
workload order. Sessions that arrive on their own (``ClosedLoop.clients`` None) each have a
client from their first turn's arrival time. The simulator, its replicas behind a router and the
engine loop all ask this, so their clients behave alike; they keep the requests not yet arrived
in arrival order (``add_sent``)."""
from __future__ import annotations

from bisect import insort
from operator import attrgetter
from typing import Sequence

import numpy as np

from scheduler import Request
from scheduler.errors import ConfigError

from .workload import Workload


class ClientPool:
    def __init__(self, workload: Workload) -> None:
        if workload.closed_loop is None:
            raise ConfigError(f"workload {workload.name!r} has no closed loop (workload.arrivals.process=closed)")
        loop = workload.closed_loop
        by_id = {r.req_id: r for r in workload.requests}
        # each request's think time (before it is sent), drawn once, so a run's order of sends
        # cannot change which request waits how long
        if loop.think_cv > 0 and loop.think_s > 0:
            shape = 1.0 / (loop.think_cv * loop.think_cv)
            draws = np.random.default_rng(loop.seed).gamma(shape, loop.think_s / shape, len(workload.requests))
            self._think = dict(zip(by_id, draws.tolist()))
        else:
            self._think = dict.fromkeys(by_id, float(loop.think_s))
        sessions = workload.sessions if workload.sessions is not None else tuple((r.req_id,) for r in workload.requests)
        self._next: dict[int, Request] = {}  # request id -> its session's next turn
        for session in sessions:
            for turn, following in zip(session, session[1:]):
                self._next[turn] = by_id[following]
        self._fresh = iter([by_id[session[0]] for session in sessions])  # sessions nobody has started
        if loop.clients is None:  # every session at its own arrival time
            self.first = sorted(self._fresh, key=attrgetter("arrival_s", "req_id"))
        else:
            self.first = [request for _, request in zip(range(loop.clients), self._fresh)]  # sent at t = 0
        self._known = set(by_id)

    def sent_after(self, finished: tuple[int, ...], now: float) -> list[Request]:
        """The requests clients send because ``finished`` finished at ``now``, arriving after the
        think time (a grouped schedule's prefix pseudo-requests are no client's)."""
        sent = []
        for req_id in finished:
            if req_id in self._known:
                following = self._next.pop(req_id, None) or next(self._fresh, None)
                if following is not None:
                    sent.append(following.with_arrival(now + self._think[following.req_id]))
        return sent


def add_sent(requests: list[Request], taken: int, sent: list[Request]) -> None:
    """Puts requests clients just sent among those not yet taken (``requests[taken:]``), in
    arrival order (after those due at the same time)."""
    if not sent:
        return
    if taken == len(requests) or requests[-1].arrival_s <= min(r.arrival_s for r in sent):
        requests.extend(sorted(sent, key=attrgetter("arrival_s")))  # the common case: after them all
        return
    for request in sent:
        insort(requests, request, lo=taken, key=attrgetter("arrival_s"))


def client_pool(workload: Workload) -> ClientPool | None:
    """The workload's client pool; None for an open loop (arrival times in the requests).
    Sessions need a closed loop: their turns wait for each other."""
    if workload.closed_loop is None:
        if workload.sessions is not None:
            raise ConfigError(f"workload {workload.name!r} holds sessions, whose turns wait for each other: give "
                              f"it a client pool (workload.arrivals.process=closed workload.arrivals.clients=N) or "
                              f"the sessions' arrivals (workload.arrivals.process=poisson workload.arrivals.rate=R, "
                              f"sessions a second; workload.arrivals.think_s between turns)")
        return None
    return ClientPool(workload)


def arrival_order(workload: Workload) -> tuple[ClientPool | None, Sequence[Request], list[Request]]:
    """(the client pool, None for an open loop; every request in the order it can arrive, for
    checks before a run; the requests due from the start, by arrival time, which a closed loop's
    clients extend as they send). The simulator, its routed replicas and the engine loop start so."""
    pool = client_pool(workload)
    if pool is None:
        ordered = sorted(workload.requests, key=attrgetter("arrival_s", "req_id"))
        return None, ordered, ordered
    return pool, workload.requests, list(pool.first)
