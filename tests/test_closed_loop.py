"""Closed-loop arrivals: a pool of clients, each sending its next request when its last one
finished (plus a think time), as a benchmark client with a concurrency limit does."""
import numpy as np
import pytest
import torch

from scheduler import schedule_config
from scheduler.errors import ConfigError
from scheduler.model_spec import model_spec
from sim.cost_model import CostModel
from sim.hardware import hardware_spec
from sim.roofline import build_roofline_profile
from sim.simulator import simulate
from traces.arrivals import with_arrivals
from traces.synthetic import batchllm_microbenchmark

MODEL = model_spec("llama-3.1-8b")
COST = CostModel(build_roofline_profile(MODEL, hardware_spec("h100-sxm")), MODEL)
WORKLOAD = batchllm_microbenchmark(512, 64, 32, 4, 160, shuffle=True, seed=2)


def lifetimes(outcome):
    states = sorted((s for s in outcome.scheduler.states.values() if s.request is not None), key=lambda s: s.req_id)
    return [(s.req_id, s.request.arrival_s, s.finish_s) for s in states]


@pytest.mark.parametrize("fast_forward", [False, True])
@pytest.mark.parametrize("clients", [1, 8, 64])
def test_clients_without_think_time_are_a_cap_on_running_requests(clients, fast_forward):
    """With no think time a client's next request arrives as its last one finishes, schedulable
    in the next step: under fcfs that is an offline batch capped at `clients` running requests,
    step for step (the waiting count aside: the capped batch has everyone waiting)."""
    closed = with_arrivals(WORKLOAD, "closed", clients=clients)
    assert not closed.is_offline and "closed loop of" in closed.describe()
    looped = simulate(closed, schedule_config("fcfs"), COST, 600, 16, fast_forward=fast_forward).steps.columns()
    capped = simulate(WORKLOAD, schedule_config("fcfs", max_num_seqs=clients), COST, 600, 16,
                      fast_forward=fast_forward).steps.columns()
    for name in looped:
        if name != "num_waiting":
            assert np.array_equal(looped[name], capped[name]), name


def test_each_client_keeps_one_request_in_flight_and_thinks_between_them():
    closed = with_arrivals(WORKLOAD, "closed", clients=8, think_s=0.25)
    outcome = simulate(closed, schedule_config("batchllm"), COST, 600, 16)
    rows = lifetimes(outcome)
    slow = simulate(closed, schedule_config("batchllm"), COST, 600, 16, fast_forward=False)
    assert lifetimes(slow) == rows and slow.num_events > outcome.num_events  # stretches change nothing
    assert len(rows) == len(WORKLOAD)
    arrivals = sorted(a for _, a, _ in rows)
    assert arrivals[:8] == [0.0] * 8
    finishes = sorted(f for _, _, f in rows)
    # the k-th request after the first 8 is sent 0.25 s after the k-th finish
    assert arrivals[8:] == pytest.approx([f + 0.25 for f in finishes[:len(rows) - 8]], abs=1e-9)
    for t in np.linspace(0.0, outcome.makespan_s, 400):  # never more than 8 in flight
        assert sum(a <= t < f for _, a, f in rows) <= 8
    # the whole batch offline lets batchllm group it; 8 clients show it 8 requests at a time
    offline = simulate(WORKLOAD, schedule_config("batchllm"), COST, 600, 16)
    assert offline.makespan_s < outcome.makespan_s / 2


def test_closed_loop_settings_are_checked():
    with pytest.raises(ConfigError, match="closed-loop arrivals need clients >= 1"):
        with_arrivals(WORKLOAD, "closed")
    with pytest.raises(ConfigError, match="closed-loop think_s is -1"):
        with_arrivals(WORKLOAD, "closed", clients=4, think_s=-1)
    with pytest.raises(ConfigError, match="clients is for closed-loop arrivals"):
        with_arrivals(WORKLOAD, "poisson", rate=1.0, clients=4)
    with pytest.raises(ConfigError, match="think_s is for closed-loop arrivals"):
        with_arrivals(WORKLOAD, "offline", think_s=1.0)
    with pytest.raises(ConfigError, match="closed-loop think_cv is -0.5; expected >= 0"):
        with_arrivals(WORKLOAD, "closed", clients=2, think_cv=-0.5)


@pytest.mark.parametrize("policy", ["least_loaded", "cache_aware"])
def test_a_client_pool_behind_a_router(policy):
    """One replica behind the router is the simulator's closed loop, record for record; on three,
    the pool still keeps at most its clients in flight, each sending as its last one finished."""
    from sim.cluster import RouterConfig, simulate_cluster

    closed = with_arrivals(WORKLOAD, "closed", clients=12, think_s=0.1)
    alone = simulate(closed, schedule_config("batchllm"), COST, 600, 16, fast_forward=False)
    (routed,) = simulate_cluster(closed, schedule_config("batchllm"), COST, 600, 16, 1, RouterConfig(policy))
    assert lifetimes(routed) == lifetimes(alone)
    for name, values in alone.steps.columns().items():
        assert np.array_equal(values, routed.steps.columns()[name]), name
    replicas = simulate_cluster(closed, schedule_config("batchllm"), COST, 600, 16, 3, RouterConfig(policy))
    rows = [row for outcome in replicas for row in lifetimes(outcome)]
    assert sorted(r for r, _, _ in rows) == sorted(r.req_id for r in WORKLOAD.requests)
    arrivals, finishes = sorted(a for _, a, _ in rows), sorted(f for _, _, f in rows)
    assert arrivals[:12] == [0.0] * 12
    assert arrivals[12:] == pytest.approx([f + 0.1 for f in finishes[:len(rows) - 12]], abs=1e-9)
    assert all(len(lifetimes(outcome)) > 0 for outcome in replicas)  # the router spread them


def test_the_engine_runs_a_closed_loop_with_the_same_tokens():
    from engine.loop import run_engine
    from engine.runner import ModelRunner
    from engine.weights import random_weights

    torch.set_num_threads(1)
    spec = model_spec("tiny")
    workload = batchllm_microbenchmark(40, 13, 6, 3, 9, seed=4)
    tokens = {}
    for name, run in (("offline", workload), ("closed", with_arrivals(workload, "closed", clients=2, think_s=0.01))):
        runner = ModelRunner(spec, 256, 16, weights=random_weights(spec, seed=2))
        outcome = run_engine(run, schedule_config("fcfs"), runner, 256, 16)
        tokens[name] = {r: tuple(t) for r, t in runner.outputs.items()}
        if name == "closed":
            rows = lifetimes(outcome)
            assert len(rows) == 9 and sorted(a for _, a, _ in rows)[:2] == [0.0, 0.0]
            for _, arrival, _ in rows:  # at most 2 in flight whenever a request was sent
                assert sum(a <= arrival < f for _, a, f in rows) <= 2
            assert sum(a == 0.0 for _, a, _ in rows) == 2  # the other 7 were sent as clients came free
    assert tokens["closed"] == tokens["offline"]
    with pytest.raises(ConfigError, match="is a closed loop: .* cannot run with online=false"):
        run_engine(with_arrivals(workload, "closed", clients=2), schedule_config("fcfs"),
                   ModelRunner(spec, 256, 16), 256, 16, online=False)


def test_agent_sessions_reuse_their_context_as_counted_by_hand():
    """One client runs 4 sessions of 3 turns one after another (lengths in whole blocks): with a
    cache that keeps everything, a turn reuses its session's previous prompt, and a session's
    first turn the shared system prompt, and nothing else."""
    from batchlab.records import outcome_summary
    from traces.synthetic import agent_sessions

    sessions = agent_sessions(num_sessions=4, turns=3, system_len=32, task_len=16, observation_len=32, output_len=16)
    assert sessions.sessions == ((0, 1, 2), (3, 4, 5), (6, 7, 8), (9, 10, 11))
    prompts = [48 + 48 * turn for turn in range(3)] * 4  # system 32 + task 16, then 48 more a turn
    # a turn reuses the previous turn's prompt; a later session's first turn the system prompt
    reused = [0, 48, 96] + [32, 48, 96] * 3
    outcome = simulate(with_arrivals(sessions, "closed", clients=1), schedule_config("fcfs"), COST, 4000, 16)
    assert outcome_summary(outcome)["prefill_token_saving"] == pytest.approx(1 - (sum(prompts) - sum(reused)) / sum(prompts))
    assert [r.prompt_len for r in sessions.requests] == prompts


def test_a_sessions_turns_wait_for_each_other():
    from traces.synthetic import agent_sessions

    sessions = with_arrivals(agent_sessions(num_sessions=6, turns=4, system_len=256, task_len=64,
                                            observation_len=128, output_len=32), "closed", clients=2, think_s=0.5)
    for fast_forward in (False, True):
        outcome = simulate(sessions, schedule_config("batchllm"), COST, 600, 16, fast_forward=fast_forward)
        rows = {r: (a, f) for r, a, f in lifetimes(outcome)}
        for session in sessions.sessions:
            for turn, following in zip(session, session[1:]):  # the next turn 0.5 s after the answer
                assert rows[following][0] == pytest.approx(rows[turn][1] + 0.5, abs=1e-9)
        starts = sorted(rows[s[0]][0] for s in sessions.sessions)
        assert starts[:2] == [0.0, 0.0] and all(t > 0 for t in starts[2:])  # two clients, six sessions
    with pytest.raises(ConfigError, match="holds sessions, whose turns wait for each other"):
        simulate(agent_sessions(num_sessions=2, turns=2), schedule_config("fcfs"), COST, 4000, 16)
    with pytest.raises(ConfigError, match="give the sessions' arrivals .process=poisson"):
        with_arrivals(agent_sessions(num_sessions=2, turns=2), "trace")
    with pytest.raises(ConfigError, match="clients is for closed-loop arrivals .process=closed., not 'poisson'"):
        with_arrivals(agent_sessions(num_sessions=2, turns=2), "poisson", rate=1.0, clients=4)


def test_the_engine_runs_agent_sessions_with_the_same_tokens_under_any_schedule():
    from engine.loop import run_engine
    from engine.runner import ModelRunner
    from engine.weights import random_weights
    from traces.synthetic import agent_sessions

    torch.set_num_threads(1)
    spec = model_spec("tiny")
    workload = with_arrivals(agent_sessions(num_sessions=3, turns=2, system_len=24, task_len=8, observation_len=16,
                                            output_len=4), "closed", clients=2)
    tokens = {}
    for schedule in ("fcfs", "batchllm"):
        runner = ModelRunner(spec, 256, 16, weights=random_weights(spec, seed=2))
        outcome = run_engine(workload, schedule_config(schedule), runner, 256, 16)
        rows = {r: (a, f) for r, a, f in lifetimes(outcome)}
        for session in workload.sessions:
            assert rows[session[1]][0] >= rows[session[0]][1]  # the second turn after the first's answer
        tokens[schedule] = {r: tuple(t) for r, t in runner.outputs.items()}
    assert tokens["fcfs"] == tokens["batchllm"] and all(len(t) == 4 for t in tokens["fcfs"].values())


def test_an_agents_answer_is_cached_for_its_next_turn():
    """A turn's generated blocks are cached under the identities the next turn's prompt gives
    them (as vLLM caches filled blocks): with 33 output tokens, 32 have KV (the last is never
    fed back), two whole blocks, which the next turn reuses after the previous prompt."""
    from batchlab.records import outcome_summary
    from traces.synthetic import agent_sessions

    sessions = agent_sessions(num_sessions=4, turns=3, system_len=32, task_len=16, observation_len=31, output_len=33)
    prompts = [48 + 64 * turn for turn in range(3)] * 4
    reused = [0, 48 + 32, 112 + 32] + [32, 48 + 32, 112 + 32] * 3
    closed = with_arrivals(sessions, "closed", clients=1)
    outcome = simulate(closed, schedule_config("fcfs"), COST, 4000, 16)
    cached = {s.req_id: s.num_cached_tokens for s in outcome.scheduler.states.values() if s.request is not None}
    assert [cached[r.req_id] for r in sessions.requests] == reused
    assert outcome_summary(outcome)["prefill_token_saving"] == pytest.approx(sum(reused) / sum(prompts))
    # without a cache nothing is reused, answers included
    off = simulate(closed, schedule_config("fcfs", caching="off"), COST, 4000, 16)
    assert all(s.num_cached_tokens == 0 for s in off.scheduler.states.values() if s.request is not None)


def test_the_engine_feeds_a_turn_the_answer_it_generated_and_caching_it_changes_no_token():
    from engine.loop import run_engine
    from engine.runner import ModelRunner
    from engine.weights import random_weights
    from traces.synthetic import agent_sessions

    torch.set_num_threads(1)
    spec = model_spec("tiny")
    workload = with_arrivals(agent_sessions(num_sessions=3, turns=3, system_len=32, task_len=16, observation_len=15,
                                            output_len=17), "closed", clients=2)
    tokens, hits = {}, {}
    for caching in ("lru", "off"):
        runner = ModelRunner(spec, 256, 16, weights=random_weights(spec, seed=2))
        outcome = run_engine(workload, schedule_config("fcfs", caching=caching), runner, 256, 16)
        tokens[caching] = {r: tuple(t) for r, t in runner.outputs.items()}
        hits[caching] = {s.req_id: s.num_cached_tokens for s in outcome.scheduler.states.values() if s.request}
        first, second = workload.sessions[0][:2]
        prompt = next(r for r in workload.requests if r.req_id == second).prompt
        # the next turn's prompt holds the answer the first turn generated, at 48..65
        assert tuple(runner._tokens(second, prompt, 48 + 17 + 15, 48, 65).tolist()) == tokens[caching][first]
    assert tokens["lru"] == tokens["off"]
    second = workload.sessions[0][1]  # turn 2 reuses turn 1's prompt (48) and its answer's full block (16)
    assert hits["lru"][second] >= 48 + 16 and hits["off"][second] == 0


def test_think_times_vary_as_asked_and_belong_to_their_requests():
    """think_cv = 1: exponential think times of mean think_s, drawn per request from the seed,
    so the same workload thinks alike in any run, however its sends are ordered."""
    from sim.cluster import RouterConfig, simulate_cluster
    from traces.synthetic import agent_sessions

    sessions = agent_sessions(num_sessions=20, turns=4, system_len=64, task_len=32, observation_len=64, output_len=16)
    closed = with_arrivals(sessions, "closed", clients=4, think_s=0.5, think_cv=1.0, seed=3)
    assert "cv 1" in closed.describe()
    outcome = simulate(closed, schedule_config("fcfs"), COST, 4000, 16)
    rows = {r: (a, f) for r, a, f in lifetimes(outcome)}
    waits = [rows[b][0] - rows[a][1] for s in sessions.sessions for a, b in zip(s, s[1:])]
    assert len(waits) == 60 and min(waits) >= 0 and len(set(round(w, 9) for w in waits)) == 60
    assert 0.5 * 0.65 < np.mean(waits) < 0.5 * 1.35 and np.std(waits) > 0.5 * 0.5  # exponential: std ~ mean
    (routed,) = simulate_cluster(closed, schedule_config("fcfs"), COST, 4000, 16, 1, RouterConfig("least_loaded"))
    assert lifetimes(routed) == lifetimes(simulate(closed, schedule_config("fcfs"), COST, 4000, 16, fast_forward=False))
    fixed = simulate(with_arrivals(sessions, "closed", clients=4, think_s=0.5), schedule_config("fcfs"), COST, 4000, 16)
    fixed_rows = {r: (a, f) for r, a, f in lifetimes(fixed)}
    assert {round(fixed_rows[b][0] - fixed_rows[a][1], 9) for s in sessions.sessions for a, b in zip(s, s[1:])} == {0.5}

