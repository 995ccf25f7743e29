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
from scheduler.grouping import plan_groups

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
    # by position in ``requests`` (arrival order) throughout: a replica's share is its sorted positions
    lengths = [r.prompt_len for r in requests]
    groups, plain, _, _ = plan_groups([r.prompt for r in requests], lengths, block_size)
    units = []  # (prefix computed once, [(position, its own work)], their own work), groups then the rest
    for cut, members in groups:
        work = [(i, lengths[i] - cut + requests[i].output_len) for i in members]
        units.append((cut, work, sum(w for _, w in work)))
    units += [(0, [(i, lengths[i] + requests[i].output_len)], lengths[i] + requests[i].output_len) for i in plain]
    fair = sum(prefix + own for prefix, _, own in units) / replicas
    units.sort(key=lambda unit: (-(unit[0] + unit[2]), unit[1][0][0]))
    loads = [(0, index) for index in range(replicas)]
    parts: list[list[int]] = [[] for _ in range(replicas)]
    held: list[set[int]] = [set() for _ in range(replicas)]  # the units each replica has a piece of
    for unit, (prefix, members, rest) in enumerate(units):
        start = 0
        while start < len(members):
            load, index = heapq.heappop(loads)
            own_prefix = 0 if unit in held[index] else prefix  # a replica computes a prefix once
            room = fair - load
            if own_prefix + rest <= room:
                end, used = len(members), rest
            else:  # fill this replica up to its share (one member where none is left); the rest go on
                end, used = start, 0
                while end < len(members) and own_prefix + used + members[end][1] <= room:
                    used += members[end][1]
                    end += 1
                if end == start:
                    end, used = start + 1, members[start][1]
            parts[index].extend(i for i, _ in members[start:end])
            held[index].add(unit)
            heapq.heappush(loads, (load + own_prefix + used, index))
            rest -= used
            start = end
    return [[requests[i] for i in sorted(positions)] for positions in parts]
