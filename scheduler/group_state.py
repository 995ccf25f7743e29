"""A prefix group while it is scheduled: its prefix (a prefill-only request) and its members."""
from __future__ import annotations

from operator import attrgetter
from typing import TYPE_CHECKING

from .contract import SharedPrefixGroup, new_shared_prefix_group
from .grouping import plan_groups
from .request import RequestState

if TYPE_CHECKING:
    from .cohort import DecodeCohort
    from .scheduler import Scheduler


class GroupState:
    __slots__ = ("group_id", "prefix", "members", "num_unfinished", "holder_blocks",
                 "started", "prefix_done", "done_seq", "arrival_s", "prefill_tokens", "output_tokens")

    def __init__(self, group_id: int, prefix_len: int, members: list[RequestState]) -> None:
        self.group_id = group_id
        self.members = members
        representative = members[0]
        self.prefix = RequestState(-(group_id + 1), None, representative.prompt, prefix_len,
                                   0, min(map(_ARRIVAL, members)), group=self)
        self.num_unfinished = len(members)
        self.holder_blocks: list[int] = []
        self.started = False
        self.prefix_done = False
        self.done_seq = 0  # the scheduler's admission count when its prefix was last done
        self.arrival_s = self.prefix.arrival_s
        # the prefix once, then each member's own part
        self.prefill_tokens = prefix_len + sum(map(_PROMPT_LEN, members)) - prefix_len * len(members)
        self.output_tokens = sum(member.expected_output_len for member in members)  # as policies see them
        for member in members:
            member.group = self

    @property
    def prefix_len(self) -> int:
        return self.prefix.prompt_len


def regroup_waiting(scheduler: "Scheduler") -> None:
    """Groups new arrivals together with every waiting request not in a started group. Deferred
    while the arrivals are few against a long queue, so the cost stays amortised linear."""
    waiting = scheduler.waiting
    if not scheduler._ungrouped:
        return
    if waiting.peek() is not None and len(scheduler._ungrouped) * 10 < waiting.ordered_requests:
        return
    pending: list[RequestState] = []
    states = scheduler.states
    for unit in waiting.take_ordered():
        if isinstance(unit, GroupState):  # dissolved: not started (or dropped: preemption.py), so its
            # prefix is nowhere; a dropped group's finished members stay finished
            pending.extend(member for member in unit.members if not member.finished)
            del states[unit.prefix.req_id]
            unit.prefix.group = None  # no cycle left for the collector (the event loop pauses it)
        else:
            pending.append(unit)
    pending.extend(scheduler._ungrouped)
    scheduler._ungrouped = []
    pending.sort(key=_ARRIVAL_THEN_ID)
    groups, plain, _, _ = plan_groups([s.prompt for s in pending], [s.prompt_len for s in pending],
                                      scheduler.block_size)
    for prefix_len, members in groups:  # each member's group is set anew here...
        state = GroupState(scheduler._num_groups, prefix_len, [pending[i] for i in members])
        scheduler._num_groups += 1
        states[state.prefix.req_id] = state.prefix
        waiting.push(state)
    for index in plain:  # ...and here
        state = pending[index]
        state.group = None
        waiting.push(state)


_ARRIVAL = attrgetter("arrival_s")
_ARRIVAL_THEN_ID = attrgetter("arrival_s", "req_id")
_PROMPT_LEN = attrgetter("prompt_len")


def shared_prefix_groups(scheduler: "Scheduler", cohort: "DecodeCohort",
                         others: list[tuple[RequestState, bool]] = ()) -> tuple[SharedPrefixGroup, ...]:
    """Groups with at least two members scheduled in this step whose prefix is done and held:
    the decode cohort's members (``DecodeCohort.by_group``, each group in admission order) and
    ``others``, saying whether each decodes. A group's members come cohort first, then others,
    and groups in the order their first member comes (as a pass over the cohort's members and
    then the others would find them), each with the number that decode. The cohort keeps its
    groups sorted with each one's group object between steps; here only the groups whose
    members changed are rebuilt, and those that others join."""
    joining: dict[int, list] = {}  # group id -> [others' ids, how many of them decode]
    for state, decodes in others:
        group = state.group
        if group is not None and group.prefix_done and state.request is not None:
            entry = joining.get(group.group_id)
            if entry is None:
                entry = joining[group.group_id] = [[], 0]
            entry[0].append(state.req_id)
            entry[1] += decodes
    active = scheduler._active_groups
    emit = scheduler.emit_block_ids  # block ids, like the chunks', only for an executor that reads them
    values = cohort.group_values
    stale = cohort.stale_groups
    if stale:
        by_group = cohort.by_group
        for group_id in stale:  # cohort members all decode
            ids = cohort.group_req_ids(group_id)
            values[cohort.group_index(group_id)] = (
                _group(active[group_id], ids, len(ids), emit)
                if len(ids) >= 2 and by_group[group_id][0].group.prefix_done else None)
        stale.clear()
    if not joining:
        result = cohort.shared_groups
        if result is None:
            result = cohort.shared_groups = tuple(filter(None, values))
        return result
    merged = list(values)
    rest = []
    for group_id, (other_ids, num_decoding) in joining.items():
        members = cohort.by_group.get(group_id)
        if members is not None and members[0].group.prefix_done:
            ids = cohort.group_req_ids(group_id)
            merged[cohort.group_index(group_id)] = _group(active[group_id], ids + tuple(other_ids),
                                                          len(ids) + num_decoding, emit)
        elif len(other_ids) >= 2:
            rest.append(_group(active[group_id], tuple(other_ids), num_decoding, emit))
    return tuple(filter(None, merged)) + tuple(rest)


def _group(group: GroupState, req_ids: tuple[int, ...], num_decoding: int, emit: bool) -> SharedPrefixGroup:
    return new_shared_prefix_group(group.prefix_len, tuple(group.holder_blocks) if emit else (), req_ids,
                                   num_decoding)
