"""Prompts as chains of segments, and the KV-block identities derived from them.

A prompt is a tuple of ``(segment_id, length)`` pairs. Two prompts share exactly their
common leading segments, compared as whole ``(segment_id, length)`` pairs: a segment id
seen with two lengths is two different segments. Nothing here materialises token ids.
"""
from __future__ import annotations

from .errors import WorkloadError

Segment = tuple[int, int]
Prompt = tuple[Segment, ...]

# A block key packs (chain node, token offset inside the node's last segment) into one int;
# offsets stay below 2**32 (a single segment of 4 billion tokens is rejected below).
_OFFSET_BITS = 32
MAX_SEGMENT_LEN = (1 << _OFFSET_BITS) - 1


def prompt_length(prompt: Prompt) -> int:
    return sum(length for _, length in prompt)


def validate_prompt(prompt: object, where: str) -> int:
    """Checks a segment chain and returns its length in tokens; ``where`` names the request."""
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


class ChainIndex:
    """Interns segment-chain prefixes, so that a KV block's identity is a small integer.

    The identity of the block ending at token ``e`` is (the interned chain up to and including
    the segment holding token ``e - 1``, the offset of ``e`` in that segment): equal exactly
    when the first ``e`` tokens of two prompts are equal, given that equal segments are equal
    token runs. One index is shared by everything that must agree on identities.
    """

    def __init__(self) -> None:
        self._nodes: dict[tuple[int, int, int], int] = {}

    def __len__(self) -> int:
        return len(self._nodes)

    def full_block_keys(self, prompt: Prompt, block_size: int) -> list[int]:
        """Identities of every block that lies wholly inside the prompt, in order."""
        nodes = self._nodes
        keys: list[int] = []
        node = 0
        seg_start = 0
        for segment_id, length in prompt:
            lookup = (node, segment_id, length)
            child = nodes.get(lookup)
            if child is None:
                child = len(nodes) + 1
                nodes[lookup] = child
            node = child
            seg_end = seg_start + length
            first_end = (seg_start // block_size + 1) * block_size
            if first_end <= seg_end:
                base = (node << _OFFSET_BITS) - seg_start
                keys.extend([base + end for end in range(first_end, seg_end + 1, block_size)])
            seg_start = seg_end
        return keys
