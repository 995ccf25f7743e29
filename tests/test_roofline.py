"""The analytic roofline profile's shapes: what the cost model charges must follow the kernels
it stands for."""
import numpy as np
import pytest

from scheduler.model_spec import model_spec
from sim.cost_model import CostModel
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
