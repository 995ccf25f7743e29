"""The waiting queue: units (requests, or not-yet-started prefix groups) in policy order.

Preempted requests go to the very front (vLLM), or behind what waits (SGLang); the members of
a group whose prefix just finished go ahead of everything not yet started (the BatchLLM
prototype), in group order. Admission only ever looks at the head (it stops at the first unit
that does not fit), so the ordered part is a heap.
"""
from __future__ import annotations

import heapq
from collections import deque
from typing import Callable, Union

from .blend import blend_order
from .config import ScheduleConfig
from .group_state import GroupState
from .request import RequestState

Unit = Union[RequestState, GroupState]
_UNRANKED = float("inf")


def _priority(state: RequestState) -> float:
    priority = state.request.priority if state.request is not None else None
    return state.arrival_s if priority is None else float(priority)


def _size(unit: Unit) -> int:
    return len(unit.members) if isinstance(unit, GroupState) else 1


class WaitingQueue:
    def __init__(self, config: ScheduleConfig) -> None:
        self.config = config
        self.front: deque[Unit] = deque()
        self._heap: list[list] = []  # [primary, arrival_s, seq, unit]
        self._seq = 0
        self._lpm_sorted = False
        self._unranked = 0  # blend: units pushed since the queue was last ranked (behind the ranked)
        self.ordered_requests = 0  # requests inside the ordered part (a group counts its members)

    def __len__(self) -> int:
        return len(self.front) + len(self._heap)

    def _primary(self, unit: Unit) -> float | tuple:
        order = self.config.order
        if order == "blend":  # behind every ranked unit until the queue is ranked again
            return _UNRANKED
        if order == "priority":
            members = unit.members if isinstance(unit, GroupState) else (unit,)
            return min(_priority(member) for member in members)
        if order == "prompt":  # segment chains compare as the prefix tree's depth-first order
            return unit.prefix.prompt if isinstance(unit, GroupState) else unit.prompt
        if order != "decode_ratio":
            return 0.0
        aware = self.config.use_output_lengths
        if isinstance(unit, GroupState):  # BatchLLM Eq. 4
            return -(unit.output_tokens if aware else 1) / unit.prefill_tokens
        return -(unit.expected_output_len if aware else 1) / unit.prompt_len  # Eq. 3

    def push(self, unit: Unit, arrival_s: float | None = None) -> None:
        """Into the ordered part; ``arrival_s`` (default the unit's own) ranks it among units
        the policy ranks equal: SGLang appends a retracted request to its queue (retract.py)."""
        self._seq += 1
        primary = self._primary(unit)
        arrival = unit.arrival_s if arrival_s is None else arrival_s
        heapq.heappush(self._heap, [primary, arrival, self._seq, unit])
        self.ordered_requests += _size(unit)
        self._unranked += primary is _UNRANKED

    @property
    def stale(self) -> bool:
        """blend: whether to rank the queue before the next step: when the units pushed since
        it was last ranked are a tenth of it, or nothing ranked is left (amortised linear, as
        regrouping: re-ranking on every arrival made a replay of 12,000 requests 80x slower)."""
        unranked = self._unranked
        return bool(unranked) and (unranked * 10 >= len(self._heap) or self._heap[0][0] == _UNRANKED)

    def push_front(self, unit: Unit) -> None:
        self.front.appendleft(unit)

    def ready(self, units: list[Unit]) -> None:
        """Members of a group whose prefix is done: ahead of every unit not yet started, behind
        the members of groups that finished their prefix earlier."""
        self.front.extend(units)

    def peek(self) -> Unit | None:
        if self.front:
            return self.front[0]
        return self._heap[0][3] if self._heap else None

    def pop(self) -> Unit:
        if self.front:
            return self.front.popleft()
        primary, _, _, unit = heapq.heappop(self._heap)
        self.ordered_requests -= _size(unit)
        self._unranked -= primary == _UNRANKED
        return unit

    def take_ordered(self) -> list[Unit]:
        """Removes and returns the ordered part (for regrouping), in queue order."""
        units = [entry[3] for entry in sorted(self._heap)]
        self._heap = []
        self.ordered_requests = 0
        self._unranked = 0
        return units

    def remove_front_where(self, predicate: Callable[[Unit], bool]) -> list[Unit]:
        kept, removed = deque(), []
        for unit in self.front:
            (removed if predicate(unit) else kept).append(unit)
        self.front = kept
        return removed

    def resort(self, cached_tokens: Callable[[Unit], int]) -> None:
        """Orders that rank the whole queue before a step: lpm (cache matches change), blend
        (after new units)."""
        if self.config.order == "lpm":
            self.resort_lpm(cached_tokens)
        elif self.stale:
            self._resort_blend()

    def _resort_blend(self) -> None:
        """BlendServe's order (blend.py) over everything waiting, ties in arrival order; output
        tokens as the schedule knows them (one a request where it may not read them)."""
        self._heap.sort(key=lambda entry: (entry[1], entry[2]))
        units = [entry[3] for entry in self._heap]
        aware = self.config.use_output_lengths
        prompts, prefill, output = [], [], []
        for unit in units:
            if isinstance(unit, GroupState):
                prompts.append(unit.prefix.prompt)
                prefill.append(unit.prefill_tokens)
                output.append(unit.output_tokens if aware else len(unit.members))
            else:
                prompts.append(unit.prompt)
                prefill.append(unit.prompt_len)
                output.append(unit.expected_output_len if aware else 1)
        for rank, index in enumerate(blend_order(prompts, prefill, output)):
            self._heap[index][0] = float(rank)
        heapq.heapify(self._heap)
        self._unranked = 0

    def resort_lpm(self, cached_tokens: Callable[[Unit], int]) -> None:
        """SGLang LPM: longest cached prefix first, FCFS beyond ``lpm_fallback_queue``."""
        if len(self._heap) <= self.config.lpm_fallback_queue:
            for entry in self._heap:
                entry[0] = -float(cached_tokens(entry[3]))
            heapq.heapify(self._heap)
            self._lpm_sorted = True
        elif self._lpm_sorted:
            for entry in self._heap:
                entry[0] = 0.0
            heapq.heapify(self._heap)
            self._lpm_sorted = False
