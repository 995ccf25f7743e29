"""The analytic roofline profile's shapes: what the cost model charges must follow the kernels
it stands for."""
import numpy as np
import pytest

from scheduler.errors import ConfigError
from scheduler.model_spec import model_spec
from sim.cost_model import KERNELS, CostModel
from sim.hardware import hardware_spec
from sim.roofline import build_roofline_profile


@pytest.mark.parametrize("hardware", ["a100-80gb", "a100-40gb", "l40s", "h100-sxm", "h200"])
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
    plan = new_plan(7, (ScheduledChunk(4, 256, 200, (), False, 1000),), (), (), (), decodes, 0, 0, (), (), (), 0, ())
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
        return new_plan(7, chunks, groups, (), (), decodes, 0, 0, (), (), (), 0, ())

    counted = cost.step(plan((2, 3, 0)))
    assert cost.step(plan((2, -1, 0))) == counted == cost.step(plan((-1, -1, -1)))
    shared = profile.tables["attn_shared_prefix"]
    assert dict(zip(KERNELS, counted[1]))["attn_shared_prefix"] == (
        (0.0 + shared.scalar(2, 384)) + shared.scalar(3, 576)) * model.num_layers
    alone = cost.step(plan((1, 3, 0)))  # the first group's one decoding member reads its prefix itself
    assert alone[0] != counted[0]


def test_tensor_parallel_gpus_each_take_their_share_and_pay_two_all_reduces_a_layer():
    model = model_spec("llama-3.1-8b")
    one = build_roofline_profile(model, hardware_spec("h100-sxm")).tables
    free = dict(interconnect_bandwidth=1e30, allreduce_latency_s=0.0)  # communication for nothing
    for p in (2, 4):
        split = build_roofline_profile(model, hardware_spec("h100-sxm", tensor_parallel=p, **free)).tables
        # each GPU does 1/p of every kernel's work (compute-bound: 8,192 tokens, a long prefill
        # chunk; memory-bound: decode attention reads 1/p of the KV); kernel launches do not split
        share = lambda table, launches, *shape: (one[table].scalar(*shape) - launches * 4e-6) / p + launches * 4e-6
        for name, launches in (("linear_qkv", 1), ("linear_o", 1), ("mlp", 3), ("lm_head_sampling", 2)):
            assert split[name].scalar(8192) == pytest.approx(share(name, launches, 8192), rel=1e-9), (name, p)
        assert split["attn_prefill"].scalar(4096, 8192) == pytest.approx(share("attn_prefill", 1, 4096, 8192), rel=1e-9)
        assert split["attn_decode"].scalar(64, 4096) == pytest.approx(share("attn_decode", 1, 64, 4096), rel=1e-9)
    # with NVLink: linear_o and mlp each carry one all-reduce of the tokens' hidden states, the
    # LM head a gather of the logits; the QKV GEMM and attention none
    hardware = hardware_spec("h100-sxm", tensor_parallel=8)
    real = build_roofline_profile(model, hardware).tables
    free8 = build_roofline_profile(model, hardware_spec("h100-sxm", tensor_parallel=8, **free)).tables
    tokens = 4096
    hidden_bytes = tokens * model.hidden_size * 2
    ring = 10e-6 + 2 * 7 / 8 * hidden_bytes / (450e9 * 0.8)  # latency + ring all-reduce over 8 GPUs
    for name in ("linear_o", "mlp"):
        assert real[name].scalar(tokens) - free8[name].scalar(tokens) == pytest.approx(ring, rel=1e-6)
    assert real["linear_qkv"].scalar(tokens) == free8["linear_qkv"].scalar(tokens)
    assert real["attn_decode"].scalar(64, 4096) == free8["attn_decode"].scalar(64, 4096)
    assert real["lm_head_sampling"].scalar(64) > free8["lm_head_sampling"].scalar(64)


def test_tensor_parallel_kv_capacity_and_the_splits_a_model_allows():
    from scheduler.errors import ConfigError
    from sim.hardware import kv_capacity_blocks

    big = model_spec("llama-3.1-70b")  # 141 GB of bf16 weights, 8 kv heads
    for p in (1, 2):
        with pytest.raises(ConfigError, match="does not fit"):
            kv_capacity_blocks(big, hardware_spec("h100-sxm", tensor_parallel=p), 16)
    blocks = {p: kv_capacity_blocks(big, hardware_spec("h100-sxm", tensor_parallel=p), 16) for p in (4, 8, 16)}
    # per GPU: 72 GB usable - 1/p of the weights - 2 GB, over 1/p of the KV bytes of a token
    for p in (4, 8):
        per_gpu = 80e9 * 0.9 - big.weight_bytes_total / p - 2e9
        assert blocks[p] == int(per_gpu // (big.kv_bytes_per_token / p * 16))
    # 16 GPUs hold 8 kv heads one per GPU, replicated: a token's KV costs each GPU what it does at 8
    assert blocks[16] == int((80e9 * 0.9 - big.weight_bytes_total / 16 - 2e9) // (big.kv_bytes_per_token / 8 * 16))
    with pytest.raises(ConfigError, match="cannot be split over tensor_parallel=3"):
        kv_capacity_blocks(big, hardware_spec("h100-sxm", tensor_parallel=3), 16)
    with pytest.raises(ConfigError, match="tensor_parallel is 0"):
        hardware_spec("h100-sxm", tensor_parallel=0)


@pytest.mark.parametrize("preset", ["llama-3.1-8b", "deepseek-v3"])
def test_attention_efficiency_slows_the_attention_kernels_reads_only(preset):
    """``attention_efficiency`` unset (0) leaves every table as it was; 0.4 against a memory
    efficiency of 0.8 slows the attention tables (grouped-query or latent), doubling them where
    they are bound by their KV reads (Llama's decode batch at long contexts), and changes no other
    kernel's table."""
    from dataclasses import replace

    model, hardware = model_spec(preset), hardware_spec("h100-sxm")
    base = build_roofline_profile(model, hardware)
    same = build_roofline_profile(model, replace(hardware, attention_efficiency=0.0))
    slow = build_roofline_profile(model, replace(hardware, attention_efficiency=0.4))
    assert all(np.array_equal(base.tables[k].values, same.tables[k].values) for k in base.tables)
    attention = {"attn_prefill", "attn_decode", "attn_shared_prefix"}
    assert all(np.array_equal(base.tables[k].values, slow.tables[k].values) for k in base.tables if k not in attention)
    decode, slower = base.tables["attn_decode"].values, slow.tables["attn_decode"].values
    launch = hardware.kernel_launch_s
    if preset == "llama-3.1-8b":
        assert (slower[-1, -1] - launch) == pytest.approx(2 * (decode[-1, -1] - launch), rel=1e-9)
    assert (slower >= decode).all() and (slower > decode).any() and slow.provenance["attention_efficiency"] == 0.4
    with pytest.raises(ConfigError, match="attention_efficiency must be in"):
        hardware_spec("h100-sxm", attention_efficiency=1.5)
