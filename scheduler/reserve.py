"""Room for the answers still to come, as SGLang's scheduler keeps it
(``ScheduleConfig.new_token_ratio``; SGLang's ``PrefillAdder`` and ``new_token_ratio``).

vLLM admits while the next chunk's blocks are free and preempts when decodes outgrow the cache;
SGLang admits a request only where the free KV (cached blocks no one holds count as free)
covers its prompt and a share of its answer, after the same share of every running request's
answer still to come: ``ratio x min(max_new_tokens - generated, 4096)`` each. The share starts
at 0.7 (times ``--schedule-conservativeness``), falls by equal steps to 0.14 of that over 600
decode steps, goes back to the start when nothing runs, and after a step that preempted is
re-estimated from the requests still running as (tokens generated + 20 x requests) / (their
max_new_tokens + 1), at most 1. Here a request's ``output_len`` is its max_new_tokens (answers
run to their limit, as batchlab generates them), and a step with any decode is a decode step.
Constants from SGLang (``global_config``/``envs``: SGLANG_INIT_NEW_TOKEN_RATIO 0.7,
SGLANG_MIN_NEW_TOKEN_RATIO_FACTOR 0.14, SGLANG_NEW_TOKEN_RATIO_DECAY_STEPS 600,
SGLANG_RETRACT_DECODE_STEPS 20, SGLANG_CLIP_MAX_NEW_TOKENS_ESTIMATION 4096). Which requests
give way when the answers outgrow the cache anyway is ``ScheduleConfig.preemption``: vLLM's
newest-first by default, SGLang's retraction with "sglang" (retract.py).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .request import RequestState
    from .scheduler import Scheduler

CLIP_TOKENS = 4096   # a long answer's share is counted on at most this many of its tokens
MIN_FACTOR = 0.14    # the share falls to this fraction of its start
DECAY_STEPS = 600    # over this many decode steps
RETRACT_STEPS = 20   # decode steps ahead counted for each request still running after a preemption


class OutputReserve:
    def __init__(self, init: float, clip: int = CLIP_TOKENS) -> None:
        self.init = init
        self.clip = clip
        self.min = init * MIN_FACTOR
        self.decay_per_step = (init - self.min) / DECAY_STEPS
        self._start, self._decays = init, 0  # the share: _start less _decays steps of decay, at least min
        self.ratio = init

    def blocks(self, scheduler: "Scheduler", state: "RequestState", allocated_tokens: int) -> float:
        """KV blocks the running requests and ``state`` (admitted with blocks for
        ``allocated_tokens`` of its tokens) are expected to take beyond what they hold."""
        cohort = scheduler.cohort
        # (a member due a block in this step, asked before the decodes take theirs: its next token)
        tokens = self.ratio * cohort.remaining_outputs(scheduler.step) + len(cohort.due.get(scheduler.step, ()))
        for other in scheduler._others.values():
            tokens += self._still_to_take(other, len(other.block_table) * scheduler.block_size)
        return (tokens + self._still_to_take(state, allocated_tokens)) / scheduler.block_size

    def _still_to_take(self, state: "RequestState", allocated_tokens: int) -> float:
        """Its tokens past its allocated blocks (the prompt, and after a preemption the answer so
        far, computed again), and the share of its answer still to come."""
        to_compute = max(0, state.num_tokens - allocated_tokens)
        if state.request is None:  # a group's prefix: no answer
            return to_compute
        return to_compute + self.ratio * min(state.output_len - state.num_output_tokens, self.clip)

    def after_step(self, scheduler: "Scheduler", preempted: bool, chunks, cohort_decoded: bool,
                   steps: int = 1) -> None:
        """The share after a step that listed ``chunks`` besides the cohort's decodes (where
        ``cohort_decoded``), or after ``steps`` steps of a decode stretch (none preempting)."""
        if not scheduler.running:
            self._start, self._decays = self.init, 0
        elif preempted:
            self._start, self._decays = self._estimate(scheduler), 0
        elif cohort_decoded or any(c.start >= c.prompt_len for c in chunks):  # a decode step
            self._decays += steps  # (counted, so that a stretch of k steps ends where k single steps do)
        else:
            return
        self.ratio = max(self._start - self._decays * self.decay_per_step, self.min)

    def _estimate(self, scheduler: "Scheduler") -> float:
        """SGLang's share after a retraction: (generated + 20 a request) / (max_new_tokens + 1)
        over the requests still running, at most 1."""
        cohort = scheduler.cohort
        count = len(cohort.ids)
        limits = cohort.output_sum
        generated = limits - cohort.remaining_outputs(scheduler.step, clipped=False)
        for state in scheduler._others.values():
            if state.request is not None:
                count += 1
                limits += state.output_len
                generated += state.num_output_tokens
        return min(1.0, (generated + RETRACT_STEPS * count) / (limits + 1))
