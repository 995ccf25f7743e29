"""A host-memory KV tier behind the prefix cache (scheduler/host_tier.py): blocks the GPU's LRU
cache dropped come back from host memory instead of being recomputed, counted by hand; with
room for everything, GPU and host together reuse what an unbounded GPU cache would."""
from pathlib import Path

import pytest

from batchlab.records import outcome_summary
from scheduler import Request, schedule_config
from scheduler.contract import NO_DECODES, new_chunk, new_plan
from scheduler.errors import ConfigError
from scheduler.host_tier import HostTier
from scheduler.model_spec import model_spec
from sim.cost_model import CostModel
from sim.hardware import hardware_spec
from sim.roofline import build_roofline_profile
from sim.simulator import simulate
from traces.workload import Workload

SHARED = Path(__file__).resolve().parents[2] / "shared" / "traces"
MODEL = model_spec("llama-3.1-8b")
COST = CostModel(build_roofline_profile(MODEL, hardware_spec("h100-sxm")), MODEL)


def three_requests() -> Workload:
    """A 64-token prefix (4 blocks) with its own 16 tokens, then a 310-token prompt that takes
    every block of the GPU's 20, then the prefix again with other 16 tokens."""
    return Workload("host tier", (Request(0, 0.0, ((1, 64), (100, 16)), 2), Request(1, 1.0, ((2, 310),), 2),
                                  Request(2, 2.0, ((1, 64), (101, 16)), 2)))


def run(host_blocks: int):
    outcome = simulate(three_requests(), schedule_config("fcfs", host_cache_blocks=host_blocks), COST, 20, 16)
    return outcome, outcome_summary(outcome)


def test_blocks_the_gpu_dropped_come_back_from_host_memory():
    without, plain = run(0)
    assert without.scheduler.kv.num_evictions > 0 and plain["prefill_tokens_computed"] == 80 + 310 + 80
    outcome, summary = run(64)
    # the third request finds its 4 prefix blocks in host memory: 16 tokens computed, 64 loaded
    assert summary["prefill_tokens_computed"] == 80 + 310 + 16
    assert outcome.scheduler.stats.host_loaded_blocks == 4
    # every full prompt block is written through as its step computes it; the loaded ones are
    # held already and not copied again (before 2026-12-03 they were: (64, 80))
    plans = []
    simulate(three_requests(), schedule_config("fcfs", host_cache_blocks=64), COST, 20, 16, fast_forward=False,
             on_plan=lambda p: plans.append((p.loaded_tokens, p.stored_tokens)))
    assert [p for p in plans if p != (0, 0)] == [(0, 80), (0, 304), (64, 16)]
    # too small a tier: the 310-token prompt's 19 blocks pushed the prefix out (least recent first)
    small, summary = run(10)
    assert small.scheduler.stats.host_loaded_blocks == 0 and summary["prefill_tokens_computed"] == 470
    # grouped schedules (caching off) have no tier; the engine refuses one
    assert simulate(three_requests(), schedule_config("batchllm", host_cache_blocks=64), COST, 20, 16) \
        .scheduler.host is None
    with pytest.raises(ConfigError, match="host_cache_blocks is -1"):
        schedule_config("fcfs", host_cache_blocks=-1)


def test_loads_and_stores_cost_their_bytes_over_pcie():
    chunk = (new_chunk(5, 64, 16, (), True, 80),)  # the 16 tokens computed after 64 loaded
    (bare, bare_parts, _), (copying, parts, _) = (
        COST.step(new_plan(0, chunk, (), (), (), NO_DECODES, loaded, stored, (), (), (), 0, ()))
        for loaded, stored in ((0, 0), (64, 16)))
    seconds = 80 * MODEL.kv_bytes_per_token / (64e9 * 0.8)  # H100 SXM: PCIe Gen5 x16, 80 % of it
    assert copying - bare == pytest.approx(seconds, rel=1e-9)
    assert parts[-1] - bare_parts[-1] == pytest.approx(seconds, rel=1e-9) and parts[:-1] == bare_parts[:-1]
    # stores hidden behind the GPU's work (an asynchronous connector): the loads alone
    hidden = CostModel(build_roofline_profile(MODEL, hardware_spec("h100-sxm", host_store_blocking=False)), MODEL)
    (plain, _, _), (loading, _, _) = (hidden.step(new_plan(0, chunk, (), (), (), NO_DECODES, loaded, stored, (), (), (), 0, ()))
                                      for loaded, stored in ((0, 0), (64, 16)))
    assert loading - plain == pytest.approx(seconds * 64 / 80, rel=1e-9)
    with pytest.raises(ConfigError, match="host_store_blocking is 'no'"):
        hardware_spec("h100-sxm", host_store_blocking="no")


def test_loads_pipelined_under_the_forward_pass_cost_only_what_it_does_not_hide():
    """``host_load_overlap``: a step's loads hide behind its kernels, layer by layer; a short
    chunk after a long load still waits for the rest of the load."""
    overlapped = CostModel(build_roofline_profile(MODEL, hardware_spec("h100-sxm", host_load_overlap=True)), MODEL)
    load_s = lambda tokens: tokens * MODEL.kv_bytes_per_token / (64e9 * 0.8)
    extras = []
    for computed, loaded in ((2048, 64), (16, 4096)):
        chunk = (new_chunk(5, loaded, computed, (), True, loaded + computed),)
        plain, with_load = (overlapped.step(new_plan(0, chunk, (), (), (), NO_DECODES, n, 0, (), (), (), 0, ()))
                            for n in (0, loaded))
        (_, bare_parts, _) = plain
        gpu = sum(bare_parts[:-1])  # every kernel, the host's work aside
        assert with_load[0] - plain[0] == pytest.approx(max(load_s(loaded) - gpu, 0.0), rel=1e-9, abs=1e-12)
        extras.append(with_load[0] - plain[0])
        blocking = COST.step(new_plan(0, chunk, (), (), (), NO_DECODES, loaded, 0, (), (), (), 0, ()))[0]
        assert blocking - COST.step(new_plan(0, chunk, (), (), (), NO_DECODES, 0, 0, (), (), (), 0, ()))[0] == \
            pytest.approx(load_s(loaded), rel=1e-9)
    assert extras[0] == 0 and 0 < extras[1] < load_s(4096)  # the first hidden wholly, the second in part
    with pytest.raises(ConfigError, match="host_load_overlap is 1"):
        hardware_spec("h100-sxm", host_load_overlap=1)


def test_lru_order_and_gapless_counting():
    tier = HostTier(3)
    assert tier.store([1, 2, 3]) == ([1, 2, 3], [])
    assert tier.load([1]) == 0   # 1 is now the most recent; stored by this engine
    assert tier.store([4, 3]) == ([4], [2])  # 3 is held: not copied again; 2, the least recently used, dropped
    assert tier.count([1, 2, 3], 0, 3) == 1 and tier.count([3, 4, 1], 0, 3) == 3 and len(tier) == 3
    assert tier.store([5], owner=1) == ([5], [1])  # another engine's block, in a shared tier
    assert tier.load([5, 4], owner=0) == 1


@pytest.mark.skipif(not (SHARED / "mooncake" / "synthetic_trace.jsonl").exists(), reason="../shared/traces absent")
def test_with_room_for_everything_gpu_and_host_reuse_what_an_unbounded_cache_would():
    """The Mooncake synthetic trace on one H100's cache (25,720 blocks) keeps 7.2 % of prompt
    tokens; behind it a host tier as large as the trace gives the unbounded cache's 0.6512."""
    from sim.hardware import kv_capacity_blocks
    from traces.loaders import load_mooncake

    workload = load_mooncake(SHARED / "mooncake" / "synthetic_trace.jsonl")
    gpu = kv_capacity_blocks(MODEL, hardware_spec("h100-sxm"), 16)
    host = simulate(workload, schedule_config("fcfs", host_cache_blocks=workload.prompt_tokens // 16 + 1), COST, gpu, 16)
    alone = simulate(workload, schedule_config("fcfs"), COST, gpu, 16)
    unbounded = simulate(workload, schedule_config("fcfs"), COST, workload.prompt_tokens // 16 + 200_000, 16)
    savings = [outcome_summary(o)["prefill_token_saving"] for o in (alone, host, unbounded)]
    assert savings[0] < 0.1 and savings[1] == pytest.approx(savings[2], abs=1e-4)
    assert host.scheduler.stats.host_loaded_blocks > 0


def test_host_kv_gb_sizes_the_tier_in_blocks_of_the_models_kv():
    from omegaconf import OmegaConf

    from batchlab.simulate import host_tier_overrides

    cfg = lambda gb: OmegaConf.create({"host_kv_gb": gb, "schedule": {"block_size": 16}})
    block = MODEL.kv_bytes_per_token * 16  # 2 MiB for Llama-3.1-8B
    assert host_tier_overrides(cfg(1024), MODEL, {"max_num_seqs": 8}) == {
        "max_num_seqs": 8, "host_cache_blocks": int(1024e9 // block)} and int(1024e9 // block) == 488_281
    assert host_tier_overrides(cfg(0), MODEL, {}) == {}
    with pytest.raises(ConfigError, match="host_kv_gb is -1"):
        host_tier_overrides(cfg(-1), MODEL, {})
    with pytest.raises(ConfigError, match="give one"):
        host_tier_overrides(cfg(8), MODEL, {"host_cache_blocks": 5})
    # Gemma 4 26B-A4B is served in blocks of 32 tokens on one GPU, of 16 on four: a tier of as many
    # bytes holds twice the blocks there (plan sizes each split's so)
    gemma = model_spec("gemma-4-26b-a4b")
    one, four = (host_tier_overrides(cfg(64), gemma, {}, tp)["host_cache_blocks"] for tp in (1, 4))
    assert one == int(64e9 // (gemma.kv_bytes_per_token * 32)) and four == int(64e9 // (gemma.kv_bytes_per_token * 16))


def engine_logits(workload, blocks: int, spec=None, **overrides):
    """Every logits row the CPU engine samples from, by request, and the run's outcome (``spec``:
    tiny's by default)."""
    import torch

    from engine.loop import run_engine
    from engine.runner import ModelRunner
    from engine.weights import random_weights

    from test_engine import capture_logits

    spec = spec or model_spec("tiny")
    runner = ModelRunner(spec, blocks, 16, weights=random_weights(spec, seed=2), keep_logits=True)
    seen = capture_logits(runner)
    outcome = run_engine(workload, schedule_config("fcfs", **overrides), runner, blocks, 16)
    # the engine's copies are what the scheduler's tier holds, but for the stores the last plan left
    scheduler = outcome.scheduler
    if scheduler.host is not None:
        assert set(runner.cache.host) | set(scheduler._host_stores) == set(scheduler.host._keys)
    return {r: torch.stack(rows) for r, rows in seen.items()}, outcome


@pytest.mark.parametrize("preset, blocks", [("tiny", 10), ("tiny-gemma4", 14)])
def test_the_engine_loads_what_it_stored_and_computes_the_same(monkeypatch, preset, blocks):
    """The CPU engine with a host tier: blocks copied out as they are registered, copied back
    into fresh blocks when the scheduler loads them. Every logits row equals a run whose cache
    never evicts (to float rounding); skipping the copies back breaks that (the test can fail).
    tiny-gemma4: layers of two shapes, a cache tensor each (its windows hold 8 of the 14 blocks)."""
    from engine.kv_cache import PagedKVCache
    from traces.synthetic import batchllm_microbenchmark

    spec = model_spec(preset)
    workload = batchllm_microbenchmark(40, 13, 12, 3, 18, seed=4)
    baseline, _ = engine_logits(workload, 256, spec, max_num_batched_tokens=512)

    def worst(logits):
        return max((logits[r] - baseline[r]).abs().max().item() for r in baseline)

    for chunk, tier in ((16, 256), (64, 256), (64, 12)):  # 12 blocks: the tier drops some, the engine too
        logits, outcome = engine_logits(workload, blocks, spec, max_num_batched_tokens=chunk, host_cache_blocks=tier)
        assert outcome.scheduler.stats.host_loaded_blocks > 0 and outcome.scheduler.kv.num_evictions > 0
        assert worst(logits) < 1e-4, (chunk, tier)
    real = PagedKVCache.host_transfers
    monkeypatch.setattr(PagedKVCache, "host_transfers", lambda self, stores, loads, drops: real(self, stores, (), drops))
    logits, _ = engine_logits(workload, blocks, spec, max_num_batched_tokens=64, host_cache_blocks=256)
    assert worst(logits) > 1e-3


def test_the_engine_executes_the_simulators_plans_with_a_tier():
    from engine.loop import run_engine
    from engine.runner import ModelRunner
    from traces.synthetic import batchllm_microbenchmark

    workload = batchllm_microbenchmark(40, 13, 12, 3, 18, seed=4)
    config = schedule_config("fcfs", max_num_batched_tokens=48, host_cache_blocks=256)
    simulated, loads = [], []
    tiny = model_spec("tiny")
    outcome = simulate(workload, config, CostModel(build_roofline_profile(tiny, hardware_spec("h100-sxm")), tiny), 10, 16,
                       fast_forward=False, on_plan=lambda p: (simulated.append(p.outline()), loads.append(p.loaded_tokens)))
    engine = run_engine(workload, config, ModelRunner(tiny, 10, 16), 10, 16, keep_plans=True)
    assert engine.plans == simulated and sum(loads) == 16 * outcome.scheduler.stats.host_loaded_blocks > 0
    assert engine.scheduler.stats.host_loaded_blocks == outcome.scheduler.stats.host_loaded_blocks


def test_the_table_shows_the_share_loaded_from_host_memory_only_where_there_is_a_tier():
    from batchlab.table import comparison_table

    base = {"makespan_s": 10.0, "throughput_tokens_per_s": 100.0, "prefill_token_saving": 0.5,
            "prefill_tokens_logical": 1000, "ttft_s_p50": 1.0, "ttft_s_p99": 2.0, "tpot_s_p50": 0.01,
            "tpot_s_p99": 0.02, "peak_kv_blocks": 5, "num_steps": 7, "num_preemptions": 0}
    plain = comparison_table({"fcfs": base})
    assert "from host" not in plain
    table = comparison_table({"fcfs": {**base, "host_loaded_tokens": 250}, "batchllm": base}).splitlines()
    assert "from host" in table[0] and "0.250" in table[2].split() and table[3].split()[5] == "-"


def test_lpm_counts_prefixes_held_in_host_memory():
    """SGLang's HiCache matches host-held prefixes too: of two prompts waiting together, lpm
    serves first the one whose prefix was pushed out of the GPU into host memory."""
    workload = Workload("lpm", (Request(0, 0.0, ((1, 64), (100, 16)), 2), Request(1, 0.5, ((2, 310),), 2),
                                Request(2, 1.0, ((3, 80),), 2), Request(3, 1.0, ((1, 64), (101, 16)), 2)))
    first = {}
    for blocks in (0, 64):
        outcome = simulate(workload, schedule_config("lpm", host_cache_blocks=blocks, max_num_seqs=1), COST, 20, 16)
        states = outcome.scheduler.states
        first[blocks] = min((2, 3), key=lambda r: states[r].first_scheduled_s)
    assert first == {0: 2, 64: 3}


def test_the_report_shows_the_host_share_only_where_a_tier_loaded_something():
    import pandas as pd

    from reports.tables import COLUMNS, formatted_rows

    row = {key: 1.0 for key, _, _, _ in COLUMNS} | {"run": "r", "schedule": "fcfs", "host_loaded_share": 0.0}
    assert "from host" not in formatted_rows(pd.DataFrame([row]))[0]
    header, first, second = formatted_rows(pd.DataFrame([row | {"host_loaded_share": 0.25}, row | {"schedule": "x"}]))
    assert "from host" in header and "**0.250**" in first and "0.000" in second


def test_decode_stretches_with_a_host_tier_are_identical_to_step_by_step():
    """Where a step's blocks are cached after it (SGLang's way), the next step copies them to the
    tier (write-through), at a cost: a decode stretch starting there dropped the copy's time from its first step and charged
    it to the step after the stretch, so a request arriving during the stretch started that much
    later (found by a random soak of fast-forward against step by step)."""
    import pandas as pd

    from batchlab.records import requests_frame

    model = model_spec("llama-3.1-8b")
    cost = CostModel(build_roofline_profile(model, hardware_spec("a100-80gb")), model)
    requests = (Request(0, 0.0, ((1, 18),), 40), Request(1, 0.1, ((2, 18),), 5))
    config = schedule_config("fcfs", host_cache_blocks=8, cache_in_step=False)
    slow, fast = (simulate(Workload("late", requests), config, cost, 64, 4, fast_forward=ff) for ff in (False, True))
    assert fast.num_events < slow.num_events  # a stretch was taken
    pd.testing.assert_frame_equal(requests_frame(slow.scheduler, "fcfs"), requests_frame(fast.scheduler, "fcfs"),
                                  check_exact=True)
    pd.testing.assert_frame_equal(slow.steps.all_steps(), fast.steps.all_steps(), check_exact=True)
    assert len(slow.scheduler.host) == 8  # request 0's prompt written through (4 blocks), then 1's
