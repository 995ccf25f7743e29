"""Prompts as chains of segments, and the KV-block identities derived from them.

A prompt is a tuple of ``(segment_id, length)`` pairs. Two prompts share exactly their
common leading segments, compared as whole ``(segment_id, length)`` pairs: a segment id
seen with two lengths is two different segments. Nothing here materialises token ids.
"""
from __future__ import annotations

import numpy as np

from ._compiled import compiled
from .errors import WorkloadError

Segment = tuple[int, int]
Prompt = tuple[Segment, ...]

MAX_SEGMENT_LEN = (1 << 32) - 1  # a sanity bound: no real segment comes near 4 billion tokens


def prompt_length(prompt: Prompt) -> int:
    return sum(length for _, length in prompt)


def validate_prompt(prompt: object, where: str) -> int:
    """Checks a segment chain and returns its length in tokens; ``where`` names the request.

    The common case (a tuple of pairs of plain ints) is checked in C-level passes over the
    segments; anything else goes through the loop below, which names what is wrong."""
    if type(prompt) is tuple and len(prompt) == 1:  # one segment of its own (trace loaders' prompts)
        segment = prompt[0]
        if type(segment) is tuple and len(segment) == 2:
            segment_id, length = segment
            if type(segment_id) is int and type(length) is int and 0 < length <= MAX_SEGMENT_LEN:
                return length
    elif type(prompt) is tuple and prompt and set(map(type, prompt)) == {tuple} and set(map(len, prompt)) == {2}:
        ids, lengths = zip(*prompt)
        if (set(map(type, ids)) == {int} and set(map(type, lengths)) == {int}
                and min(lengths) > 0 and max(lengths) <= MAX_SEGMENT_LEN):
            return sum(lengths)
    return _validate_segments(prompt, where)


def _validate_segments(prompt: object, where: str) -> int:
    if not isinstance(prompt, tuple) or len(prompt) == 0:
        raise WorkloadError(f"{where}: prompt is empty; expected a non-empty tuple of (segment_id, length)")
    total = 0
    for index, segment in enumerate(prompt):
        if not (isinstance(segment, tuple) and len(segment) == 2):
            raise WorkloadError(f"{where}: segment {index} is {segment!r}; expected (segment_id, length)")
        segment_id, length = segment
        if not isinstance(segment_id, int) or not isinstance(length, int):
            raise WorkloadError(f"{where}: segment {index} {segment!r} must hold two integers")
        if length <= 0 or length > MAX_SEGMENT_LEN:
            raise WorkloadError(
                f"{where}: segment {index} has length {length}; expected 1..{MAX_SEGMENT_LEN} tokens")
        total += length
    return total


class PythonChainIndex:
    """Interns segment-chain prefixes, so that a KV block's identity is a small integer.

    The identity of the block ending at token ``e`` is (the interned chain up to and including
    the segment holding token ``e - 1``, the offset of ``e`` in that segment): equal exactly
    when the first ``e`` tokens of two prompts are equal, given that equal segments are equal
    token runs. Identities are dense: each chain node, when first seen, gets consecutive keys
    for the blocks ending inside its segment (where its segment starts, and so which blocks
    end in it, is fixed by the chain). Keys therefore increase along a prompt, and key ->
    block can be an array. One index is shared by everything that must agree on identities.

    ``ChainIndex`` is its compiled twin (``_native.pyx``) where that was built, as for the
    block manager (``kv_blocks.py``): the same keys in the same order.
    """

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self._nodes: dict[tuple[int, int, int], tuple[int, int]] = {}  # -> (node, its first key)
        self.num_keys = 0

    def __len__(self) -> int:
        return len(self._nodes)

    def full_block_keys(self, prompt: Prompt) -> np.ndarray:
        """Identities of every block that lies wholly inside the prompt, in order (int64)."""
        nodes = self._nodes
        size = self.block_size
        firsts: list[int] = []
        counts: list[int] = []
        node = 0
        seg_start = 0
        for segment_id, length in prompt:
            lookup = (node, segment_id, length)
            seg_end = seg_start + length
            count = seg_end // size - seg_start // size  # blocks ending inside this segment
            entry = nodes.get(lookup)
            if entry is None:
                entry = nodes[lookup] = (len(nodes) + 1, self.num_keys)
                self.num_keys += count
            node = entry[0]
            if count:
                firsts.append(entry[1])
                counts.append(count)
            seg_start = seg_end
        if len(firsts) <= 4:  # most prompts: a few numpy calls beat the general form's dozen
            if len(firsts) == 1:
                return np.arange(firsts[0], firsts[0] + counts[0], dtype=np.int64)
            return np.concatenate([np.arange(first, first + count, dtype=np.int64)
                                   for first, count in zip(firsts, counts)] or [np.empty(0, np.int64)])
        lengths = np.array(counts, dtype=np.int64)
        total = int(lengths.sum())
        # key i of the prompt = first key of its segment + its rank inside the segment
        shift = np.array(firsts, dtype=np.int64) - (np.cumsum(lengths) - lengths)
        return np.repeat(shift, lengths) + np.arange(total, dtype=np.int64)


NativeChainIndex = compiled("ChainIndex")
ChainIndex = NativeChainIndex or PythonChainIndex
