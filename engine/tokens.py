"""Token ids for segment-chain prompts, materialised only for what runs.

Token ``i`` of segment ``s`` is a fixed hash of ``(s, i)``, so two prompts that share a segment
share its tokens, and a prompt's tokens never need to exist as a whole list. A workload made
from real token ids (``workload=prompts``) brings a table of its segments' tokens instead, and
those are what the model reads.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from scheduler.errors import ConfigError
from scheduler.prompt import Prompt

_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def segment_tokens(segment_id: int, offsets: np.ndarray, vocab_size: int) -> np.ndarray:
    with np.errstate(over="ignore"):
        seed = _mix(np.array([segment_id & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]
        values = _mix(offsets.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + seed)
    return (values % np.uint64(vocab_size)).astype(np.int64)


def check_token_table(table: Mapping[int, np.ndarray], vocab_size: int) -> None:
    """A workload's segment tokens must be ids of the model's vocabulary."""
    largest = max((int(tokens.max()) for tokens in table.values() if len(tokens)), default=-1)
    if largest >= vocab_size:
        raise ConfigError(f"the workload's prompts hold token id {largest:,}, outside the model's vocabulary of "
                          f"{vocab_size:,}: were they tokenized for another model?")


def prompt_tokens(prompt: Prompt, start: int, end: int, vocab_size: int,
                  table: Mapping[int, np.ndarray] | None = None,
                  generated: Mapping[int, np.ndarray] | None = None) -> np.ndarray:
    """Token ids of prompt positions ``[start, end)``: a segment that is an earlier request's
    output (``generated``: output segment id -> the tokens generated) reads those; the others
    from ``table`` (segment id -> its token ids) where given, else hashed from the segment ids."""
    pieces = []
    seg_start = 0
    for segment_id, length in prompt:
        seg_end = seg_start + length
        if seg_end > start and seg_start < end:
            low, high = max(start, seg_start) - seg_start, min(end, seg_end) - seg_start
            if generated and segment_id in generated:
                pieces.append(generated[segment_id][low:high])
            elif table is None:
                pieces.append(segment_tokens(segment_id, np.arange(low, high), vocab_size))
            else:
                tokens = table.get(segment_id)
                if tokens is None or len(tokens) < high:
                    raise ConfigError(f"segment {segment_id} of a prompt has no tokens (or too few) in the "
                                      f"workload's token table")
                pieces.append(tokens[low:high].astype(np.int64))
        if seg_end >= end:
            break
        seg_start = seg_end
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
