"""Exact timelines on tiny workloads with a constant-cost profile, and fast-forward equality."""
import pandas as pd
import pytest

from batchlab.records import requests_frame
from scheduler import Request, schedule_config
from scheduler.errors import ConfigError
from scheduler.model_spec import model_spec
from sim.cost_model import CostModel
from sim.profile import constant_profile
from sim.simulator import simulate
from traces.arrivals import with_arrivals
from traces.synthetic import batchllm_microbenchmark, prefix_tree_workload, system_prompt_workload
from traces.workload import Workload

ONE_LAYER = model_spec("tiny", num_layers=1)


def constant_cost(step_s=1.0, per_token=0.0):
    return CostModel(constant_profile(per_token, step_s, "tiny"), ONE_LAYER)


def test_exact_timeline_offline():
    # budget 4, block 2: a (4 prompt, 2 out) and b (2 prompt, 1 out); one second per step
    workload = Workload("t", (Request(0, 0.0, ((1, 4),), 2), Request(1, 0.0, ((2, 2),), 1)))
    out = simulate(workload, schedule_config("fcfs", max_num_batched_tokens=4), constant_cost(), 32, 2,
                   fast_forward=False)
    steps = out.steps.all_steps()
    assert steps["start_s"].tolist() == [0.0, 1.0]
    assert steps["num_tokens"].tolist() == [4, 3]          # a's prompt; then a's decode + b's prompt
    assert steps["num_prefill_tokens"].tolist() == [4, 2]
    a, b = out.scheduler.states[0], out.scheduler.states[1]
    assert (a.first_token_s, a.finish_s) == (1.0, 2.0)
    assert (b.first_scheduled_s, b.first_token_s, b.finish_s) == (1.0, 2.0, 2.0)
    assert out.makespan_s == 2.0


def test_exact_timeline_with_arrivals_and_idle_gap():
    # per-token cost 0.25 s plus 1 s per step; b arrives while the engine is idle
    workload = Workload("t", (Request(0, 0.0, ((1, 2),), 1), Request(1, 5.0, ((2, 4),), 2)))
    out = simulate(workload, schedule_config("fcfs"), constant_cost(1.0, 0.25), 32, 2, fast_forward=False)
    steps = out.steps.all_steps()
    assert steps["start_s"].tolist() == [0.0, 5.0, 7.0]
    assert steps["duration_s"].tolist() == [1.5, 2.0, 1.25]
    b = out.scheduler.states[1]
    assert (b.first_scheduled_s, b.first_token_s, b.finish_s) == (5.0, 7.0, 8.25)


def test_exact_timeline_with_several_idle_spells():
    """The arrivals process sleeps while the engine is busy and wakes it at the next arrival
    each time it goes idle: here twice, once for two requests arriving together."""
    workload = Workload("t", (Request(0, 0.0, ((1, 2),), 1), Request(1, 5.0, ((2, 2),), 1),
                              Request(2, 5.0, ((3, 2),), 1), Request(3, 20.0, ((4, 2),), 1)))
    out = simulate(workload, schedule_config("fcfs"), constant_cost(1.0, 0.25), 32, 2, fast_forward=False)
    steps = out.steps.all_steps()
    assert steps["start_s"].tolist() == [0.0, 5.0, 20.0]
    assert steps["num_tokens"].tolist() == [2, 4, 2]
    assert [out.scheduler.states[i].finish_s for i in range(4)] == [1.5, 7.0, 7.0, 21.5]
    assert out.makespan_s == 21.5


def test_arrival_during_a_step_waits_for_the_next_step():
    workload = Workload("t", (Request(0, 0.0, ((1, 2),), 3), Request(1, 0.5, ((2, 2),), 1)))
    out = simulate(workload, schedule_config("fcfs"), constant_cost(), 32, 2, fast_forward=False)
    assert out.scheduler.states[1].first_scheduled_s == 1.0


def _records(outcome, name):
    return requests_frame(outcome.scheduler, name), outcome.steps.all_steps()


def fast_forward_identical(config, num_blocks: int):
    """Simulates a small system-prompts workload (Llama-3.1-8B, A100 roofline) under ``config``
    step by step and with decode stretches, asserts the records and statistics identical and
    that stretches were taken; returns the step-by-step outcome."""
    from sim.hardware import hardware_spec
    from sim.roofline import build_roofline_profile

    model = model_spec("llama-3.1-8b")
    cost = CostModel(build_roofline_profile(model, hardware_spec("a100-80gb")), model)
    workload = system_prompt_workload(2, 120, 20, 80, 60, 300, 40, seed=3)
    slow = simulate(workload, config, cost, num_blocks, 16, fast_forward=False)
    fast = simulate(workload, config, cost, num_blocks, 16, fast_forward=True)
    assert fast.num_events < slow.num_events
    for a, b in zip(_records(slow, config.name), _records(fast, config.name)):
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert slow.scheduler.stats == fast.scheduler.stats
    if slow.scheduler.reserve is not None:
        assert slow.scheduler.reserve.ratio == fast.scheduler.reserve.ratio
    return slow


WORKLOADS = {
    "micro-offline": lambda: batchllm_microbenchmark(400, 40, 30, 4, 96, seed=1),
    "system-poisson": lambda: with_arrivals(system_prompt_workload(4, 300, 10, 80, 5, 60, 150, seed=2),
                                            "poisson", rate=20.0, seed=3),
    "tree-gamma": lambda: with_arrivals(prefix_tree_workload((3, 2), (200, 60), 20, 3, 40, seed=4),
                                        "gamma", rate=50.0, cv=3.0, seed=5),
}


@pytest.mark.parametrize("workload_name", sorted(WORKLOADS))
@pytest.mark.parametrize("schedule", ["fcfs", "prefix_grouped", "decode_first", "batchllm", "lpm", "sorted", "blend", "priority"])
def test_fast_forward_is_identical_to_step_by_step(workload_name, schedule):
    # a small KV cache so that allocation limits and preemption cut stretches too
    config = schedule_config(schedule, max_num_batched_tokens=256)
    assert_fast_forward_is_step_by_step("llama-3.1-8b", workload_name, config, 220, 16)


@pytest.mark.parametrize("model_name, workload_name, schedule, num_blocks, retention", [
    # each differed before scheduler/stretch.py's _safe_allocations (2026-12-04): a stretch's
    # decodes evicted the block a waiting request's hit ended at, which cut its hit back to
    # where its sliding pages (Gemma 3) or state (Qwen3.5) are cached, and let it in sooner
    ("tiny-gemma3", "tree-gamma", "fcfs", 400, 0),
    ("tiny-gemma3", "tree-gamma", "sorted", 220, None),
    ("tiny-qwen3.5", "micro-offline", "sorted", 220, 0),
])
def test_fast_forward_is_identical_to_step_by_step_with_a_hybrid_models_pages(model_name, workload_name, schedule,
                                                                             num_blocks, retention):
    config = schedule_config(schedule, max_num_batched_tokens=256, retention_interval=retention)
    assert_fast_forward_is_step_by_step(model_name, workload_name, config, num_blocks, 4)


def assert_fast_forward_is_step_by_step(model_name: str, workload_name: str, config, num_blocks: int, block_size: int):
    from sim.hardware import hardware_spec
    from sim.roofline import build_roofline_profile

    model = model_spec(model_name)
    cost = CostModel(build_roofline_profile(model, hardware_spec("a100-80gb")), model)
    workload = WORKLOADS[workload_name]()
    schedule = config.name
    slow = simulate(workload, config, cost, num_blocks, block_size, fast_forward=False)
    fast = simulate(workload, config, cost, num_blocks, block_size, fast_forward=True)
    assert fast.num_events < slow.num_events  # the stretches were really used
    slow_requests, slow_steps = _records(slow, schedule)
    fast_requests, fast_steps = _records(fast, schedule)
    pd.testing.assert_frame_equal(slow_requests, fast_requests, check_exact=True)
    pd.testing.assert_frame_equal(slow_steps, fast_steps, check_exact=True)
    assert slow.scheduler.stats == fast.scheduler.stats
    # the same blocks went to the same requests in the same order: the LRU queue they leave
    # behind (released tail first, per request) is the same, and so are the evictions
    assert slow.scheduler.kv.cached_free_blocks() == fast.scheduler.kv.cached_free_blocks()
    assert slow.scheduler.kv.num_evictions == fast.scheduler.kv.num_evictions


def test_stretches_cut_short_by_the_horizon_change_nothing(monkeypatch):
    """Stretches look ahead about as far as the next arrival, and at most MAX_STRETCH steps;
    a look-ahead that falls short splits a stretch, which must not change a record."""
    import sim.simulator
    from sim.hardware import hardware_spec
    from sim.roofline import build_roofline_profile

    model = model_spec("llama-3.1-8b")
    cost = CostModel(build_roofline_profile(model, hardware_spec("a100-80gb")), model)
    workload = WORKLOADS["system-poisson"]()
    config = schedule_config("fcfs", max_num_batched_tokens=256)
    slow = simulate(workload, config, cost, 220, 16, fast_forward=False)
    default = simulate(workload, config, cost, 220, 16, fast_forward=True)
    monkeypatch.setattr(sim.simulator, "MAX_STRETCH", 3)
    short = simulate(workload, config, cost, 220, 16, fast_forward=True)
    assert default.num_events < short.num_events < slow.num_events
    for outcome in (default, short):
        for expected, got in zip(_records(slow, "fcfs"), _records(outcome, "fcfs")):
            pd.testing.assert_frame_equal(expected, got, check_exact=True)


def test_stretch_does_not_take_a_last_one_token_prefill_chunk_for_a_decode():
    # budget 8: step 0 admits a (4 tokens) and 4 of b's 12; step 1 decodes a and computes 7 more
    # of b; step 2 computes b's last prompt token (a 1-token prefill chunk, not a decode) while
    # a decodes, with nothing waiting: a stretch must not start there
    from sim.hardware import hardware_spec
    from sim.roofline import build_roofline_profile

    model = model_spec("llama-3.1-8b")
    cost = CostModel(build_roofline_profile(model, hardware_spec("a100-80gb")), model)
    workload = Workload("t", (Request(0, 0.0, ((1, 4),), 20), Request(1, 0.0, ((2, 12),), 20)))
    config = schedule_config("fcfs", max_num_batched_tokens=8)
    slow = simulate(workload, config, cost, 64, 16, fast_forward=False)
    fast = simulate(workload, config, cost, 64, 16, fast_forward=True)
    assert fast.num_events < slow.num_events
    steps = slow.steps.all_steps()
    assert steps["num_prefill_tokens"].tolist()[:3] == [8, 7, 1]
    for a, b in zip(_records(slow, "fcfs"), _records(fast, "fcfs")):
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert slow.scheduler.stats == fast.scheduler.stats


def test_kernel_columns_are_whole_step_seconds_that_sum_to_the_duration():
    # per-layer profile tables, 32 layers: the records carry each kernel over all layers, as
    # the engine measures it, so the kernels of a step add up to its predicted duration
    from sim.hardware import hardware_spec
    from sim.roofline import build_roofline_profile

    model = model_spec("llama-3.1-8b")
    cost = CostModel(build_roofline_profile(model, hardware_spec("a100-80gb")), model)
    for fast_forward in (False, True):
        out = simulate(WORKLOADS["micro-offline"](), schedule_config("batchllm", max_num_batched_tokens=256),
                       cost, 220, 16, fast_forward=fast_forward)
        steps = out.steps.all_steps()
        kernels = [c for c in steps.columns if c.startswith("kernel_")]
        assert {f"kernel_{k}_s" for k in ("mlp", "attn_prefill", "attn_decode", "step_overhead")} <= set(kernels)
        summed = steps[kernels].sum(axis=1)
        assert ((summed - steps["duration_s"]).abs() <= 1e-9 * steps["duration_s"]).all()
        assert steps["kernel_mlp_s"].gt(0).all()


def test_prefill_overhead_table_charges_prompt_tokens_only():
    # an optional per-step table over the step's prompt chunks and tokens (0.1 s a token
    # here), charged to step_overhead; decode-only steps do not pay it
    import numpy as np

    from sim.profile import Profile, Table

    base = constant_profile(0.0, 1.0, "tiny")
    grids = (np.array([1.0, 4.0]), np.array([0.0, 10.0]))
    tables = {**base.tables, "prefill_overhead": Table(("prefill_chunks", "prefill_tokens"), grids,
                                                       np.array([[0.0, 1.0], [0.0, 1.0]]))}
    cost = CostModel(Profile("constant", "tiny", "any", tables, base.provenance), ONE_LAYER)
    workload = Workload("t", (Request(0, 0.0, ((1, 4),), 3), Request(1, 0.0, ((2, 2),), 1)))
    out = simulate(workload, schedule_config("fcfs", max_num_batched_tokens=4), cost, 32, 2, fast_forward=False)
    steps = out.steps.all_steps()
    # a's prompt (4 tokens); a's decode + b's prompt (2); a's last decode alone
    assert steps["num_prefill_tokens"].tolist() == [4, 2, 0]
    assert steps["duration_s"].tolist() == pytest.approx([1.4, 1.2, 1.0], abs=1e-12)
    assert steps["kernel_step_overhead_s"].tolist() == pytest.approx([1.4, 1.2, 1.0], abs=1e-12)


@pytest.mark.parametrize("schedule", ["fcfs", "batchllm"])
def test_fast_forward_is_identical_with_the_optional_host_tables(schedule):
    # measured profiles add prefill_overhead: prompt steps pay it, stretches (decode-only)
    # must still equal step-by-step simulation bit for bit
    import numpy as np

    from sim.hardware import hardware_spec
    from sim.profile import Profile, Table
    from sim.roofline import build_roofline_profile

    model = model_spec("llama-3.1-8b")
    base = build_roofline_profile(model, hardware_spec("a100-80gb"))
    grids = (np.array([1.0, 8.0]), np.array([1.0, 512.0]))
    tables = {**base.tables, "prefill_overhead": Table(("prefill_chunks", "prefill_tokens"), grids,
                                                       np.array([[2e-5, 3e-4], [9e-5, 5e-4]])),
              # and the grouped schedule's own scheduler work, charged to every step of it
              "schedule_overhead_batchllm": Table(("requests",), (np.array([1.0, 3.0, 64.0]),),
                                                  np.array([1e-6, 7e-6, 3.3e-5]))}
    cost = CostModel(Profile("measured", base.model, base.dtype, tables, {"device": "test"}), model)
    workload = WORKLOADS["system-poisson"]()
    config = schedule_config(schedule, max_num_batched_tokens=256)
    slow = simulate(workload, config, cost, 220, 16, fast_forward=False)
    fast = simulate(workload, config, cost, 220, 16, fast_forward=True)
    assert fast.num_events < slow.num_events
    pd.testing.assert_frame_equal(_records(slow, schedule)[1], _records(fast, schedule)[1], check_exact=True)
    # the tables were charged: prompt steps (every step, for batchllm) pay more host time than
    # the plain step overhead of their requests (a makespan need not grow: a slower step can
    # batch more arrivals into the next one)
    steps = _records(slow, schedule)[1]
    plain = np.array([base.tables["step_overhead"].scalar(n) for n in steps["num_requests"]])
    charged = steps["kernel_step_overhead_s"].to_numpy() > plain + 1e-7
    expected = (steps["num_prefill_tokens"] > 0).to_numpy() | (schedule == "batchllm")
    assert (charged == expected).all()


def test_schedule_overhead_tables_charge_their_schedule_only():
    # a measured profile's scheduler work of one schedule beyond fcfs's (0.5 s a step here,
    # whatever the batch): its steps pay it, other schedules' do not
    import numpy as np

    from sim.profile import Profile, Table

    base = constant_profile(0.0, 1.0, "tiny")
    tables = {**base.tables,
              "schedule_overhead_decode_first": Table(("requests",), (np.array([1.0]),), np.array([0.5]))}
    cost = CostModel(Profile("constant", "tiny", "any", tables, base.provenance), ONE_LAYER)
    workload = Workload("t", (Request(0, 0.0, ((1, 4),), 3), Request(1, 0.0, ((2, 2),), 1)))
    steps = {}
    for name in ("fcfs", "decode_first"):
        out = simulate(workload, schedule_config(name, max_num_batched_tokens=4), cost, 32, 2, fast_forward=False)
        steps[name] = out.steps.all_steps()
    assert steps["fcfs"]["duration_s"].tolist() == pytest.approx([1.0] * len(steps["fcfs"]), abs=1e-12)
    assert steps["decode_first"]["duration_s"].tolist() == pytest.approx([1.5] * len(steps["decode_first"]), abs=1e-12)
    assert cost.for_schedule("fcfs") is cost and cost.for_schedule("decode_first").schedule == "decode_first"
    with pytest.raises(ConfigError, match="schedule_overhead_lpm.*expected \\('requests',\\)"):
        Profile("constant", "tiny", "any", {**base.tables, "schedule_overhead_lpm": Table(
            ("batch",), (np.array([1.0]),), np.array([0.5]))}, base.provenance)


@pytest.mark.parametrize("schedule", ["fcfs", "batchllm", "lpm"])
def test_the_event_loop_makes_no_reference_cycles(schedule):
    """The simulator pauses the cyclic garbage collector while its event loop runs; that is only
    sound if the loop leaves no cyclic garbage behind. What a run leaves unreachable (SimPy's
    environment and its processes, a fixed handful) must not grow with the number of steps; the
    collector's setting is restored either way."""
    import gc

    from sim.hardware import hardware_spec
    from sim.roofline import build_roofline_profile

    model = model_spec("llama-3.1-8b")
    cost = CostModel(build_roofline_profile(model, hardware_spec("a100-80gb")), model)
    left_behind = []
    for size in (150, 600):
        workload = with_arrivals(system_prompt_workload(4, 300, 10, 80, 5, 60, size, seed=2), "poisson",
                                 rate=20.0, seed=3)
        simulate(workload, schedule_config(schedule, max_num_batched_tokens=256), cost, 220, 16)
        assert gc.isenabled()
        gc.collect()  # the outcome just dropped holds cycles (a group and its members)
        gc.disable()
        try:
            outcome = simulate(workload, schedule_config(schedule, max_num_batched_tokens=256), cost, 220, 16)
            assert not gc.isenabled()
            left_behind.append(gc.collect())  # `outcome` still holds the scheduler and its records
        finally:
            gc.enable()
        assert outcome.steps.num_steps > size
        del outcome
    assert left_behind[0] == left_behind[1] < 50


def test_writing_run_records_makes_no_reference_cycles(tmp_path):
    """``RunWriter.add`` pauses the cyclic collector too (the simulation's objects are still
    alive then, all of them young to it); what writing a schedule's records leaves unreachable
    must not grow with the size of its tables."""
    import gc

    from batchlab.records import RunWriter, request_columns
    from sim.hardware import hardware_spec
    from sim.roofline import build_roofline_profile

    model = model_spec("llama-3.1-8b")
    cost = CostModel(build_roofline_profile(model, hardware_spec("a100-80gb")), model)
    writer = RunWriter(tmp_path, {"workload": "test"})
    left_behind = []
    for size in (40, 600):
        workload = with_arrivals(system_prompt_workload(4, 300, 10, 80, 5, 60, size, seed=2), "poisson",
                                 rate=20.0, seed=3)
        outcome = simulate(workload, schedule_config("fcfs"), cost, 220, 16)
        writer.add(f"fcfs{size}", request_columns(outcome.scheduler, "fcfs"), outcome.steps.columns(), {})
        gc.collect()
        gc.disable()
        try:
            summary = writer.add(f"again{size}", request_columns(outcome.scheduler, "fcfs"), outcome.steps.columns(), {})
            assert not gc.isenabled()
            left_behind.append(gc.collect())
        finally:
            gc.enable()
        assert summary["num_steps"] > size
    assert left_behind[0] == left_behind[1] < 50
