"""BlendServe's order for a batch (Zhao et al., ASPLOS'26, arXiv 2411.16102, §4).

Sorting a batch by prompt keeps prompts that share a prefix together, and with them prompts of
one shape: a stretch of long prompts with short outputs (compute-heavy prefills), then a stretch
of short prompts with long outputs (memory-heavy decodes), where a shuffled batch mixes them
into the same steps. BlendServe keeps the sharing and the mix: the prefix tree is walked depth
first with each node's children in order of their subtree's compute density, densest first, so
the walk runs from compute-heavy to memory-heavy while every subtree stays contiguous; then two
scanners, one from each end of the walk, take turns so that the prompt and output tokens
taken so far keep the whole batch's ratio.

Here density is prompt tokens per output token of a subtree (BlendServe profiles its kernels;
tokens are what a schedule knows), and the turns are decided by that token ratio.
"""
from __future__ import annotations

from typing import Sequence

from .prompt import Prompt


def blend_order(prompts: Sequence[Prompt], prompt_tokens: Sequence[int], output_tokens: Sequence[int]) -> list[int]:
    """Positions of ``prompts`` in BlendServe's order (``output_tokens``: what the schedule
    knows of each one's output, > 0)."""
    walk = dense_first_walk(prompts, prompt_tokens, output_tokens)
    total_p = sum(prompt_tokens)
    total_d = sum(output_tokens)
    order: list[int] = []
    low, high = 0, len(walk) - 1
    taken_p = taken_d = 0
    while low <= high:
        if taken_p * total_d <= total_p * taken_d:  # short of prompt tokens: the compute-heavy end
            index = walk[low]
            low += 1
        else:
            index = walk[high]
            high -= 1
        order.append(index)
        taken_p += prompt_tokens[index]
        taken_d += output_tokens[index]
    return order


def dense_first_walk(prompts: Sequence[Prompt], prompt_tokens: Sequence[int],
                     output_tokens: Sequence[int]) -> list[int]:
    """The prefix tree of ``prompts`` (a node per leading run of segments) depth first: at each
    node the prompts ending there, then its children by their subtree's prompt tokens per
    output token, highest first (ties by segment)."""
    node_of: dict[tuple[int, tuple[int, int]], int] = {}
    children: list[list[tuple[tuple[int, int], int]]] = [[]]
    ends: list[list[int]] = [[]]
    sums_p = [0]
    sums_d = [0]
    for index, prompt in enumerate(prompts):
        node = 0
        p, d = prompt_tokens[index], output_tokens[index]
        sums_p[0] += p
        sums_d[0] += d
        for segment in prompt:
            child = node_of.get((node, segment))
            if child is None:
                child = node_of[node, segment] = len(children)
                children.append([])
                ends.append([])
                sums_p.append(0)
                sums_d.append(0)
                children[node].append((segment, child))
            node = child
            sums_p[node] += p
            sums_d[node] += d
        ends[node].append(index)
    walk: list[int] = []
    stack = [0]
    while stack:
        node = stack.pop()
        walk.extend(ends[node])
        ranked = sorted(children[node], key=lambda item: (-sums_p[item[1]] / sums_d[item[1]], item[0]))
        stack.extend(child for _, child in reversed(ranked))
    return walk
