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
