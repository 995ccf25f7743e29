"""Replicas behind a router (sim/cluster.py): the one-replica case is the simulator itself, and
the routers do what they say."""
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
from traces.synthetic import batchllm_microbenchmark, system_prompt_workload

MODEL = model_spec("llama-3.1-8b")
COST = CostModel(build_roofline_profile(MODEL, hardware_spec("h100-sxm")), MODEL)


def records(outcome):
    steps = outcome.steps.columns()
    states = sorted((s for s in outcome.scheduler.states.values() if s.request is not None), key=lambda s: s.req_id)
    return steps, [(s.req_id, s.first_token_s, s.finish_s, s.num_cached_tokens) for s in states]


@pytest.mark.parametrize("schedule", ["fcfs", "batchllm"])
def test_one_replica_behind_a_router_is_the_simulator_step_for_step(schedule):
    workload = with_arrivals(batchllm_microbenchmark(512, 64, 32, 4, 160, shuffle=True, seed=2),
                             process="poisson", rate=40.0, seed=1)
    alone = simulate(workload, schedule_config(schedule), COST, 600, 16, fast_forward=False)
    steps, requests = records(alone)
    for fast_forward in (False, True):
        (routed,) = simulate_cluster(workload, schedule_config(schedule), COST, 600, 16, 1, RouterConfig("least_loaded"),
                                     fast_forward=fast_forward)
        routed_steps, routed_requests = records(routed)
        assert requests == routed_requests  # the same floats, not just close ones
        assert set(steps) == set(routed_steps)
        for name in steps:
            assert np.array_equal(steps[name], routed_steps[name]), name


@pytest.mark.parametrize("policy", ["least_loaded", "cache_aware"])
@pytest.mark.parametrize("schedule", ["fcfs", "batchllm"])
def test_replicas_fast_forwarded_are_the_replicas_step_by_step(policy, schedule):
    """Decode stretches (up to the next arrival to any replica) change no record of any replica,
    and the router routes every request as it would step by step."""
    workload = with_arrivals(batchllm_microbenchmark(512, 64, 96, 4, 240, shuffle=True, seed=5),
                             process="poisson", rate=6.0, seed=2)
    runs = {ff: simulate_cluster(workload, schedule_config(schedule), COST, 300, 16, 3, RouterConfig(policy),
                                 fast_forward=ff) for ff in (False, True)}
    slow, fast = runs[False], runs[True]
    assert fast[0].num_events < slow[0].num_events / 2  # the stretches were taken
    for one, other in zip(slow, fast):
        steps, requests = records(one)
        fast_steps, fast_requests = records(other)
        assert requests == fast_requests and requests
        for name in steps:
            assert np.array_equal(steps[name], fast_steps[name]), name


def test_cache_aware_routing_keeps_a_prefix_on_one_replica_where_load_allows():
    # 8 system prompts at a rate four replicas serve without queueing
    workload = with_arrivals(system_prompt_workload(8, 1500, 50, 300, 20, 60, num_requests=400, seed=4),
                             process="poisson", rate=20.0, seed=3)
    outcomes = {policy: simulate_cluster(workload, schedule_config("fcfs"), COST, 20000, 16, 4, RouterConfig(policy))
                for policy in ("least_loaded", "cache_aware")}
    system_of = {r.req_id: r.prompt[0][0] for r in workload.requests}

    def spread(replicas):  # replicas a system prompt's requests went to, on average
        homes = {}
        for index, outcome in enumerate(replicas):
            for state in outcome.scheduler.states.values():
                if state.request is not None:
                    homes.setdefault(system_of[state.req_id], set()).add(index)
        return sum(map(len, homes.values())) / len(homes)

    for outcome_list in outcomes.values():  # every request served once
        ids = sorted(s.req_id for o in outcome_list for s in o.scheduler.states.values() if s.request is not None)
        assert ids == sorted(r.req_id for r in workload.requests)
    assert spread(outcomes["cache_aware"]) < 1.5 < spread(outcomes["least_loaded"])
    computed = {policy: sum(o.scheduler.stats.computed_prefill_tokens for o in outs)
                for policy, outs in outcomes.items()}
    assert computed["cache_aware"] < computed["least_loaded"]


def test_cache_aware_router_prefers_the_holder_unless_out_of_balance_or_forgotten():
    from sim.cluster import Router
    from scheduler import Request

    shared = Request(0, 0.0, ((7, 320),), 4)
    again = Request(1, 0.0, ((7, 320), (8, 32)), 4)  # 320 of its 352 tokens routed before
    router = Router(RouterConfig("cache_aware"), 3, 16)
    assert router.choose(shared, 0.0, [0, 0, 0]) == 0  # nobody holds it: the least loaded
    assert router.choose(again, 100.0, [3, 0, 0]) == 0  # replica 0 holds 91 %, loads in balance
    assert router.choose(again, 300.0, [3, 0, 0]) == 1  # last routed 200 s ago (> 120 s): forgotten
    router = Router(RouterConfig("cache_aware"), 3, 16)
    router.choose(shared, 0.0, [0, 0, 0])
    assert router.choose(again, 1.0, [100, 10, 20]) == 1  # 90 > 64 and 100 > 1.5 x 10: balance first
    assert router.choose(again, 2.0, [60, 10, 20]) == 1  # both hold it now: the less loaded of the two
    strict = Router(RouterConfig("cache_aware", cache_threshold=0.95), 3, 16)
    strict.choose(shared, 0.0, [0, 0, 0])
    assert strict.choose(again, 1.0, [3, 0, 0]) == 1  # 91 % is under the threshold: the least loaded
    with pytest.raises(ConfigError, match="unknown router 'random'"):
        RouterConfig("random")


def test_router_settings_name_the_bad_one():
    with pytest.raises(ConfigError, match=r"router.balance_rel is 0.5; expected >= 1"):
        RouterConfig("cache_aware", balance_rel=0.5)
    with pytest.raises(ConfigError, match=r"router.history_s is 0; expected seconds > 0"):
        RouterConfig("cache_aware", history_s=0)
