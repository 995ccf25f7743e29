"""Global prefix identification: prefix-sharing groups for a set of requests (BatchLLM §4.2).

After MaximizeReuse each first-level node is a group ``(shared prefix, distinct suffixes)``.
Engine-side rules from the BatchLLM prototype: a group with one member, or whose prefix is
shorter than one KV block, becomes plain requests; a prefix is cut to whole KV blocks and its
tail moves into every suffix. One rule of ours: the prefix is also cut so that every member
keeps at least one token of its own (its last prompt token must be computed to sample from),
which is what makes a prompt that is a strict prefix of another work.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ._compiled import compiled
from .gc_pause import call_with_cyclic_gc_paused
from .prefix_tree import prefix_groups
from .prompt import Prompt
from .request import Request


@dataclass(frozen=True, slots=True)
class PrefixGroup:
    prefix_len: int               # tokens, a whole number of KV blocks
    member_ids: tuple[int, ...]   # request ids, in workload order


@dataclass(frozen=True, slots=True)
class Grouping:
    groups: tuple[PrefixGroup, ...]
    plain_ids: tuple[int, ...]
    logical_prefill_tokens: int
    computed_prefill_tokens: int

    @property
    def saving(self) -> float:
        """``1 - computed prefill tokens / logical prefill tokens`` (BatchLLM Eq. 2)."""
        if self.logical_prefill_tokens == 0:
            return 0.0
        return 1.0 - self.computed_prefill_tokens / self.logical_prefill_tokens

    @property
    def share_degrees(self) -> list[int]:
        return [len(group.member_ids) for group in self.groups]


def group_requests(requests: Sequence[Request], block_size: int = 16) -> Grouping:
    """The prefix groups of ``requests`` (and the rest, plain), by request id."""
    groups, plain, logical, computed = plan_groups([r.prompt for r in requests], [r.prompt_len for r in requests],
                                                   block_size)
    return Grouping(tuple([PrefixGroup(cut, tuple([requests[i].req_id for i in members])) for cut, members in groups]),
                    tuple([requests[i].req_id for i in plain]), logical, computed)


def plan_groups(prompts: Sequence[Prompt], lengths: Sequence[int], block_size: int = 16):
    """``group_requests`` by position: ``([(prefix length, member positions), ...], plain
    positions, logical prefill tokens, computed prefill tokens)``, groups in the order of their
    first member, positions ascending (online regrouping maps them to its own request states)."""
    # the tree is acyclic, and the collector scanning its ~10^5 fresh nodes over and over
    # doubled the grouping time of 100,000 requests
    return call_with_cyclic_gc_paused(_plan, prompts, lengths, block_size)


def _plan(prompts: Sequence[Prompt], lengths: Sequence[int], block_size: int):
    groups: list[tuple[int, list[int]]] = []
    plain: list[int] = []
    logical = 0
    computed = 0
    for prefix_len, members in _prefix_groups(prompts, lengths):  # members: positions, ascending
        member_lengths = [lengths[i] for i in members]
        total = sum(member_lengths)
        logical += total
        usable = min(prefix_len, min(member_lengths) - 1)
        cut = (usable // block_size) * block_size
        if len(members) < 2 or cut < block_size:
            plain.extend(members)
            computed += total
            continue
        groups.append((cut, members))
        computed += cut + total - cut * len(members)
    groups.sort(key=_first_member)
    plain.sort()
    return groups, plain, logical, computed


def _first_member(group: tuple[int, list[int]]) -> int:
    return group[1][0]


_prefix_groups = compiled("prefix_groups", "scheduler._tree") or prefix_groups
