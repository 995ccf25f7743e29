"""Splitting a workload over data-parallel replicas (engines that each hold the whole model).

- ``round_robin``: request i (in arrival order) to replica i mod N, as a load balancer that
  knows nothing of prefixes spreads a batch; every replica then sees every prefix.
- ``prefix``: BatchLLM's global prefix groups (``scheduler.grouping``) stay whole, so a prefix
  is computed on one replica only; groups and ungrouped requests are packed onto the least
  loaded replica, largest first (LPT), by an estimate of their work: the prompt tokens they
  compute (a group's prefix once) plus their output tokens. A group that does not fit in the
  least loaded replica's fair share is cut there: members fill that replica up to its share and
  the rest go on to the next (each piece computes the prefix again), or one replica would get
  most of a batch that shares one system prompt.
"""
from __future__ import annotations

import heapq
from dataclasses import replace

from scheduler.errors import ConfigError
from scheduler.grouping import group_requests

from .workload import Workload

SHARDINGS = ("prefix", "round_robin")


def shard_workload(workload: Workload, replicas: int, how: str = "prefix", block_size: int = 16) -> list[Workload]:
    """``replicas`` workloads whose requests together are ``workload``'s, each in the
    original order; the same workload back when ``replicas`` is 1."""
    if not isinstance(replicas, int) or replicas < 1:
        raise ConfigError(f"replicas is {replicas!r}; expected a whole number >= 1")
    if how not in SHARDINGS:
        raise ConfigError(f"unknown sharding {how!r}; expected one of {list(SHARDINGS)}")
    if replicas == 1:
        return [workload]
    requests = sorted(workload.requests, key=lambda r: (r.arrival_s, r.req_id))
    if how == "round_robin":
        parts = [requests[i::replicas] for i in range(replicas)]
    else:
        parts = _by_prefix(requests, replicas, block_size)
    return [replace(workload, name=f"{workload.name}[{index + 1}/{replicas}]", requests=tuple(part))
            for index, part in enumerate(parts)]


def _by_prefix(requests: list, replicas: int, block_size: int) -> list[list]:
    by_id = {r.req_id: r for r in requests}
    position = {r.req_id: i for i, r in enumerate(requests)}
    grouping = group_requests(requests, block_size)
    units = []  # (prefix computed once, [(request id, its own work)]), groups then ungrouped requests
    for group in grouping.groups:
        cut = group.prefix_len
        units.append((cut, [(i, by_id[i].prompt_len - cut + by_id[i].output_len) for i in group.member_ids]))
    units += [(0, [(i, by_id[i].prompt_len + by_id[i].output_len)]) for i in grouping.plain_ids]
    fair = sum(prefix + sum(w for _, w in members) for prefix, members in units) / replicas
    units.sort(key=lambda unit: (-(unit[0] + sum(w for _, w in unit[1])), position[unit[1][0][0]]))
    loads = [(0, index) for index in range(replicas)]
    parts: list[list[int]] = [[] for _ in range(replicas)]
    held: list[set[int]] = [set() for _ in range(replicas)]  # the units each replica has a piece of
    for unit, (prefix, members) in enumerate(units):
        while members:
            load, index = heapq.heappop(loads)
            own_prefix = 0 if unit in held[index] else prefix  # a replica computes a prefix once
            room = fair - load
            if own_prefix + sum(w for _, w in members) <= room:
                count = len(members)
            else:  # fill this replica up to its share (one member where none is left); the rest go on
                used, count = own_prefix, 0
                while count < len(members) and used + members[count][1] <= room:
                    used += members[count][1]
                    count += 1
                count = max(count, 1)
            taken, members = members[:count], members[count:]
            parts[index].extend(i for i, _ in taken)
            held[index].add(unit)
            heapq.heappush(loads, (load + own_prefix + sum(w for _, w in taken), index))
    return [sorted((by_id[i] for i in ids), key=lambda r: position[r.req_id]) for ids in parts]
