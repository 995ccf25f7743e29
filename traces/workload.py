"""A workload: requests (arrival time, segment-chain prompt, output length) plus a name."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from scheduler import Request


@dataclass(frozen=True)
class ClosedLoop:
    """A client pool: ``clients`` requests in flight, each client sending its next one after a
    think time (mean ``think_s``; gamma-distributed with coefficient of variation ``think_cv``,
    drawn per request from ``seed``; 0: always ``think_s``). ``clients`` None: sessions that
    arrive on their own (an open loop of agents' jobs): each session's first turn at its arrival
    time, each later turn the think time after the one before it finished."""
    clients: int | None
    think_s: float = 0.0
    think_cv: float = 0.0
    seed: int = 0


@dataclass(frozen=True)
class Workload:
    name: str
    requests: tuple[Request, ...]
    source: str = "synthetic"              # where it came from (file path or generator)
    notes: tuple[str, ...] = field(default=())  # warnings raised while loading, kept for reports
    # the token ids of each prompt segment, where the prompts are real tokens (workload=prompts);
    # None: the engine derives a segment's tokens from its id (engine/tokens.py)
    segment_tokens: Mapping[int, np.ndarray] | None = field(default=None, compare=False, repr=False)
    # a closed loop: (clients, think seconds). Each client sends its next request (in workload
    # order) when its last one finished, after the think time; the first `clients` at t = 0, so
    # arrival times come from the run, not from the requests (which all say 0). None: open loop.
    closed_loop: ClosedLoop | None = None
    # turns of conversations (agents' sessions): each session's request ids in turn order; a
    # closed loop's client sends a session's next turn when its last one finished. None: every
    # request a session of its own.
    sessions: tuple[tuple[int, ...], ...] | None = None

    def __len__(self) -> int:
        return len(self.requests)

    @property
    def prompt_tokens(self) -> int:
        return sum(r.prompt_len for r in self.requests)

    @property
    def output_tokens(self) -> int:
        return sum(r.output_len for r in self.requests)

    @property
    def is_offline(self) -> bool:
        return self.closed_loop is None and all(r.arrival_s == 0.0 for r in self.requests)

    def describe(self) -> str:
        count = len(self.requests)
        span = max((r.arrival_s for r in self.requests), default=0.0)
        if self.closed_loop is not None:
            loop = self.closed_loop
            think = f"{loop.think_s:g} s" + (f" (mean, cv {loop.think_cv:g})" if loop.think_cv else "")
            if loop.clients is None:
                first = [r.arrival_s for r in self.requests if r.req_id in {s[0] for s in self.sessions or ()}]
                timing = (f"{len(self.sessions or ()):,} sessions arriving over {max(first, default=0.0):,.1f} s, "
                          f"each sending its next turn {think} after its last one finished")
            else:
                timing = (f"a closed loop of {loop.clients:,} clients, each sending its next request {think} after "
                          f"its last one finished" + (f", {len(self.sessions):,} sessions of turns" if self.sessions else ""))
        else:
            timing = "offline (all at t=0)" if self.is_offline else f"arrivals over {span:,.1f} s"
        return (f"{self.name}: {count:,} requests, {self.prompt_tokens:,} prompt + {self.output_tokens:,} "
                f"output tokens, " + timing)

    def head(self, count: int) -> "Workload":
        """The first ``count`` requests (and the turns of each session among them)."""
        kept = self.requests[:count]
        sessions = self.sessions
        if sessions is not None:
            ids = {r.req_id for r in kept}
            sessions = tuple(t for t in (tuple(i for i in s if i in ids) for s in sessions) if t)
        return Workload(self.name, kept, self.source, self.notes, self.segment_tokens, self.closed_loop, sessions)
