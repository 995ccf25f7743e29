"""The analytic roofline profile's shapes: what the cost model charges must follow the kernels
it stands for."""
import numpy as np
import pytest

from scheduler.model_spec import model_spec
from sim.cost_model import KERNELS, CostModel
from sim.hardware import hardware_spec
from sim.roofline import build_roofline_profile


@pytest.mark.parametrize("hardware", ["a100-80gb", "h100-sxm", "h200"])
@pytest.mark.parametrize("members,prefix", [(2, 512), (2, 2000), (4, 2000), (16, 16000)])
def test_sharing_a_prefix_never_costs_more_than_reading_it_per_request(hardware, members, prefix):
    # a decode step of 60 groups, each of `members` requests sharing `prefix` tokens and owning
    # 100 more: with the groups' prefixes read once through the fused shared-prefix kernel
    # (one launch for the whole step) it must cost less than reading every prefix per request
    model = model_spec("llama-3.1-8b")
    cost = CostModel(build_roofline_profile(model, hardware_spec(hardware)), model)
    groups = 60
    batch = groups * members
    context_sum = np.array([batch * (prefix + 100.0)])
    shared = ((members, prefix),) * groups
    with_sharing, kernels = cost.decode_steps(batch, context_sum, shared, batch * prefix)
    without, _ = cost.decode_steps(batch, context_sum, (), 0)
    assert kernels["attn_shared_prefix"][0] > 0
    assert with_sharing[0] < without[0]


def test_a_steps_kernel_times_come_in_kernel_order_and_add_up_to_its_time():
    """``CostModel.step`` hands kernel times over as a tuple in KERNELS order (the step log
    stores them by position): each must be its own kernel's lookup, and they sum to the step."""
    from scheduler.contract import DecodeBatch, ScheduledChunk, new_plan
    from sim.cost_model import KERNELS

    model = model_spec("llama-3.1-8b")
    profile = build_roofline_profile(model, hardware_spec("h100-sxm"))
    cost = CostModel(profile, model)
    decodes = DecodeBatch(7, (1, 2, 3), (500, 900, 1200), (400, 800, 1000), (), 503 + 903 + 1203)
    plan = new_plan(7, (ScheduledChunk(4, 256, 200, (), False, 1000),), (), (), (), decodes)
    total, parts, (tokens, prefill, sampled) = cost.step(plan)
    kernels = dict(zip(KERNELS, parts))
    assert len(parts) == len(KERNELS) and (tokens, prefill, sampled) == (203, 200, 3)
    layers = model.num_layers
    t = profile.tables
    assert kernels["attn_prefill"] == pytest.approx(t["attn_prefill"].scalar(200, 456) * layers, rel=1e-12)
    assert kernels["attn_decode"] == pytest.approx(t["attn_decode"].scalar(3, (503 + 903 + 1203) / 3) * layers,
                                                   rel=1e-12)
    assert kernels["mlp"] == pytest.approx(t["mlp"].scalar(203) * layers, rel=1e-12)
    assert kernels["lm_head_sampling"] == pytest.approx(t["lm_head_sampling"].scalar(3), rel=1e-12)
    assert kernels["attn_shared_prefix"] == 0.0
    assert sum(parts) == pytest.approx(total, rel=1e-12)


def test_shared_prefix_groups_cost_the_same_counted_or_left_for_the_cost_model_to_count():
    """A plan's shared-prefix groups carry how many members decode (the scheduler counts), or
    -1, and the cost model counts from the plan's decodes: the step costs the same to the bit.
    A group with fewer than two decoding members reads its prefix as ordinary decodes."""
    from scheduler.contract import DecodeBatch, ScheduledChunk, SharedPrefixGroup, new_plan

    model = model_spec("llama-3.1-8b")
    profile = build_roofline_profile(model, hardware_spec("h100-sxm"))
    cost = CostModel(profile, model)
    decodes = DecodeBatch(7, (1, 2, 3, 5), (500, 900, 1200, 700), (400, 800, 1000, 600), (), 3309 + 704)
    chunks = (ScheduledChunk(4, 256, 200, (), False, 1000), ScheduledChunk(6, 650, 1, (), True, 600))

    def plan(counts):
        groups = (SharedPrefixGroup(384, (), (1, 2, 4), counts[0]), SharedPrefixGroup(576, (), (3, 5, 6), counts[1]),
                  SharedPrefixGroup(128, (), (7, 8), counts[2]))
        return new_plan(7, chunks, groups, (), (), decodes)

    counted = cost.step(plan((2, 3, 0)))
    assert cost.step(plan((2, -1, 0))) == counted == cost.step(plan((-1, -1, -1)))
    shared = profile.tables["attn_shared_prefix"]
    assert dict(zip(KERNELS, counted[1]))["attn_shared_prefix"] == (
        (0.0 + shared.scalar(2, 384)) + shared.scalar(3, 576)) * model.num_layers
    alone = cost.step(plan((1, 3, 0)))  # the first group's one decoding member reads its prefix itself
    assert alone[0] != counted[0]
