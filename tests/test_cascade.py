"""vLLM's cascade attention (``schedule.overrides.cascade_attention=true``): a prefix that every
running request holds, read once a step by the shared-prefix kernel."""
import numpy as np
import pytest

import scheduler.cascade as cascade
from scheduler import schedule_config
from scheduler.errors import ConfigError
from scheduler.model_spec import model_spec
from sim.cost_model import CostModel
from sim.hardware import hardware_spec
from sim.roofline import build_roofline_profile
from sim.simulator import simulate
from traces.synthetic import batchllm_microbenchmark

MODEL = model_spec("llama-3.1-8b")
COST = CostModel(build_roofline_profile(MODEL, hardware_spec("h100-sxm")), MODEL)


def _run(workload, schedule="fcfs", blocks=20_000, fast_forward=True, cost=COST, **overrides):
    plans = []
    outcome = simulate(workload, schedule_config(schedule, **overrides), cost, blocks, 16, fast_forward=fast_forward,
                       on_plan=lambda plan: plans.append(plan))
    return outcome, plans


def _columns(outcome):
    return {name: np.asarray(values) for name, values in outcome.steps.columns().items()}


def test_a_prefix_every_request_shares_is_read_once_and_fcfs_nears_batchllm():
    """One 2,000-token prompt prefix for the whole batch: with cascade attention fcfs's decodes read
    it once a step (one group, every decode in it) and it takes about as long as batchllm."""
    workload = batchllm_microbenchmark(2000, 200, 100, 512, 512)
    plain, _ = _run(workload)
    outcome, plans = _run(workload, cascade_attention=True, fast_forward=False)
    grouped = [p for p in plans if p.shared_prefix_groups]
    assert grouped and all(len(p.shared_prefix_groups) == 1 for p in grouped)
    group = grouped[-1].shared_prefix_groups[0]
    assert group.prefix_len == 2000 and group.num_decoding == len(group.req_ids) >= 8
    faster = plain.makespan_s / outcome.makespan_s
    batchllm, _ = _run(workload, "batchllm")
    assert faster > 1.4 and outcome.makespan_s < 1.15 * batchllm.makespan_s
    # decode stretches take the group as the steps one by one do
    fast, _ = _run(workload, cascade_attention=True)
    mine, theirs = _columns(fast), _columns(outcome)
    assert all(np.array_equal(mine[name], theirs[name]) for name in mine)


def test_nothing_changes_where_the_running_requests_share_no_prefix():
    workload = batchllm_microbenchmark(400, 40, 20, 8, 256, shuffle=True, seed=3)  # 32 prefixes, shuffled
    plain, _ = _run(workload, blocks=2_000)
    outcome, plans = _run(workload, blocks=2_000, cascade_attention=True)
    assert not any(p.shared_prefix_groups for p in plans)
    mine, theirs = _columns(outcome), _columns(plain)
    assert all(np.array_equal(mine[name], theirs[name]) for name in mine)


@pytest.mark.parametrize("prefix, requests, groups", [(2000, 16, True), (240, 16, False), (2000, 6, False)])
def test_vllms_thresholds(prefix, requests, groups):
    """At least 256 shared tokens and 8 requests in the step (vLLM's use_cascade_attention)."""
    workload = batchllm_microbenchmark(prefix, 40, 30, requests, requests)
    _, plans = _run(workload, cascade_attention=True)
    assert any(p.shared_prefix_groups for p in plans) == groups


def test_no_cascade_with_sliding_windows_and_no_bad_setting():
    spec = model_spec("gemma-3-27b")
    cost = CostModel(build_roofline_profile(spec, hardware_spec("h200")), spec)
    outcome, plans = _run(batchllm_microbenchmark(2000, 40, 30, 16, 16), cost=cost, cascade_attention=True)
    assert outcome.makespan_s > 0 and not any(p.shared_prefix_groups for p in plans)
    with pytest.raises(ConfigError, match="cascade_attention is 'yes'; expected true or false"):
        schedule_config("fcfs", cascade_attention="yes")


def test_the_engine_reads_the_cascade_group_through_its_shared_prefix_kernel(monkeypatch):
    """The Triton backend (Triton's interpreter here) runs the group as the grouped schedules'
    and gives the torch backend's tokens; thresholds lowered to tiny shapes."""
    pytest.importorskip("triton")
    import torch

    from engine.loop import run_engine
    from engine.runner import ModelRunner
    from engine.weights import random_weights

    import kernels.backend as backend_module
    from sim.profile import constant_profile

    monkeypatch.setattr(cascade, "MIN_PREFIX_TOKENS", 32)
    monkeypatch.setattr(cascade, "MIN_REQUESTS", 2)
    spec = model_spec("tiny", num_layers=1)
    weights = random_weights(spec, 3, torch.float32, torch.device("cpu"))
    workload = batchllm_microbenchmark(48, 5, 4, 4, 4, seed=2)
    config = schedule_config("fcfs", cascade_attention=True, max_num_batched_tokens=24)
    _, plans = _run(workload, blocks=64, cost=CostModel(constant_profile(), spec), fast_forward=False,
                    max_num_batched_tokens=24, cascade_attention=True)
    assert sum(1 for p in plans if p.shared_prefix_groups) > 1  # the plans the engine runs have groups
    launches = []
    prepare = backend_module.TritonAttentionBackend._prepare

    def recording(meta, device, block_size):
        step = prepare(meta, device, block_size)
        launches.append(any(groups for _, _, _, groups, _, _ in step[0]))
        return step

    tokens = {}
    for backend, chosen in (("torch", schedule_config("fcfs", max_num_batched_tokens=24)), ("torch", config),
                            ("triton", config)):
        runner = ModelRunner(spec, 64, 16, weights=weights, backend=backend)
        if backend == "triton":
            runner.model.backend._prepare = recording
        run_engine(workload, chosen, runner, 64, 16)
        tokens[backend, chosen.cascade_attention] = {r: tuple(t) for r, t in runner.outputs.items()}
    assert tokens["torch", False] == tokens["torch", True] == tokens["triton", True]
    assert any(launches)  # the shared-prefix kernel ran


def test_simulate_notes_a_prefix_every_request_shares():
    from batchlab.simulate import cascade_note

    shared = batchllm_microbenchmark(2000, 200, 10, 64, 64)
    fcfs, batchllm = schedule_config("fcfs"), schedule_config("batchllm")
    note = cascade_note(shared, [fcfs, batchllm], 16)
    assert "shares its first 2,000 prompt tokens" in note and "cascade_attention=true" in note
    assert cascade_note(batchllm_microbenchmark(2000, 200, 10, 16, 64), [fcfs], 16) == ""  # four prefixes
    assert cascade_note(batchllm_microbenchmark(250, 200, 10, 64, 64), [fcfs], 16) == ""  # under 256 tokens
    assert cascade_note(shared, [batchllm], 16) == ""  # its groups read the prefix once already
    assert cascade_note(shared, [schedule_config("fcfs", cascade_attention=True)], 16) == ""
