# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled twin of ``prefix_tree.prefix_groups`` (the radix tree, BatchLLM's MaximizeReuse and
the first-level groups), for the online regrouping that runs it over the waiting queue again
and again. The same algorithm step for step, with the same list orders, on typed nodes; one
difference of representation: a node without children has ``children = None`` instead of an
empty map or list. ``prefix_tree.py`` is the specification and the fallback where this module
was not built; a test holds the two to the same answers on random segment chains.
"""


cdef class _Node:
    cdef tuple edge
    cdef long long length
    cdef object children  # None (no child yet), a dict while building, a list after freezing
    cdef list ends
    cdef long long leaves

    def __cinit__(self, tuple edge, long long length):
        self.edge = edge
        self.length = length
        self.children = None
        self.ends = []
        self.leaves = 0


cdef long long _edge_length(tuple edge):
    cdef long long total = 0
    for segment in edge:
        total += <long long>segment[1]
    return total


cdef void _insert(_Node root, tuple prompt, Py_ssize_t index, long long total) except *:
    cdef _Node node = root, child, inner, leaf
    cdef Py_ssize_t position = 0, size = len(prompt), matched, limit, edge_len
    cdef long long consumed = 0
    cdef tuple edge
    cdef dict children
    while True:
        node.leaves += 1
        if position == size:
            node.ends.append(index)
            return
        head = prompt[position]
        if node.children is None:
            node.children = {}
        children = <dict>node.children
        found = children.get(head)
        if found is None:
            leaf = _Node(prompt[position:], total - consumed)
            leaf.ends.append(index)
            leaf.leaves = 1
            children[head] = leaf
            return
        child = <_Node>found
        edge = child.edge
        edge_len = len(edge)
        matched = 1
        limit = min(edge_len, size - position)
        while matched < limit and edge[matched] == prompt[position + matched]:
            matched += 1
        if matched < edge_len:  # split the edge: a new inner node takes the common part
            inner = _Node(edge[:matched], _edge_length(edge[:matched]))
            inner.leaves = child.leaves
            child.edge = edge[matched:]
            child.length -= inner.length
            inner.children = {child.edge[0]: child}
            children[head] = inner
            child = inner
        node = child
        position += matched
        consumed += child.length


cdef void _freeze(_Node root) except *:
    cdef list stack = [root]
    cdef _Node node
    while stack:
        node = <_Node>stack.pop()
        if node.children is not None:
            node.children = list((<dict>node.children).values())
            stack.extend(<list>node.children)


cdef void _lift_grandchildren(_Node parent, _Node child) except *:
    cdef _Node grandchild, only
    cdef list children = <list>child.children
    for grandchild in list(children):
        if (grandchild.leaves - 1) * grandchild.length - child.length > 0:
            children.remove(grandchild)
            child.leaves -= grandchild.leaves
            grandchild.edge = child.edge + grandchild.edge
            grandchild.length += child.length
            (<list>parent.children).append(grandchild)
        if len(children) == 1 and not child.ends:
            only = <_Node>children[0]
            child.edge = child.edge + only.edge
            child.length += only.length
            child.children = only.children
            child.ends = only.ends
            break


cdef void _maximize_reuse(_Node root) except *:
    _freeze(root)
    cdef list pairs = []
    cdef list stack = [(root, None, False)]
    cdef _Node node, child
    while stack:
        node, parent, expanded = stack.pop()
        if expanded:
            if parent is not None:
                pairs.append((parent, node))
            continue
        stack.append((node, parent, True))
        for child in reversed(<list>node.children):
            if child.children:
                stack.append((child, node, False))
    for parent, node in pairs:
        _lift_grandchildren(<_Node>parent, node)


def prefix_groups(prompts, lengths):
    """``(prefix length, prompt indices)`` per first-level group after MaximizeReuse."""
    cdef _Node root = _Node((), 0)
    cdef Py_ssize_t index
    for index in range(len(prompts)):
        _insert(root, prompts[index], index, lengths[index])
    if root.children is None:
        return []
    _maximize_reuse(root)
    cdef list groups = [], members, stack
    cdef _Node top, node
    for top in <list>root.children:
        members = []
        stack = [top]
        while stack:
            node = <_Node>stack.pop()
            members.extend(node.ends)
            if node.children is not None:
                stack.extend(<list>node.children)
        members.sort()
        groups.append((top.length, members))
    return groups
