"""Data-parallel replicas: how a workload is split, and ``batchlab simulate replicas=N``."""
import json

import pandas as pd
import pytest

from scheduler.errors import ConfigError
from scheduler.grouping import group_requests
from traces.sharding import shard_workload
from traces.synthetic import batchllm_microbenchmark, system_prompt_workload


def order(workload):
    return [r.req_id for r in sorted(workload.requests, key=lambda r: (r.arrival_s, r.req_id))]


def load(shard):
    """What a replica computes: its own grouping's prefill tokens, and its output tokens."""
    return group_requests(shard.requests).computed_prefill_tokens + sum(r.output_len for r in shard.requests)


@pytest.mark.parametrize("replicas", [2, 3, 5])
def test_prefix_sharding_keeps_groups_whole_and_balances_the_work(replicas):
    workload = batchllm_microbenchmark(64, 16, 4, 4, 120, shuffle=True, seed=1)  # 30 groups of 4
    shards = shard_workload(workload, replicas, "prefix")
    assert len(shards) == replicas
    everyone = order(workload)
    for shard in shards:  # each replica keeps the workload's order
        assert [r.req_id for r in shard.requests] == [i for i in everyone if i in {r.req_id for r in shard.requests}]
    assert sorted(r.req_id for s in shards for r in s.requests) == sorted(everyone)
    home = {r.req_id: index for index, s in enumerate(shards) for r in s.requests}
    for group in group_requests(workload.requests).groups:
        assert len({home[i] for i in group.member_ids}) == 1  # no prefix computed twice
    loads = [load(s) for s in shards]
    group_work = 64 + 4 * (16 + 4)
    assert max(loads) - min(loads) <= group_work  # whole groups: off by at most one
    # round robin spreads every group: each replica computes most prefixes
    spread = shard_workload(workload, replicas, "round_robin")
    assert [len(s) for s in spread] == [len(everyone[i::replicas]) for i in range(replicas)]
    assert sum(load(s) for s in spread) > sum(loads)


def test_a_group_larger_than_a_replicas_share_is_cut():
    workload = system_prompt_workload(1, 1500, 50, 300, 20, 100, num_requests=400, seed=3)  # one prompt for all
    shards = shard_workload(workload, 4, "prefix")
    loads = [load(s) for s in shards]
    assert max(loads) / (sum(loads) / 4) < 1.02
    assert all(len(group_requests(s.requests).groups) == 1 for s in shards)  # the prefix once per replica


def test_one_replica_is_the_workload_and_bad_settings_are_refused():
    workload = batchllm_microbenchmark(64, 16, 4, 4, 16, seed=1)
    assert shard_workload(workload, 1) == [workload]
    with pytest.raises(ConfigError, match="replicas is 0"):
        shard_workload(workload, 0)
    with pytest.raises(ConfigError, match="unknown sharding 'hash'"):
        shard_workload(workload, 2, "hash")


def test_simulate_with_replicas_records_each_and_ends_with_the_last(tmp_path):
    from test_cli_simulate import batchlab

    from scheduler import schedule_config
    from scheduler.model_spec import model_spec
    from sim.cost_model import CostModel
    from sim.hardware import hardware_spec, kv_capacity_blocks
    from sim.roofline import build_roofline_profile
    from sim.simulator import simulate
    from traces.build import build_workload

    params = ["workload.params.num_requests=96", "workload.params.share_degree=4", "workload.params.prefix_len=500"]
    result = batchlab("simulate", *params, "replicas=3", "schedule.names=[fcfs,batchllm]", "report=false",
                      f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["hardware"] == "3 replicas of h100-sxm (prefix sharding)"
    assert "prefix sharding balances" not in result.stderr  # offline: nothing to warn of
    assert all(entry["num_gpus"] == 3 for entry in summary["schedules"].values())
    assert "tokens/s/GPU" in result.stdout
    requests = pd.read_parquet(tmp_path / "requests.parquet")
    steps = pd.read_parquet(tmp_path / "steps.parquet")
    assert set(requests["replica"]) == set(steps["replica"]) == {1, 2, 3}
    # the same as simulating each replica's share alone: the run ends when the last one does
    model, hardware = model_spec("llama-3.1-8b"), hardware_spec("h100-sxm")
    cost = CostModel(build_roofline_profile(model, hardware), model)
    spec = {"kind": "batchllm_microbenchmark", "params": {"prefix_len": 500, "distinct_len": 200, "output_len": 100,
                                                           "share_degree": 4, "num_requests": 96, "shuffle": True,
                                                           "seed": 0}}
    shards = shard_workload(build_workload(spec, "."), 3, "prefix")
    for name in ("fcfs", "batchllm"):
        alone = [simulate(s, schedule_config(name), cost, kv_capacity_blocks(model, hardware, 16), 16) for s in shards]
        ends = [max(st.finish_s for st in o.scheduler.states.values() if st.request is not None) for o in alone]
        assert summary["schedules"][name]["makespan_s"] == pytest.approx(max(ends), rel=1e-12)
        each = summary["schedules"][name]["replicas"]  # per replica: its requests, its last finish
        assert [r["requests"] for r in each] == [len(s) for s in shards]
        assert [r["last_finish_s"] for r in each] == pytest.approx(ends, rel=1e-12)
        mine = requests[requests["schedule"] == name]
        for index, shard in enumerate(shards, 1):
            assert sorted(mine.loc[mine["replica"] == index, "req_id"]) == sorted(r.req_id for r in shard.requests)
    # the report draws each replica's steps on a track of its own
    from reports.build import build_report

    build_report([tmp_path], tmp_path)
    tracks = {e["args"]["name"] for e in json.loads((tmp_path / "timeline.json").read_text())["traceEvents"]
              if e.get("name") == "thread_name"}
    assert {f"{n} steps, replica {i}" for n in ("fcfs", "batchllm") for i in (1, 2, 3)} == tracks


def test_prefix_sharding_of_a_replay_with_arrivals_says_what_it_does(tmp_path):
    from test_cli_simulate import batchlab

    result = batchlab("simulate", "workload.params.num_requests=32", "workload.params.share_degree=4",
                      "workload.arrivals.process=poisson", "workload.arrivals.rate=50", "replicas=2",
                      "schedule.names=[fcfs]", "report=false", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    assert "prefix sharding balances each replica's work over the whole replay, not over time" in result.stderr


def test_simulate_routes_a_replay_as_requests_arrive(tmp_path):
    from test_cli_simulate import batchlab

    result = batchlab("simulate", "workload=system_prompts", "workload.params.num_requests=200",
                      "workload.arrivals.process=poisson", "workload.arrivals.rate=20", "replicas=3",
                      "sharding=cache_aware", "router.cache_threshold=0.5", "schedule.names=[fcfs,batchllm]",
                      "report=false", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["hardware"] == "3 replicas of h100-sxm (cache_aware sharding)"
    requests = pd.read_parquet(tmp_path / "requests.parquet")
    assert len(requests) == 2 * 200 and set(requests["replica"]) == {1, 2, 3}
    bad = batchlab("simulate", "replicas=2", "sharding=random", f"hydra.run.dir={tmp_path / 'bad'}")
    assert bad.returncode == 2 and "unknown sharding 'random'" in bad.stderr and "cache_aware" in bad.stderr
