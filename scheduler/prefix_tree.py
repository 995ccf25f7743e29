"""Radix tree over segment chains and BatchLLM's MaximizeReuse pass (arXiv 2412.03594, §4.2).

The tree is compressed: an edge is a run of segments. A prompt that ends inside the tree
(a strict prefix of another prompt) is recorded in ``ends`` of the node where it stops; these
play the role of the paper's sentinel leaves.
"""
from __future__ import annotations

from typing import Sequence

from .prompt import Prompt, Segment


class Node:
    __slots__ = ("edge", "length", "children", "ends", "leaves")

    def __init__(self, edge: tuple[Segment, ...], length: int) -> None:
        self.edge = edge
        self.length = length                   # tokens on the edge into this node
        self.children: dict | list = {}        # dict while building, list after freeze()
        self.ends: list[int] = []              # indices of prompts ending here
        self.leaves = 0                        # prompts in this subtree

    def __repr__(self) -> str:
        return f"Node(len={self.length}, leaves={self.leaves}, ends={self.ends})"


def _edge_length(edge: tuple[Segment, ...]) -> int:
    return sum(length for _, length in edge)


def build_tree(prompts: Sequence[Prompt], lengths: Sequence[int] | None = None) -> Node:
    """``lengths`` (tokens per prompt), when the caller knows them, saves summing segments."""
    root = Node((), 0)
    if lengths is None:
        lengths = [_edge_length(prompt) for prompt in prompts]
    for index, prompt in enumerate(prompts):
        _insert(root, prompt, index, lengths[index])
    return root


def _insert(root: Node, prompt: Prompt, index: int, total: int) -> None:
    node = root
    position = 0
    consumed = 0  # tokens on the path so far
    size = len(prompt)
    while True:
        node.leaves += 1
        if position == size:
            node.ends.append(index)
            return
        head = prompt[position]
        child = node.children.get(head)
        if child is None:
            edge = prompt[position:]
            leaf = Node(edge, total - consumed)
            leaf.ends.append(index)
            leaf.leaves = 1
            node.children[head] = leaf
            return
        edge = child.edge
        matched = 1
        limit = min(len(edge), size - position)
        while matched < limit and edge[matched] == prompt[position + matched]:
            matched += 1
        if matched < len(edge):  # split the edge: a new inner node takes the common part
            inner = Node(edge[:matched], _edge_length(edge[:matched]))
            inner.leaves = child.leaves
            child.edge = edge[matched:]
            child.length -= inner.length
            inner.children[child.edge[0]] = child
            node.children[head] = inner
            child = inner
        node = child
        position += matched
        consumed += child.length


def freeze(root: Node) -> None:
    """Turns children maps into lists: after MaximizeReuse siblings may share a first segment."""
    stack = [root]
    while stack:
        node = stack.pop()
        node.children = list(node.children.values())
        stack.extend(node.children)


def maximize_reuse(root: Node) -> None:
    """Enlarges first-level prefixes, bottom-up, as BatchLLM's Algorithm 1.

    For each child ``c`` of a node ``D`` (after ``c``'s own subtree is done) and each child
    ``g`` of ``c``: lift ``g`` to ``D`` (its edge becoming ``c.edge + g.edge``) when
    ``(leaves(g) - 1) * len(g) - len(c) > 0``; once ``c`` is left with one child and no prompt
    ending at it, ``c`` absorbs that child. Iterative, so deep trees cannot overflow the stack.
    """
    freeze(root)
    pairs: list[tuple[Node, Node]] = []  # (parent, child) in post-order; leaves need no pass
    stack: list[tuple[Node, Node | None, bool]] = [(root, None, False)]
    while stack:
        node, parent, expanded = stack.pop()
        if expanded:
            if parent is not None:
                pairs.append((parent, node))
            continue
        stack.append((node, parent, True))
        for child in reversed(node.children):
            if child.children:
                stack.append((child, node, False))
    for parent, child in pairs:
        _lift_grandchildren(parent, child)


def _lift_grandchildren(parent: Node, child: Node) -> None:
    for grandchild in list(child.children):
        gain = (grandchild.leaves - 1) * grandchild.length - child.length
        if gain > 0:
            child.children.remove(grandchild)
            child.leaves -= grandchild.leaves
            grandchild.edge = child.edge + grandchild.edge
            grandchild.length += child.length
            parent.children.append(grandchild)
        if len(child.children) == 1 and not child.ends:
            only = child.children[0]
            child.edge = child.edge + only.edge
            child.length += only.length
            child.children = only.children
            child.ends = only.ends
            break


def first_level_groups(root: Node) -> list[tuple[int, list[int]]]:
    """``(prefix length, prompt indices)`` for each child of the root, indices sorted."""
    groups = []
    if isinstance(root.children, dict):
        freeze(root)
    for top in root.children:
        members: list[int] = []
        stack = [top]
        while stack:
            node = stack.pop()
            members.extend(node.ends)
            stack.extend(node.children)
        members.sort()
        groups.append((top.length, members))
    return groups


def prefix_groups(prompts: Sequence[Prompt], lengths: Sequence[int]) -> list[tuple[int, list[int]]]:
    """``(prefix length, prompt indices)`` per first-level group after MaximizeReuse: the tree
    built, reshaped and read. ``_tree.pyx`` compiles the same steps (``grouping.py`` picks it)."""
    root = build_tree(prompts, lengths)
    maximize_reuse(root)
    return first_level_groups(root)
