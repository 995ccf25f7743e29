"""Replicas that pool their host-memory KV tiers (``host_kv_shared``, sim/cluster.py; Mooncake's
store): any replica loads a block any other stored, over the network; with room for the whole
trace the pool reuses what one unbounded cache would, whatever the routing."""
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from batchlab.records import outcome_summary
from batchlab.simulate import pooled_host_tier
from scheduler import Request, schedule_config
from scheduler.contract import NO_DECODES, new_chunk, new_plan
from scheduler.errors import ConfigError
from scheduler.model_spec import model_spec
from sim.cluster import RouterConfig, simulate_cluster
from sim.cost_model import CostModel
from sim.hardware import hardware_spec
from sim.roofline import build_roofline_profile
from sim.simulator import simulate
from traces.workload import Workload

SHARED = Path(__file__).resolve().parents[2] / "shared" / "traces"
MODEL = model_spec("llama-3.1-8b")
COST = CostModel(build_roofline_profile(MODEL, hardware_spec("h100-sxm")), MODEL)


def saving(outcomes) -> float:
    """The share of prompt tokens not computed, over every replica."""
    summaries = [outcome_summary(o) for o in outcomes]
    computed = sum(s["prefill_tokens_computed"] for s in summaries)
    return 1 - computed / sum(s["prefill_tokens_logical"] for s in summaries)


def test_a_remote_load_costs_its_bytes_over_the_network():
    chunk = (new_chunk(5, 64, 16, (), True, 80),)  # 16 tokens computed after 64 loaded, 48 of them remote
    plans = [new_plan(0, chunk, (), (), (), NO_DECODES, loaded, 0, (), (), (), remote, ())
             for loaded, remote in ((0, 0), (64, 0), (64, 48))]
    bare, local, pooled = (COST.step(plan)[0] for plan in plans)
    per_token = MODEL.kv_bytes_per_token
    assert local - bare == pytest.approx(64 * per_token / (64e9 * 0.8), rel=1e-9)  # PCIe Gen5, 80 %
    assert pooled - bare == pytest.approx(16 * per_token / (64e9 * 0.8) + 48 * per_token / (50e9 * 0.8), rel=1e-9)
    slow = CostModel(build_roofline_profile(MODEL, hardware_spec("h100-sxm", pool_bandwidth=6e9)), MODEL)
    assert slow.step(plans[2])[0] - slow.step(plans[0])[0] == pytest.approx(
        16 * per_token / (64e9 * 0.8) + 48 * per_token / (6e9 * 0.8), rel=1e-9)
    with pytest.raises(ConfigError, match="pool_bandwidth must be > 0"):
        hardware_spec("l4", pool_bandwidth=0)


def test_a_replica_loads_what_another_stored():
    """Two replicas, least loaded: the first computes a prefix (its 4 blocks written through),
    the second, which never saw it, finds it in the pool and loads it, counted as remote."""
    workload = Workload("pool", (Request(0, 0.0, ((1, 64), (100, 16)), 40), Request(1, 0.01, ((2, 16),), 40),
                                 Request(2, 0.02, ((3, 16),), 40), Request(3, 0.1, ((1, 64), (101, 16)), 2)))
    config = schedule_config("fcfs", host_cache_blocks=32)
    router = RouterConfig("least_loaded")
    apart = simulate_cluster(workload, config, COST, 200, 16, 2, router)
    pooled = simulate_cluster(workload, config, COST, 200, 16, 2, router, shared_host=True)
    for outcomes in (apart, pooled):  # dealt out 0, 1, 0 (a tie), then 1: the prefix again, elsewhere
        assert [sorted(o.scheduler.states) for o in outcomes] == [[0, 2], [1, 3]]
    assert [o.scheduler.stats.host_remote_blocks for o in pooled] == [0, 4]
    assert [o.scheduler.stats.host_loaded_blocks for o in pooled] == [0, 4]
    assert sum(o.scheduler.stats.host_loaded_blocks for o in apart) == 0
    assert saving(pooled) == pytest.approx(64 / (80 + 16 + 16 + 80)) and saving(apart) == 0


@pytest.mark.skipif(not (SHARED / "mooncake" / "synthetic_trace.jsonl").exists(), reason="../shared/traces absent")
def test_a_pool_with_room_for_everything_reuses_what_one_unbounded_cache_would():
    """The Mooncake synthetic trace over two H100s dealt out by load: each replica's own tier,
    however large, keeps only what was routed to it; a pool as large as the trace gives what one
    unbounded cache does (0.651), as a tier behind one engine does."""
    from sim.hardware import kv_capacity_blocks
    from traces.loaders import load_mooncake

    workload = load_mooncake(SHARED / "mooncake" / "synthetic_trace.jsonl")
    gpu = kv_capacity_blocks(MODEL, hardware_spec("h100-sxm"), 16)
    config = schedule_config("fcfs", host_cache_blocks=workload.prompt_tokens // 16 + 1)
    router = RouterConfig("least_loaded")
    apart = saving(simulate_cluster(workload, config, COST, gpu, 16, 2, router))
    pooled = saving(simulate_cluster(workload, config, COST, gpu, 16, 2, router, shared_host=True))
    unbounded = outcome_summary(simulate(workload, schedule_config("fcfs"), COST, workload.prompt_tokens // 16
                                         + 200_000, 16))["prefill_token_saving"]
    assert apart < unbounded - 0.1 and pooled == pytest.approx(unbounded, abs=5e-4)


def test_sharing_needs_a_tier_and_replicas_routed_as_they_arrive():
    cfg = lambda shared: OmegaConf.create({"host_kv_shared": shared})
    tier = {"host_cache_blocks": 8}
    assert pooled_host_tier(cfg(True), tier, True, 4) is True and pooled_host_tier(cfg(True), tier, True, None)
    assert pooled_host_tier(cfg(False), {}, False, 1) is False
    with pytest.raises(ConfigError, match="there are none: give host_kv_gb"):
        pooled_host_tier(cfg(True), {}, True, 4)
    with pytest.raises(ConfigError, match="replicas >= 2 .now 1. and sharding=least_loaded or cache_aware"):
        pooled_host_tier(cfg(True), tier, True, 1)
    with pytest.raises(ConfigError, match="; give sharding=least_loaded or cache_aware"):  # a plan, split before
        pooled_host_tier(cfg(True), tier, False, None)
    with pytest.raises(ConfigError, match="host_kv_shared is 'yes'"):
        pooled_host_tier(cfg("yes"), tier, True, 4)
