"""Counters the scheduler keeps for run summaries."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class SchedulerStats:
    logical_prefill_tokens: int = 0    # sum of prompt lengths of added requests
    computed_prefill_tokens: int = 0   # prompt tokens computed (group prefixes and recompute included)
    computed_tokens: int = 0           # every token computed, prompt and output
    num_preemptions: int = 0
    num_group_preemptions: int = 0   # group prefixes dropped and recomputed
    host_loaded_blocks: int = 0      # blocks loaded from the host tier instead of computed
    host_remote_blocks: int = 0      # of them, stored by another engine (a shared tier)
    first_admissions: int = 0        # requests (and group prefixes) admitted at least once

    @property
    def prefill_token_saving(self) -> float:
        if self.logical_prefill_tokens == 0:
            return 0.0
        return 1.0 - self.computed_prefill_tokens / self.logical_prefill_tokens
