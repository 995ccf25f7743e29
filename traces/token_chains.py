"""Segment chains from real token ids: the prompts' compressed prefix tree (a radix tree).

DESIGN.md: "a workload with real token ids is just a chain of one-token or many-token
segments". Each node of the radix tree over the prompts' token sequences is one segment: a
prompt's chain is the path from the root to where it ends, so two chains share exactly their
longest common token prefix (cut where some prompt branches off or ends), and nothing else.

The tree is built from the prompts in lexicographic order with the longest common prefix
(LCP) of neighbours, keeping only the rightmost path on a stack: each prompt costs its LCP
comparison with its neighbour plus its own path, never a walk over every token of every
prompt in Python. Token sequences are sorted as bytes, four per token: fixed-width, so any
two prompts sharing a prefix sort next to those between them, a prefix before its extensions.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from scheduler.prompt import Prompt

MAX_TOKEN_ID = (1 << 32) - 1


class TokenError(ValueError):
    """A token sequence that cannot be a prompt; ``index`` is its position in the input."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(f"prompt {index}: {message}")
        self.index = index


def as_token_array(tokens: Sequence[int] | np.ndarray, index: int) -> np.ndarray:
    """``tokens`` as a uint32 array; a TokenError names what is wrong (empty, not integers,
    out of 0..2**32-1)."""
    array = np.asarray(tokens)
    if array.ndim != 1 or array.size == 0:
        raise TokenError(index, "expected a non-empty list of token ids")
    if array.dtype.kind not in "iu":
        raise TokenError(index, f"token ids must be integers, got {array.dtype} values")
    if array.min() < 0 or array.max() > MAX_TOKEN_ID:
        raise TokenError(index, f"token ids must lie in 0..{MAX_TOKEN_ID}")
    return array.astype(np.uint32, copy=False)


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    shortest = min(a.size, b.size)
    differs = a[:shortest] != b[:shortest]
    first = int(np.argmax(differs)) if shortest else 0
    return first if shortest and differs[first] else shortest


def chains_from_tokens(sequences: Iterable[Sequence[int] | np.ndarray]) -> list[Prompt]:
    """One segment chain per token sequence, in input order. Segment ids are the radix tree's
    nodes, numbered from 0 in order of first use (by input order, root to leaf)."""
    arrays = [as_token_array(tokens, index) for index, tokens in enumerate(sequences)]
    keys = [array.astype(">u4").tobytes() for array in arrays]
    order = sorted(range(len(arrays)), key=keys.__getitem__)
    del keys
    depth = [0]       # tokens from the root to each node's end; node 0 is the root
    parent = [-1]
    ends = [0] * len(arrays)  # the node each prompt ends at
    path = [0]        # the rightmost path, root first
    previous = None
    for index in order:
        tokens = arrays[index]
        shared = 0 if previous is None else _common_prefix(previous, tokens)
        below = -1
        while depth[path[-1]] > shared:
            below = path.pop()
        if depth[path[-1]] < shared:  # the neighbour's edge branches inside: split it there
            depth.append(shared)
            parent.append(path[-1])
            parent[below] = len(depth) - 1
            path.append(len(depth) - 1)
        if tokens.size > shared:
            depth.append(int(tokens.size))
            parent.append(path[-1])
            path.append(len(depth) - 1)
        ends[index] = path[-1]
        previous = tokens
    return _chains(ends, depth, parent)


def _chains(ends: list[int], depth: list[int], parent: list[int]) -> list[Prompt]:
    segment_id = [-1] * len(depth)
    next_id = 0
    chains = []
    for node in ends:
        nodes = []
        while node > 0:
            nodes.append(node)
            node = parent[node]
        nodes.reverse()
        for node in nodes:
            if segment_id[node] < 0:
                segment_id[node] = next_id
                next_id += 1
        chains.append(tuple((segment_id[node], depth[node] - depth[parent[node]]) for node in nodes))
    return chains


def segment_token_table(chains: Sequence[Prompt], sequences: Sequence[np.ndarray]) -> dict[int, np.ndarray]:
    """The token ids of every segment of ``chains`` (made from ``sequences`` by
    ``chains_from_tokens``), each a copy, so that the table keeps only the distinct tokens."""
    table: dict[int, np.ndarray] = {}
    for chain, tokens in zip(chains, sequences):
        start = 0
        for segment, length in chain:
            if segment not in table:
                table[segment] = np.array(tokens[start:start + length], dtype=np.uint32)
            start += length
    return table


def distinct_tokens(chains: Sequence[Prompt]) -> int:
    """Tokens in the prefix tree: what an unbounded prefix cache would compute once each."""
    seen: dict[int, int] = {}
    for chain in chains:
        for segment, length in chain:
            seen[segment] = length
    return sum(seen.values())
