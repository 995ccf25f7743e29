"""Sessions that arrive on their own (agents' jobs on a Poisson process): each session's first
turn at its arrival time, each later turn the think time after the one before it finished, in
the simulator, its replicas behind a router and the engine alike."""
import numpy as np
import pytest

from scheduler import schedule_config
from scheduler.errors import ConfigError
from scheduler.model_spec import model_spec
from sim.cluster import RouterConfig, simulate_cluster
from sim.cost_model import CostModel
from sim.hardware import hardware_spec
from sim.roofline import build_roofline_profile
from sim.simulator import simulate
from traces.arrivals import with_arrivals
from traces.synthetic import agent_sessions

MODEL = model_spec("llama-3.1-8b")
COST = CostModel(build_roofline_profile(MODEL, hardware_spec("h100-sxm")), MODEL)
SESSIONS = agent_sessions(num_sessions=12, turns=4, system_len=256, task_len=64, observation_len=128, output_len=32)


def rows(outcomes) -> dict:
    """request id -> (arrival, first scheduled, finish), over every replica."""
    return {s.req_id: (s.request.arrival_s, s.first_scheduled_s, s.finish_s)
            for o in outcomes for s in o.scheduler.states.values() if s.request is not None}


def check_turns(workload, seen: dict, think_s: float) -> None:
    starts = [seen[s[0]][0] for s in workload.sessions]
    expected = with_arrivals(agent_sessions(num_sessions=12, turns=1), "poisson", rate=2.0, seed=3)
    assert starts == pytest.approx([r.arrival_s for r in expected.requests], abs=1e-12)  # the process's times
    for session in workload.sessions:
        for turn, following in zip(session, session[1:]):  # the next turn the think time after the answer
            assert seen[following][0] == pytest.approx(seen[turn][2] + think_s, abs=1e-9)
    assert len(seen) == len(workload.requests) and all(f is not None for _, _, f in seen.values())


@pytest.mark.parametrize("fast_forward", [False, True])
def test_sessions_start_at_their_arrivals_and_send_turns_as_answers_come(fast_forward):
    jobs = with_arrivals(SESSIONS, "poisson", rate=2.0, seed=3, think_s=0.5)
    assert "12 sessions arriving over" in jobs.describe() and not jobs.is_offline
    check_turns(jobs, rows([simulate(jobs, schedule_config("fcfs"), COST, 600, 16, fast_forward=fast_forward)]), 0.5)
    replicas = simulate_cluster(jobs, schedule_config("fcfs"), COST, 600, 16, 2, RouterConfig("least_loaded"),
                                fast_forward=fast_forward)
    assert all(len(o.scheduler.states) for o in replicas)  # both replicas served some
    check_turns(jobs, rows(replicas), 0.5)


def test_a_turn_sent_before_a_later_session_arrives_is_not_held_behind_it():
    """Two sessions 100 s apart: the first one's turns come and go before the second arrives
    (the replicas idle meanwhile), each served as it is sent."""
    two = agent_sessions(num_sessions=2, turns=3, system_len=64, task_len=64, observation_len=64, output_len=8)
    jobs = with_arrivals(two, "offline", think_s=1.0)
    late = type(jobs)(jobs.name, tuple(r.with_arrival(100.0) if r.req_id == 3 else r for r in jobs.requests),
                      jobs.source, closed_loop=jobs.closed_loop, sessions=jobs.sessions)
    for outcomes in ([simulate(late, schedule_config("fcfs"), COST, 600, 16)],
                     simulate_cluster(late, schedule_config("fcfs"), COST, 600, 16, 2, RouterConfig("least_loaded"))):
        seen = rows(outcomes)
        for req in (1, 2):  # the first session's later turns: scheduled when sent, done long before 100 s
            arrival, first, finish = seen[req]
            assert first == pytest.approx(arrival, abs=1e-9) and finish < 10
        assert seen[3][1] == pytest.approx(100.0)


def test_think_times_vary_per_turn_and_sessions_need_an_arrival_process():
    jobs = with_arrivals(SESSIONS, "poisson", rate=2.0, seed=3, think_s=0.5, think_cv=1.0)
    seen = rows([simulate(jobs, schedule_config("fcfs"), COST, 600, 16)])
    gaps = [seen[b][0] - seen[a][2] for s in jobs.sessions for a, b in zip(s, s[1:])]
    assert min(gaps) > 0 and np.std(gaps) > 0.1 and np.mean(gaps) == pytest.approx(0.5, rel=0.5)
    with pytest.raises(ConfigError, match="sessions' think_s is -1"):
        with_arrivals(SESSIONS, "poisson", rate=2.0, think_s=-1)
    plain = type(SESSIONS)("plain", SESSIONS.requests[:2])  # requests of no session
    with pytest.raises(ConfigError, match="think_s is for closed-loop arrivals .process=closed., or sessions' turns"):
        with_arrivals(plain, "poisson", rate=1.0, think_s=1)


def test_the_engine_runs_arriving_sessions_with_the_same_tokens_as_a_client_pool():
    import torch

    from engine.loop import run_engine
    from engine.runner import ModelRunner
    from engine.weights import random_weights

    torch.set_num_threads(1)
    spec = model_spec("tiny")
    small = agent_sessions(num_sessions=3, turns=3, system_len=32, task_len=16, observation_len=16, output_len=8)
    tokens = []
    for workload in (with_arrivals(small, "poisson", rate=50.0, think_s=0.01), with_arrivals(small, "closed", clients=1)):
        runner = ModelRunner(spec, 256, 16, weights=random_weights(spec, seed=2))
        outcome = run_engine(workload, schedule_config("fcfs"), runner, 256, 16)
        seen = {s.req_id: (s.request.arrival_s, s.finish_s) for s in outcome.scheduler.states.values() if s.request}
        for session in workload.sessions:
            for turn, following in zip(session, session[1:]):
                assert seen[following][0] >= seen[turn][1]  # the next turn after the answer
        tokens.append({r: tuple(t) for r, t in runner.outputs.items()})
    assert tokens[0] == tokens[1] and all(len(t) == 8 for t in tokens[0].values())


def test_a_sessions_time_runs_from_its_first_arrival_to_its_last_answer():
    from batchlab.table import comparison_table
    from reports.metrics import session_times

    records = {"session": np.array([0, 0, 1, 1, 2, 2, -1]),
               "arrival_s": np.array([1.0, 3.0, 2.0, 9.0, 0.0, 4.0, 0.0]),
               "finish_s": np.array([2.0, 5.0, 4.0, 12.0, 1.0, np.nan, 50.0])}
    times = session_times(records)  # session 2 has not finished; -1 is no session's
    assert times["num_sessions"] == 3 and times["session_s_mean"] == pytest.approx((4.0 + 10.0) / 2)
    assert times["session_s_p50"] == pytest.approx(7.0)
    from batchlab.records import outcome_summary, request_columns
    from reports.metrics import summarize

    jobs = with_arrivals(SESSIONS, "poisson", rate=2.0, seed=3, think_s=0.5)
    outcome = simulate(jobs, schedule_config("fcfs"), COST, 600, 16)
    summary = summarize(request_columns(outcome.scheduler, "fcfs", jobs.sessions), outcome.steps.columns())
    seen = rows([outcome])
    spans = [seen[s[-1]][2] - seen[s[0]][0] for s in jobs.sessions]
    assert summary["session_s_mean"] == pytest.approx(np.mean(spans)) and summary["num_sessions"] == 12
    assert "session_s_mean" not in outcome_summary(outcome)  # records without sessions
    table = comparison_table({"fcfs": summary})
    assert "session s" in table.splitlines()[0] and f"{np.mean(spans):,.2f}" in table.splitlines()[2]


def test_validate_compares_the_sessions_mean_time_where_there_are_sessions():
    from batchlab.records import requests_frame
    from reports.validation import compare_runs, latency_table

    jobs = with_arrivals(SESSIONS, "poisson", rate=2.0, seed=3, think_s=0.5)
    fast = simulate(jobs, schedule_config("fcfs"), COST, 600, 16)
    slow_cost = CostModel(build_roofline_profile(MODEL, hardware_spec("a100-80gb")), MODEL)
    slow = simulate(jobs, schedule_config("fcfs"), slow_cost, 600, 16)
    frames = [(requests_frame(o.scheduler, "fcfs", jobs.sessions), o.steps.all_steps()) for o in (fast, slow)]
    entry = compare_runs(*frames[0], *frames[1])
    measured = frames[1][0]
    spans = measured.groupby("session").apply(lambda g: g["finish_s"].max() - g["arrival_s"].min())
    assert entry["session_s_mean_measured"] == pytest.approx(spans.mean())
    assert entry["session_s_mean_error"] == pytest.approx(
        abs(entry["session_s_mean_predicted"] - spans.mean()) / spans.mean()) and entry["session_s_mean_error"] > 0
    assert "session mean s" in latency_table({"fcfs": entry})
    bare = (requests_frame(fast.scheduler, "fcfs"), fast.steps.all_steps())  # no session column
    plain = compare_runs(*bare, *bare)
    assert "session_s_mean_predicted" not in plain and "session mean s" not in latency_table({"fcfs": plain})
