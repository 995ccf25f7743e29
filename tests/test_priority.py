"""order=priority (vLLM's --scheduling-policy priority): Request.priority, lower first, ties by
arrival; agents' turns carry their session's index, so the oldest session's turn goes first."""
import pytest

from scheduler import Request, schedule_config
from scheduler.errors import WorkloadError
from scheduler.model_spec import model_spec
from sim.cost_model import CostModel
from sim.hardware import hardware_spec, kv_capacity_blocks
from sim.profile import constant_profile
from sim.roofline import build_roofline_profile
from sim.simulator import simulate
from traces.arrivals import with_arrivals
from traces.synthetic import agent_sessions
from traces.workload import Workload


def test_a_priority_is_a_finite_number_or_none():
    assert Request(0, 0.0, ((1, 8),), 5, priority=2.5).priority == 2.5
    for bad in (float("nan"), float("inf"), "high", True):
        with pytest.raises(WorkloadError, match="request 0: priority is .*; expected a finite number or None"):
            Request(0, 0.0, ((1, 8),), 5, priority=bad)


def test_lower_priority_first_and_none_is_the_arrival_time():
    cost = CostModel(constant_profile(), model_spec("tiny", num_layers=1))
    workload = Workload("w", (Request(0, 0.0, ((1, 32),), 4, priority=5), Request(1, 0.0, ((2, 32),), 4),
                              Request(2, 0.0, ((3, 32),), 4, priority=-1), Request(3, 0.0, ((4, 32),), 4, priority=5)))
    outcome = simulate(workload, schedule_config("priority", max_num_seqs=1), cost, 64, 16)
    states = sorted((s for s in outcome.scheduler.states.values()), key=lambda s: s.first_admission)
    assert [s.req_id for s in states] == [2, 1, 0, 3]  # -1, then 0.0 (its arrival), then 5 twice by arrival


def test_serving_the_oldest_session_first_avoids_the_collapse_of_an_overloaded_agent_fleet():
    """300 agents' jobs of 8 turns arriving at 3 a second on one H100 (workload=agent_jobs): in
    arrival order every new job's first turn goes ahead of older jobs' next turns, the cache
    cannot hold that many contexts, and each turn recomputes its context (a tenth of the prompt
    tokens reused); the oldest session first keeps the fleet's contexts cached (three quarters)
    and finishes in a third of the time."""
    model, hardware = model_spec("llama-3.1-8b"), hardware_spec("h100-sxm")
    cost = CostModel(build_roofline_profile(model, hardware), model)
    workload = with_arrivals(agent_sessions(300, 8, 0, 1000, 1700, 20), "poisson", rate=3.0, seed=42,
                             clients=None, think_s=0.5)  # conf/workload/agent_jobs.yaml
    runs = {name: simulate(workload, schedule_config(name), cost, kv_capacity_blocks(model, hardware, 16), 16)
            for name in ("fcfs", "priority")}
    saved = {name: run.scheduler.stats.prefill_token_saving for name, run in runs.items()}
    assert saved["fcfs"] < 0.2 and saved["priority"] > 0.7
    assert runs["priority"].makespan_s < 0.4 * runs["fcfs"].makespan_s
