"""A workload: requests (arrival time, segment-chain prompt, output length) plus a name."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from scheduler import Request


@dataclass(frozen=True)
class Workload:
    name: str
    requests: tuple[Request, ...]
    source: str = "synthetic"              # where it came from (file path or generator)
    notes: tuple[str, ...] = field(default=())  # warnings raised while loading, kept for reports
    # the token ids of each prompt segment, where the prompts are real tokens (workload=prompts);
    # None: the engine derives a segment's tokens from its id (engine/tokens.py)
    segment_tokens: Mapping[int, np.ndarray] | None = field(default=None, compare=False, repr=False)

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
        return all(r.arrival_s == 0.0 for r in self.requests)

    def describe(self) -> str:
        count = len(self.requests)
        span = max((r.arrival_s for r in self.requests), default=0.0)
        return (f"{self.name}: {count:,} requests, {self.prompt_tokens:,} prompt + {self.output_tokens:,} "
                f"output tokens, " + ("offline (all at t=0)" if self.is_offline else f"arrivals over {span:,.1f} s"))

    def head(self, count: int) -> "Workload":
        return Workload(self.name, self.requests[:count], self.source, self.notes, self.segment_tokens)
