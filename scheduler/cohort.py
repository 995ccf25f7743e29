"""The decode cohort: running requests in steady decode, advanced lazily.

A request decoding in a step computes one token at position ``offset + step`` for a fixed
``offset``, as long as it keeps decoding. So the cohort stores the offset, not the counters,
and a step costs O(what changes): the members that need a new KV block this step (bucketed
by step, from the block table's length) and those that finish (bucketed by step, from prompt
plus output length). ``num_computed_tokens``, ``num_output_tokens`` and ``num_tokens`` of a
member are brought up to date (``sync``) when it leaves, when the scheduler falls back to
handling requests one by one, or when someone asks (``Scheduler.sync``).

Members are kept in admission order, the order in which the scheduler would have listed
their decodes one by one: allocations, releases and plans come out in the same order.
"""
from __future__ import annotations

from bisect import bisect_left
from operator import attrgetter

from .contract import DecodeBatch, SharedPrefixGroup, new_decode_batch
from .request import RequestState


ADMISSION = attrgetter("admit_seq")  # sort key: the order in which requests were admitted


class DecodeCohort:
    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self.states: list[RequestState] = []    # admission order
        self.ids: list[int] = []
        self.offsets: list[int] = []
        self.prompt_lens: list[int] = []
        self.seqs: list[int] = []               # admission sequence numbers, ascending
        self.offset_sum = 0
        self.due: dict[int, list[RequestState]] = {}   # step -> members needing a block in it
        self.ends: dict[int, list[RequestState]] = {}  # step -> members finishing in its update
        self._tables: dict[int, tuple[int, ...]] = {}  # block tables as last emitted, per member
        # members of prefix groups, by group id, each list in admission order: a step's
        # shared-prefix groups come from here in O(groups), not O(members)
        self.by_group: dict[int, list[RequestState]] = {}
        self._group_ids: dict[int, tuple[int, ...]] = {}  # by_group's req ids, as last asked for
        self._group_order: list[int] | None = []  # by_group's ids by first member; None: stale
        self.shared_groups: dict[int, SharedPrefixGroup] = {}  # per group, its last one (group_state.py)
        self._frozen: tuple | None = None  # (ids, offsets, prompt_lens) as tuples; None: stale

    def __len__(self) -> int:
        return len(self.ids)

    # --- where a member's events fall --------------------------------------------------------
    def due_step(self, state: RequestState) -> int:
        """The step whose decode writes the first position past the block table."""
        return len(state.block_table) * self.block_size - state.cohort_offset

    @staticmethod
    def end_step(state: RequestState) -> int:
        """The step whose update samples the last token (its decode reads position p + o - 2)."""
        return state.prompt_len + state.output_len - 2 - state.cohort_offset

    # --- membership ---------------------------------------------------------------------------
    def join(self, state: RequestState, step: int) -> None:
        """``state`` decodes from ``step`` on (its counters are current for ``step``)."""
        offset = state.num_computed_tokens - step
        state.cohort_offset = offset
        self._frozen = None
        seq = state.admit_seq
        if not self.seqs or seq > self.seqs[-1]:
            self.states.append(state)
            self.ids.append(state.req_id)
            self.offsets.append(offset)
            self.prompt_lens.append(state.prompt_len)
            self.seqs.append(seq)
        else:
            index = bisect_left(self.seqs, seq)
            self.states.insert(index, state)
            self.ids.insert(index, state.req_id)
            self.offsets.insert(index, offset)
            self.prompt_lens.insert(index, state.prompt_len)
            self.seqs.insert(index, seq)
        self.offset_sum += offset
        self.due.setdefault(self.due_step(state), []).append(state)
        self.ends.setdefault(self.end_step(state), []).append(state)
        if state.group is not None and state.request is not None:
            members = self.by_group.setdefault(state.group.group_id, [])
            if not members or seq > members[-1].admit_seq:
                if not members:
                    self._group_order = None
                members.append(state)
            else:
                index = bisect_left([m.admit_seq for m in members], seq)
                if index == 0:
                    self._group_order = None
                members.insert(index, state)
            self._group_ids.pop(state.group.group_id, None)

    @staticmethod
    def sync(state: RequestState, step: int) -> None:
        """Brings a member's counters up to date for ``step`` (before it is scheduled)."""
        computed = state.cohort_offset + step
        delta = computed - state.num_computed_tokens
        if delta:
            state.num_computed_tokens = computed
            state.num_output_tokens += delta
            state.num_tokens += delta

    def leave(self, state: RequestState, step: int) -> None:
        self.sync(state, step)
        self._frozen = None
        index = bisect_left(self.seqs, state.admit_seq)  # members are kept in admission order
        if self.states[index] is not state:
            raise AssertionError(f"request {state.req_id} is not where its admission puts it in the cohort")
        del self.states[index], self.ids[index], self.offsets[index], self.prompt_lens[index], self.seqs[index]
        self.offset_sum -= state.cohort_offset
        for buckets, key in ((self.due, self.due_step(state)), (self.ends, self.end_step(state))):
            bucket = buckets[key]
            bucket.remove(state)
            if not bucket:
                del buckets[key]
        state.cohort_offset = None
        self._tables.pop(state.req_id, None)
        if state.group is not None and state.request is not None:
            group_id = state.group.group_id
            members = self.by_group[group_id]
            if members[0] is state:
                self._group_order = None
            members.remove(state)
            if not members:
                del self.by_group[group_id]
                self.shared_groups.pop(group_id, None)
            self._group_ids.pop(group_id, None)

    def sync_all(self, step: int) -> None:
        for state in self.states:
            self.sync(state, step)

    def dissolve(self, step: int) -> None:
        """Every member back to one-by-one handling, counters current for ``step``."""
        for state in self.states:
            self.sync(state, step)
            state.cohort_offset = None
        self.states, self.ids, self.offsets, self.prompt_lens, self.seqs = [], [], [], [], []
        self.offset_sum = 0
        self.due, self.ends, self._tables, self.by_group, self._group_ids = {}, {}, {}, {}, {}
        self._group_order, self.shared_groups, self._frozen = [], {}, None

    def group_order(self) -> list[int]:
        """``by_group``'s group ids by their first member's admission, re-sorted only after a
        group came, went or got a new first member."""
        order = self._group_order
        if order is None:
            order = self._group_order = [group_id for _, group_id in sorted(
                (members[0].admit_seq, group_id) for group_id, members in self.by_group.items())]
        return order

    def group_req_ids(self, group_id: int) -> tuple[int, ...]:
        """The request ids of ``by_group[group_id]``, rebuilt only after the group changed."""
        ids = self._group_ids.get(group_id)
        if ids is None:
            ids = self._group_ids[group_id] = tuple(m.req_id for m in self.by_group[group_id])
        return ids

    # --- one step -----------------------------------------------------------------------------
    def take_due(self, step: int) -> list[RequestState]:
        """The members needing a block in ``step``, in admission order, re-bucketed one block on
        (the caller gives each its block)."""
        due = self.due.pop(step, None)
        if not due:
            return []
        if len(due) > 1:
            due.sort(key=ADMISSION)
        later = self.due.setdefault(step + self.block_size, [])
        later.extend(due)
        tables = self._tables
        for state in due:
            tables.pop(state.req_id, None)
        return due

    def rebucket_due(self) -> None:
        """Recomputes the due buckets from the block tables (after blocks were added in bulk)."""
        self.due, self._tables = {}, {}
        for state in self.states:
            self.due.setdefault(self.due_step(state), []).append(state)

    def take_ends(self, step: int) -> list[RequestState]:
        ends = self.ends.get(step)
        if not ends:
            return []
        if len(ends) > 1:
            ends.sort(key=ADMISSION)
        return list(ends)

    def batch(self, step: int, emit_block_ids: bool) -> DecodeBatch:
        count = len(self.ids)
        blocks = self._block_tables() if emit_block_ids else ()
        members = self._frozen
        if members is None:  # frozen again only after someone joined or left
            members = self._frozen = (tuple(self.ids), tuple(self.offsets), tuple(self.prompt_lens))
        return new_decode_batch(step, *members, blocks, self.offset_sum + count * (step + 1))

    def _block_tables(self) -> tuple[tuple[int, ...], ...]:
        """Each member's block table as a tuple, rebuilt only for members that got a block."""
        tables = self._tables
        out = []
        for state in self.states:
            table = tables.get(state.req_id)
            if table is None:
                table = tables[state.req_id] = tuple(state.block_table)
            out.append(table)
        return tuple(out)
