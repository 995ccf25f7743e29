"""The radix tree and MaximizeReuse have a compiled twin (scheduler/_tree.pyx) that online
regrouping uses: it must find exactly the groups, prefix lengths and member orders of the
Python specification (prefix_tree.py), or schedules would depend on whether a C compiler was
present at install time."""
import random

import pytest
from hypothesis import given, settings, strategies as st

from scheduler._compiled import compiled
from scheduler.prefix_tree import build_tree, first_level_groups, prefix_groups

NATIVE = compiled("prefix_groups", "scheduler._tree")
needs_native = pytest.mark.skipif(NATIVE is None, reason="scheduler/_tree.pyx not compiled here")


def random_prompts(seed: int) -> list[tuple]:
    """Paths through a random tree of segments: shared prefixes several levels deep, prompts
    ending at inner nodes (strict prefixes of others), repeats, and edges of very different
    lengths, so that MaximizeReuse both lifts grandchildren and merges what is left."""
    rng = random.Random(seed)
    nodes = [()]
    for segment_id in range(rng.randrange(1, 40)):
        parent = rng.choice(nodes)
        nodes.append(parent + ((segment_id % 7 if rng.random() < 0.3 else 100 + segment_id,
                                rng.choice([1, 2, 5, 40, 300])),))
    weights = [rng.random() ** 3 for _ in nodes]
    prompts = []
    for _ in range(rng.randrange(0, 80)):
        path = rng.choices(nodes, weights)[0]
        if not path or rng.random() < 0.5:
            path = path + ((1000 + len(prompts), rng.choice([1, 3, 50])),)
        prompts.append(path)
    return prompts


def lengths_of(prompts):
    return [sum(length for _, length in prompt) for prompt in prompts]


@needs_native
@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_compiled_tree_finds_the_same_groups(seed):
    prompts = random_prompts(seed)
    assert NATIVE(prompts, lengths_of(prompts)) == prefix_groups(prompts, lengths_of(prompts))


def test_the_random_prompts_make_maximize_reuse_change_the_groups():
    """The generator above exercises the reshaping, not just the plain radix tree: in many of
    its workloads MaximizeReuse changes the first-level groups."""
    changed = 0
    for seed in range(200):
        prompts = random_prompts(seed)
        plain = first_level_groups(build_tree(prompts, lengths_of(prompts)))
        changed += prefix_groups(prompts, lengths_of(prompts)) != plain
    assert changed >= 40, changed
