"""Requests: the immutable description from the workload and the scheduler's mutable progress.

DESIGN.md lists progress and timestamps on ``Request``. They change every step, so they live
in ``RequestState``, owned by the scheduler; ``Request`` stays a frozen value object that
workloads, executors and records can share freely.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

from .errors import WorkloadError
from .prompt import Prompt, validate_prompt

if TYPE_CHECKING:
    from .group_state import GroupState


@dataclass(frozen=True, slots=True)
class Request:
    req_id: int
    arrival_s: float
    prompt: Prompt
    output_len: int
    prompt_len: int = field(init=False, compare=False)
    # the segment id later prompts carry this request's output as (an agent's answer in its next
    # turn): the generated blocks are cached under those prompts' identities, as vLLM caches
    # filled blocks. None: no later prompt holds it.
    output_segment: int | None = None
    # what a policy that may read output lengths sees (use_output_lengths): an estimate, as a
    # real scheduler has at best; None: the length itself
    output_estimate: int | None = None
    # order=priority (vLLM's --scheduling-policy priority): lower first, ties by arrival; None: its
    # arrival time. Agents' turns carry their session's index: the oldest session's turn first
    priority: float | None = None

    def __post_init__(self) -> None:
        where = f"request {self.req_id}"
        if not isinstance(self.req_id, int) or self.req_id < 0:
            raise WorkloadError(f"{where}: req_id must be a non-negative integer")
        object.__setattr__(self, "prompt_len", validate_prompt(self.prompt, where))
        if not isinstance(self.output_len, int) or self.output_len <= 0:
            raise WorkloadError(f"{where}: output_len is {self.output_len!r}; expected an integer >= 1")
        if not (self.arrival_s >= 0.0):  # also rejects NaN
            raise WorkloadError(f"{where}: arrival_s is {self.arrival_s!r}; expected a time >= 0")
        priority = self.priority
        if priority is not None and not is_finite_number(priority):
            raise WorkloadError(f"{where}: priority is {priority!r}; expected a finite number or None")
        estimate = self.output_estimate
        if estimate is not None and (not isinstance(estimate, int) or isinstance(estimate, bool) or estimate <= 0):
            raise WorkloadError(f"{where}: output_estimate is {estimate!r}; expected an integer >= 1 or None")

    def with_arrival(self, arrival_s: float) -> "Request":
        """This request arriving at ``arrival_s`` (its prompt, already checked, is not checked
        again: an arrival process re-times a million requests in a fraction of the time)."""
        if not (arrival_s >= 0.0):
            raise WorkloadError(f"request {self.req_id}: arrival_s is {arrival_s!r}; expected a time >= 0")
        copy = object.__new__(Request)
        for name in _REQUEST_FIELDS:
            object.__setattr__(copy, name, getattr(self, name))
        object.__setattr__(copy, "arrival_s", arrival_s)
        return copy


def is_finite_number(value) -> bool:
    """A real number (not a bool), neither NaN nor infinite."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and abs(value) < float("inf")


_REQUEST_FIELDS = tuple(f.name for f in fields(Request) if f.name != "arrival_s")


class RequestState:
    """Progress of one request (or of a group's prefix, computed as a prefill-only request).

    One progress rule: ``num_computed_tokens`` catches up with ``num_tokens`` (prompt plus
    tokens sampled so far). When it does, a token is sampled. The last sampled token is never
    fed back, so a finished request has computed ``prompt_len + output_len - 1`` tokens.
    """

    __slots__ = (
        "req_id", "request", "prompt", "prompt_len", "output_len", "arrival_s",
        "num_computed_tokens", "num_output_tokens", "num_tokens", "output_token_ids",
        "block_table", "window_blocks", "block_keys", "num_keys", "num_registered_blocks", "group", "admit_seq",
        "first_scheduled_s", "first_admission", "first_token_s", "finish_s",
        "num_preemptions", "num_cached_tokens", "num_prompt_tokens_computed", "cohort_offset",
    )

    def __init__(self, req_id: int, request: Request | None, prompt: Prompt, prompt_len: int,
                 output_len: int, arrival_s: float, group: "GroupState | None" = None) -> None:
        self.req_id = req_id
        self.request = request
        self.prompt = prompt
        self.prompt_len = prompt_len
        self.output_len = output_len
        self.arrival_s = arrival_s
        self.num_computed_tokens = 0
        self.num_output_tokens = 0
        self.num_tokens = prompt_len          # prompt + tokens sampled so far
        self.output_token_ids: list[int] = []
        self.block_table: list[int] = []
        self.window_blocks: list[int] = []    # its sliding layers' window, held while it runs (kv_hybrid)
        self.block_keys = None                # int64 array of its blocks' identities
        self.num_keys = 0                     # len(block_keys) once computed
        self.num_registered_blocks = 0
        self.group = group
        self.admit_seq = -1
        self.first_scheduled_s: float | None = None
        self.first_admission = -1           # its rank among first admissions (stats.first_admissions)
        self.first_token_s: float | None = None
        self.finish_s: float | None = None
        self.num_preemptions = 0
        self.num_cached_tokens = 0          # prefix-cache hits at first admission
        self.num_prompt_tokens_computed = 0  # prompt tokens computed, recomputation included
        # set while in the scheduler's decode cohort (cohort.py), whose members' token counters
        # are brought up to date lazily
        self.cohort_offset: int | None = None

    @classmethod
    def of(cls, request: Request) -> "RequestState":
        return cls(request.req_id, request, request.prompt, request.prompt_len,
                   request.output_len, request.arrival_s)

    @property
    def expected_output_len(self) -> int:
        """The output length a policy reading output lengths sees: the request's estimate where
        the workload gives one, else the length itself."""
        estimate = None if self.request is None else self.request.output_estimate
        return self.output_len if estimate is None else estimate

    @property
    def is_prefix(self) -> bool:
        """A group's shared prefix, computed once and sampled never."""
        return self.request is None

    @property
    def finished(self) -> bool:
        return self.finish_s is not None
