"""The scheduler's hot path builds its value objects without their dataclass ``__init__``
(contract.py's ``_builder``): the objects must be the ones the constructors make."""
import dataclasses
import random

import pytest

from scheduler.contract import (BatchPlan, DecodeBatch, ScheduledChunk, SharedPrefixGroup, StepResult, new_chunk,
                                new_decode_batch, new_plan, new_shared_prefix_group, new_step_result)


def _values(rng: random.Random, count: int) -> list:
    return [rng.choice([rng.randrange(-5, 10_000), rng.random(), (rng.randrange(9), rng.randrange(9)), True])
            for _ in range(count)]


@pytest.mark.parametrize("cls, build", [(ScheduledChunk, new_chunk), (SharedPrefixGroup, new_shared_prefix_group),
                                        (DecodeBatch, new_decode_batch), (BatchPlan, new_plan)])
def test_builders_make_what_the_constructors_make(cls, build):
    rng = random.Random(7)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    for _ in range(50):
        values = _values(rng, len(names))
        built, made = build(*values), cls(*values)
        assert type(built) is cls and built == made and hash(built) == hash(made)
        # every slot set, the ones the builder does not take to the constructor's defaults
        assert all(getattr(built, f.name) == getattr(made, f.name) for f in dataclasses.fields(cls))
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(built, names[0], 1)
    with pytest.raises(TypeError):
        build(*range(len(names) + 1))  # a field too many is refused as the constructor refuses it


def test_plan_built_without_init_still_builds_its_chunks_once():
    decodes = new_decode_batch(4, (1, 2), (10, 20), (8, 9), (), 36)
    plan = new_plan(4, (new_chunk(3, 0, 5, (), False, 7),), (), (), (), decodes, 0, 0, (), (), (), 0, ())
    chunks = plan.chunks
    assert [c.req_id for c in chunks] == [1, 2, 3] and [c.start for c in chunks] == [14, 24, 0]
    assert plan.chunks is chunks  # the cached tuple, set through the frozen slot


def test_step_result_without_tokens_has_read_only_empty_mappings():
    result = new_step_result(3, 0.25)
    assert result == StepResult(3, 0.25) and not result.sampled_tokens and not result.kernel_s
    with pytest.raises(TypeError):
        result.sampled_tokens[1] = 2  # shared between results: nobody may fill it
