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
from heapq import heappop, heappush
from operator import attrgetter

from .contract import DecodeBatch, SharedPrefixGroup, new_decode_batch
from .request import RequestState


ADMISSION = attrgetter("admit_seq")  # sort key: the order in which requests were admitted
_REQ_ID = attrgetter("req_id")


class DecodeCohort:
    def __init__(self, block_size: int, clip: int | None = None) -> None:
        """``clip``: ``remaining_outputs`` counts each member's tokens still to sample up to it
        (reserve.py): members with more are tracked apart until they have fewer."""
        self.block_size = block_size
        self.clip = clip
        self.states: list[RequestState] = []    # admission order
        self.ids: list[int] = []
        self.offsets: list[int] = []
        self.prompt_lens: list[int] = []
        self.seqs: list[int] = []               # admission sequence numbers, ascending
        self.offset_sum = 0
        self.end_sum = 0     # members' end steps + 1: the tokens a member still samples are that - step
        self.output_sum = 0  # members' output lengths
        self._far: dict[int, int] = {}  # members with more than ``clip`` tokens to sample: req id -> end + 1
        self._far_sum = 0
        self._far_heap: list[tuple[int, int, int]] = []  # (step it comes within clip, req id, end + 1)
        self.due: dict[int, list[RequestState]] = {}   # step -> members needing a block in it
        self.ends: dict[int, list[RequestState]] = {}  # step -> members finishing in its update
        self._tables: dict[int, tuple[int, ...]] = {}  # block tables as last emitted, per member
        # members of prefix groups, by group id, each list in admission order: a step's
        # shared-prefix groups come from here in O(groups), not O(members)
        self.by_group: dict[int, list[RequestState]] = {}
        self._group_ids: dict[int, tuple[int, ...]] = {}  # by_group's req ids, as last asked for
        # by_group's groups sorted by (first member's admission, group id), kept sorted as members
        # come and go, and beside each the shared-prefix group of its members as last built (None:
        # fewer than two); group_state.shared_prefix_groups rebuilds the stale ones. A step then
        # costs O(groups that changed) in Python, the rest is copies of these lists.
        self.group_keys: list[tuple[int, int]] = []
        self.group_values: list[SharedPrefixGroup | None] = []
        self.stale_groups: set[int] = set()
        self.shared_groups: tuple[SharedPrefixGroup, ...] | None = ()  # group_values' groups; None: stale
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
        end = self.end_step(state) + 1
        self.end_sum += end
        self.output_sum += state.output_len
        if self.clip is not None and end - step > self.clip:
            self._far[state.req_id] = end
            self._far_sum += end
            heappush(self._far_heap, (end - self.clip, state.req_id, end))
        self.due.setdefault(self.due_step(state), []).append(state)
        self.ends.setdefault(self.end_step(state), []).append(state)
        if state.group is not None and state.request is not None:
            group_id = state.group.group_id
            members = self.by_group.get(group_id)
            if members is None:
                self.by_group[group_id] = [state]
                self._place(group_id, seq)
            elif seq > members[-1].admit_seq:
                members.append(state)
            else:
                index = bisect_left([m.admit_seq for m in members], seq)
                if index == 0:  # a new first member: the group moves
                    self._unplace(group_id, members[0].admit_seq)
                    self._place(group_id, seq)
                members.insert(index, state)
            self._group_changed(group_id)

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
        end = self.end_step(state) + 1
        self.end_sum -= end
        self.output_sum -= state.output_len
        if self._far.get(state.req_id) == end:
            del self._far[state.req_id]
            self._far_sum -= end
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
            first = members[0] is state
            members.remove(state)
            if first:
                self._unplace(group_id, state.admit_seq)
                if members:
                    self._place(group_id, members[0].admit_seq)
            if members:
                self._group_changed(group_id)
            else:
                del self.by_group[group_id]
                self._group_ids.pop(group_id, None)
                self.stale_groups.discard(group_id)
                self.shared_groups = None

    def _place(self, group_id: int, first_seq: int) -> None:
        key = (first_seq, group_id)
        index = bisect_left(self.group_keys, key)
        self.group_keys.insert(index, key)
        self.group_values.insert(index, None)

    def _unplace(self, group_id: int, first_seq: int) -> None:
        index = bisect_left(self.group_keys, (first_seq, group_id))
        del self.group_keys[index], self.group_values[index]

    def _group_changed(self, group_id: int) -> None:
        self._group_ids.pop(group_id, None)
        self.stale_groups.add(group_id)
        self.shared_groups = None

    def group_index(self, group_id: int) -> int:
        """Where ``group_id`` (a group in ``by_group``) sits in ``group_keys``."""
        return bisect_left(self.group_keys, (self.by_group[group_id][0].admit_seq, group_id))

    def sync_all(self, step: int) -> None:
        for state in self.states:
            self.sync(state, step)

    def dissolve(self, step: int) -> None:
        """Every member back to one-by-one handling, counters current for ``step``."""
        for state in self.states:
            self.sync(state, step)
            state.cohort_offset = None
        self.states, self.ids, self.offsets, self.prompt_lens, self.seqs = [], [], [], [], []
        self.offset_sum = self.end_sum = self.output_sum = self._far_sum = 0
        self._far, self._far_heap = {}, []
        self.due, self.ends, self._tables, self.by_group, self._group_ids = {}, {}, {}, {}, {}
        self.group_keys, self.group_values, self.stale_groups, self.shared_groups = [], [], set(), ()
        self._frozen = None

    def pause(self) -> None:
        """Its members do not decode in this step (a step of prompts alone: unmixed.py): each
        computes in the next step what it would have in this one (offsets one lower, every event
        a step later). O(members), in list operations, where leaving and joining again costs a
        bisect and buckets a member."""
        count = len(self.ids)
        if not count:
            return
        for state in self.states:
            state.cohort_offset -= 1
        self.offsets = [offset - 1 for offset in self.offsets]
        self.offset_sum -= count
        self.end_sum += count
        self.due = {key + 1: members for key, members in self.due.items()}
        self.ends = {key + 1: members for key, members in self.ends.items()}
        if self._far_heap:
            self._far = {req_id: end + 1 for req_id, end in self._far.items()}
            self._far_sum += len(self._far)
            self._far_heap = [(near + 1, req_id, end + 1) for near, req_id, end in self._far_heap]  # (order kept)
        self._frozen = None

    def remaining_outputs(self, step: int, clipped: bool = True) -> int:
        """The tokens the members still sample from ``step`` on (this step's included), each
        counted up to the cohort's ``clip`` (``clipped``, where it has one) or all."""
        count = len(self.ids)
        clip = self.clip
        if not clipped or clip is None:
            return self.end_sum - count * step
        heap, far = self._far_heap, self._far
        while heap and heap[0][0] <= step:  # within clip from here on
            _, req_id, end = heappop(heap)
            if far.get(req_id) == end:  # (else it left, or joined again with another entry)
                del far[req_id]
                self._far_sum -= end
        return self.end_sum - self._far_sum - (count - len(far)) * step + clip * len(far)

    def group_order(self) -> list[int]:
        """``by_group``'s group ids by their first member's admission."""
        return [group_id for _, group_id in self.group_keys]

    def group_req_ids(self, group_id: int) -> tuple[int, ...]:
        """The request ids of ``by_group[group_id]``, rebuilt only after the group changed."""
        ids = self._group_ids.get(group_id)
        if ids is None:
            ids = self._group_ids[group_id] = tuple(map(_REQ_ID, self.by_group[group_id]))
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
        if tables:  # empty unless block tables are emitted (the engine's plans)
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
