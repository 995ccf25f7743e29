"""Loads from the host tier beside the steps (``host_load_async``, as vLLM's asynchronous KV
connectors do): the request waits for its blocks while the others run, and then computes; no
step pays for the copy. The engine computes the same logits; the transfers stay consistent."""
import heapq

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from scheduler import Request, Scheduler, StepResult, schedule_config
from scheduler.errors import ConfigError
from scheduler.model_spec import model_spec
from sim.cost_model import CostModel
from sim.hardware import hardware_spec
from sim.roofline import build_roofline_profile
from sim.simulator import simulate
from traces.workload import Workload

from test_host_tier import engine_logits
from test_host_tier_properties import BLOCK, Shadow, workloads

MODEL = model_spec("llama-3.1-8b")
SLOW = CostModel(build_roofline_profile(MODEL, hardware_spec("h100-sxm", host_bandwidth=1e9)), MODEL)  # 0.8 GB/s


def prefix_again() -> Workload:
    """A 128-token prefix, evicted by a 420-token prompt, then asked for again while a long
    request decodes: its 8 blocks come back from the tier."""
    return Workload("async", (Request(0, 0.0, ((1, 128), (100, 16)), 2), Request(1, 1.0, ((2, 420),), 2),
                              Request(3, 2.0, ((4, 16),), 60), Request(2, 2.05, ((1, 128), (101, 16)), 2)))


def steps_and_admission(asynchronous: bool, fast_forward: bool):
    config = schedule_config("fcfs", host_cache_blocks=64, host_load_async=asynchronous)
    plans = []
    outcome = simulate(prefix_again(), config, SLOW, 28, 16, fast_forward=fast_forward, on_plan=plans.append)
    return outcome, plans


@pytest.mark.parametrize("fast_forward", [False, True])
def test_a_loading_request_waits_while_the_others_run(fast_forward):
    load_s = SLOW.load_seconds(128)  # 8 blocks over 0.8 GB/s: 21 ms
    sync, sync_plans = steps_and_admission(False, fast_forward)
    beside, plans = steps_and_admission(True, fast_forward)
    for outcome in (sync, beside):
        assert outcome.scheduler.stats.host_loaded_blocks == 8 and outcome.scheduler.num_finished == 4
    started = next(p for p in plans if p.loading)
    assert started.loading == ((2, 128, 0),) and not any(c.req_id == 2 for c in started.chunks)
    steps = beside.steps.columns()
    admitted = steps["start_s"][list(steps["step"]).index(started.step)]
    first = next(p for p in plans if any(c.req_id == 2 for c in p.chunks))
    assert [c.start for c in first.chunks if c.req_id == 2] == [128]  # the loaded blocks skipped
    assert steps["start_s"][list(steps["step"]).index(first.step)] >= admitted + load_s - 1e-12
    # no step from then on pays the copy (the decoding request's steps stay short); in step, one does
    after = lambda columns: columns["duration_s"][columns["start_s"] >= admitted - 1e-12]
    assert after(steps).max() < load_s < after(sync.steps.columns()).max()
    assert beside.scheduler.stats.prefill_token_saving == sync.scheduler.stats.prefill_token_saving


def test_async_loads_need_a_tier():
    with pytest.raises(ConfigError, match="host_load_async=true times loads from a host tier, and there is none"):
        schedule_config("fcfs", host_load_async=True)
    with pytest.raises(ConfigError, match="host_load_async is 'yes'"):
        schedule_config("fcfs", host_cache_blocks=4, host_load_async="yes")


def test_the_engine_computes_the_same_when_loads_wait():
    from traces.synthetic import batchllm_microbenchmark

    workload = batchllm_microbenchmark(40, 13, 12, 3, 18, seed=4)
    baseline, _ = engine_logits(workload, 256, max_num_batched_tokens=512)
    for chunk, tier in ((16, 256), (64, 12)):
        logits, outcome = engine_logits(workload, 10, max_num_batched_tokens=chunk, host_cache_blocks=tier,
                                        host_load_async=True)
        assert outcome.scheduler.stats.host_loaded_blocks > 0
        assert max((logits[r] - baseline[r]).abs().max().item() for r in baseline) < 1e-4, (chunk, tier)


@pytest.mark.parametrize("workload_name", ["system-poisson", "tree-gamma"])
@pytest.mark.parametrize("name", ["prefix_grouped", "batchllm"])
def test_a_groups_prefix_loading_from_the_tier_starts_its_group(workload_name, name):
    """Grouped schedules with the LRU cache and a tier: a group's prefix found in the tier loads
    beside the steps, and its group is started then, as one computed is (before, its members
    decoding raised KeyError, the group missing from the active ones, or the deadlock breaker
    found no group to drop and the run stopped)."""
    from test_sim_timeline import WORKLOADS

    workload = WORKLOADS[workload_name]()
    config = schedule_config(name, caching="lru", host_cache_blocks=256, host_load_async=True)
    for blocks in (120, 220):
        outcome = simulate(workload, config, SLOW, blocks, 4)
        assert outcome.scheduler.num_finished == len(workload.requests)
        assert outcome.scheduler.stats.host_loaded_blocks > 0


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workloads(), st.sampled_from(["fcfs", "lpm", "decode_first", "sorted", "blend", "sglang", "prefix_grouped",
                                      "batchllm"]),
       st.integers(0, 6), st.integers(1, 12), st.sampled_from([1, 3, 8, 64]), st.integers(0, 3), st.sampled_from([0, 0, 2]),
       st.sampled_from([{}, {"cache_in_step": False}]))
def test_transfers_stay_consistent_when_loads_take_steps(requests, name, spare_blocks, host_blocks, budget, delay,
                                                         window, options):
    """Random workloads; each load is reported done ``delay`` steps after it started (0: at
    once, as the engine does); ``window``: blocks a running request holds for a sliding window;
    ``options``: a step's blocks cached only after it (SGLang's; the sglang schedule's own).
    The grouped schedules with the LRU cache (their groups' prefixes load from the tier). The
    shadow executor's checks hold, and everything finishes."""
    need = max(-(-(r.prompt_len + r.output_len - 1) // BLOCK) for r in requests) + window
    if name in ("prefix_grouped", "batchllm"):
        options = {**options, "caching": "lru"}
    config = schedule_config(name, max_num_batched_tokens=budget, host_cache_blocks=host_blocks, host_load_async=True,
                             **options)
    scheduler = Scheduler(config, need + spare_blocks, BLOCK, window_blocks=window)
    shadow = Shadow(scheduler, requests)
    pending = sorted(requests, key=lambda r: r.arrival_s)
    progress: dict[int, int] = {}
    loading: list[tuple[int, int]] = []  # (step done, request)
    now = 0.0
    for step in range(5000):
        while pending and pending[0].arrival_s <= now:
            scheduler.add(pending.pop(0))
        done = []
        while loading and loading[0][0] <= step:
            done.append(heapq.heappop(loading)[1])
        scheduler.loads_done(done)
        if not scheduler.has_unfinished and not pending:
            break
        plan = scheduler.schedule(now)
        for req_id in plan.preempted:
            progress[req_id] = 0
        shadow.apply(plan, progress)
        for req_id, _, _ in plan.loading:
            heapq.heappush(loading, (step + delay, req_id))
        if plan.is_empty and not plan.loading and not loading:
            now = pending[0].arrival_s
            continue
        now += 1.0
        scheduler.update(plan, StepResult(plan.step, 1.0, {}), now)
    else:
        raise AssertionError("did not finish in 5000 steps")
    assert scheduler.num_finished == len(requests) and scheduler.kv.num_used_blocks == 0
    assert shadow.loads == scheduler.stats.host_loaded_blocks


@pytest.mark.parametrize("fast_forward", [False, True])
def test_replicas_wait_for_a_pooled_block_from_another_machine(fast_forward):
    """Two replicas pooling their tiers over a slow network (80 MB/s): the second loads the
    prefix the first computed; with async loads it waits 0.13 s for it while the first keeps
    decoding in short steps; in step, its step takes the copy."""
    from sim.cluster import RouterConfig, simulate_cluster

    slow = CostModel(build_roofline_profile(MODEL, hardware_spec("h100-sxm", pool_bandwidth=1e8)), MODEL)
    workload = Workload("pool", (Request(0, 0.0, ((1, 64), (100, 16)), 40), Request(1, 0.01, ((2, 16),), 40),
                                 Request(2, 0.02, ((3, 16),), 40), Request(3, 0.1, ((1, 64), (101, 16)), 2)))
    load_s = slow.load_seconds(64, 64)
    runs = {}
    for asynchronous in (False, True):
        config = schedule_config("fcfs", host_cache_blocks=32, host_load_async=asynchronous)
        runs[asynchronous] = simulate_cluster(workload, config, slow, 200, 16, 2, RouterConfig("least_loaded"),
                                              fast_forward=fast_forward, shared_host=True)
    for outcomes in runs.values():
        assert [o.scheduler.stats.host_remote_blocks for o in outcomes] == [0, 4]
        assert sum(o.scheduler.num_finished for o in outcomes) == 4
    second = runs[True][1].scheduler.states[3]
    assert second.first_token_s >= second.request.arrival_s + load_s
    longest = {a: max(o.steps.columns()["duration_s"].max() for o in outcomes) for a, outcomes in runs.items()}
    assert longest[True] < load_s < longest[False]
