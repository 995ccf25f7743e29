"""``batchlab plan``: every tensor-parallel size x replicas on N GPUs, ranked."""
import json

import pytest

from batchlab.plan import tensor_parallel_sizes
from scheduler.errors import ConfigError
from test_cli_simulate import batchlab


def test_tensor_parallel_sizes_divide_the_gpus():
    assert tensor_parallel_sizes(8) == [1, 2, 4, 8]
    assert tensor_parallel_sizes(12) == [1, 2, 4]
    assert tensor_parallel_sizes(1) == [1]
    with pytest.raises(ConfigError, match="gpus is 0"):
        tensor_parallel_sizes(0)


def test_plan_ranks_every_way_and_each_is_the_simulation_of_that_setup(tmp_path):
    params = ["workload.params.num_requests=96", "workload.params.share_degree=4", "workload.params.prefix_len=500"]
    result = batchlab("plan", *params, "gpus=4", f"hydra.run.dir={tmp_path / 'plan'}")
    assert result.returncode == 0, result.stderr
    plan = json.loads((tmp_path / "plan" / "plan.json").read_text())
    setups = {(row["tensor_parallel"], row["replicas"], row["schedule"]) for row in plan["plans"]}
    assert setups == {(tp, 4 // tp, s) for tp in (1, 2, 4) for s in ("fcfs", "batchllm")}
    spans = [row["makespan_s"] for row in plan["plans"]]
    assert spans == sorted(spans) and "vs best" in result.stdout
    # the row for 2 GPUs a replica is what simulate says of two replicas of a TP-2 engine
    alone = batchlab("simulate", *params, "replicas=2", "hardware.overrides.tensor_parallel=2",
                     "schedule.names=[fcfs,batchllm]", "report=false", f"hydra.run.dir={tmp_path / 'sim'}")
    assert alone.returncode == 0, alone.stderr
    summary = json.loads((tmp_path / "sim" / "summary.json").read_text())
    for row in plan["plans"]:
        if row["tensor_parallel"] == 2:
            assert row["makespan_s"] == pytest.approx(summary["schedules"][row["schedule"]]["makespan_s"], rel=1e-12)
            assert row["tokens_per_s_per_gpu"] == pytest.approx(
                summary["schedules"][row["schedule"]]["throughput_tokens_per_s"] / 4, rel=1e-12)


def test_plan_says_what_does_not_fit(tmp_path):
    result = batchlab("plan", "model=llama-3.1-70b", "gpus=2", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2
    assert "fits no tensor-parallel size of 2 x h100-sxm" in result.stderr and "Traceback" not in result.stderr
    given = batchlab("plan", "hardware.overrides.tensor_parallel=2", f"hydra.run.dir={tmp_path / 'b'}")
    assert given.returncode == 2 and "give gpus=N" in given.stderr
    closed = batchlab("plan", "workload.arrivals.process=closed", "workload.arrivals.clients=8",
                      f"hydra.run.dir={tmp_path / 'c'}")
    assert closed.returncode == 2 and "give sharding=least_loaded or cache_aware" in closed.stderr


def test_plan_compares_gpu_types_by_cost(tmp_path):
    """Several GPU types, each with its own count; with prices, each plan's GPU-hours (makespan x
    GPUs) and cost, ranked by cost; a type's rows are what a plan of that type alone gives."""
    params = ["workload.params.num_requests=96", "workload.params.share_degree=4", "workload.params.prefix_len=500",
              "schedule.names=[batchllm]", "progress=false"]
    result = batchlab("plan", *params, "hardware_options=[h100-sxm:2,l40s:4]",
                      "price_per_gpu_hour={h100-sxm:3.0,l40s:1.0}", "rank_by=cost", f"hydra.run.dir={tmp_path / 'both'}")
    assert result.returncode == 0, result.stderr
    plan = json.loads((tmp_path / "both" / "plan.json").read_text())
    setups = {(row["hardware"], row["gpus"], row["tensor_parallel"]) for row in plan["plans"]}
    assert setups == {("h100-sxm", 2, 1), ("h100-sxm", 2, 2), ("l40s", 4, 1), ("l40s", 4, 2), ("l40s", 4, 4)}
    price = {"h100-sxm": 3.0, "l40s": 1.0}
    for row in plan["plans"]:
        assert row["gpu_hours"] == pytest.approx(row["makespan_s"] * row["gpus"] / 3600, rel=1e-12)
        assert row["cost"] == pytest.approx(row["gpu_hours"] * price[row["hardware"]], rel=1e-12)
    costs = [row["cost"] for row in plan["plans"]]
    assert costs == sorted(costs) and "GPU-hours" in result.stdout and "l40s" in result.stdout
    assert (tmp_path / "both" / "plan.png").stat().st_size > 10_000  # makespan against cost, drawn
    alone = batchlab("plan", *params, "hardware=l40s", "gpus=4", f"hydra.run.dir={tmp_path / 'alone'}")
    assert alone.returncode == 0, alone.stderr
    single = {row["tensor_parallel"]: row["makespan_s"] for row in json.loads(
        (tmp_path / "alone" / "plan.json").read_text())["plans"]}
    assert {row["tensor_parallel"]: row["makespan_s"] for row in plan["plans"] if row["hardware"] == "l40s"} == single
    assert "GPU-hours" not in alone.stdout  # one GPU type, no prices: the plain table


def test_plan_options_and_prices_are_checked():
    from omegaconf import OmegaConf

    from batchlab.plan import gpu_options, gpu_prices

    def cfg(**extra):
        return OmegaConf.create({"gpus": 8, "hardware": {"preset": "h100-sxm"}, "hardware_options": None,
                                 "price_per_gpu_hour": None, "rank_by": "makespan", **extra})

    assert gpu_options(cfg()) == [("h100-sxm", 8)]
    assert gpu_options(cfg(hardware_options=["h100-sxm", "l40s:16"])) == [("h100-sxm", 8), ("l40s", 16)]
    with pytest.raises(ConfigError, match="entry 'l40s:many': expected PRESET or PRESET:GPUS"):
        gpu_options(cfg(hardware_options=["l40s:many"]))
    with pytest.raises(ConfigError, match="entry 'l40s:0': 0 GPUs; expected a whole number >= 1"):
        gpu_options(cfg(hardware_options=["l40s:0"]))
    with pytest.raises(ConfigError, match="unknown GPU type 'h300'; expected one of"):
        gpu_options(cfg(hardware_options=["h300:8"]))
    with pytest.raises(ConfigError, match="lists a GPU type and count twice"):
        gpu_options(cfg(hardware_options=["l40s:8", "l40s"]))  # gpus=8: the same plan twice
    presets = {"h100-sxm", "l40s"}
    with pytest.raises(ConfigError, match=r"names \['a100-80gb'\], which the plan does not cover"):
        gpu_prices(cfg(price_per_gpu_hour={"a100-80gb": 1.0}), presets)
    with pytest.raises(ConfigError, match="price_per_gpu_hour.l40s is -1; expected a price > 0"):
        gpu_prices(cfg(price_per_gpu_hour={"l40s": -1}), presets)
    with pytest.raises(ConfigError, match=r"rank_by=cost needs price_per_gpu_hour for every GPU type; missing \['l40s'\]"):
        gpu_prices(cfg(price_per_gpu_hour={"h100-sxm": 2.0}, rank_by="cost"), presets)
    from batchlab.plan import rank_key
    from traces.synthetic import agent_sessions, system_prompt_workload as system_prompts

    with pytest.raises(ConfigError, match=r"rank_by is 'speed'; expected one of \['makespan', 'cost', 'ttft'"):
        rank_key(cfg(rank_by="speed"), system_prompts())
    with pytest.raises(ConfigError, match="rank_by=session ranks by the sessions' mean time, and workload"):
        rank_key(cfg(rank_by="session"), system_prompts())
    assert rank_key(cfg(rank_by="session"), agent_sessions(num_sessions=2, turns=2)) == "session_s_mean"
    assert rank_key(cfg(rank_by="ttft"), system_prompts()) == "ttft_s_p50"


def test_plan_ranks_agents_jobs_by_their_mean_time(tmp_path):
    params = ["workload=agent_jobs", "workload.params.num_sessions=24", "workload.params.turns=3",
              "workload.arrivals.rate=4", "schedule.names=[fcfs]", "sharding=least_loaded", "progress=false"]
    result = batchlab("plan", *params, "gpus=2", "rank_by=session", f"hydra.run.dir={tmp_path / 'plan'}")
    assert result.returncode == 0, result.stderr
    plan = json.loads((tmp_path / "plan" / "plan.json").read_text())
    times = [row["session_s_mean"] for row in plan["plans"]]
    assert times == sorted(times) and len(times) == 2 and plan["rank_by"] == "session"
    assert "session s" in result.stdout.splitlines()[0]
    alone = batchlab("simulate", *params, "replicas=2", "report=false", f"hydra.run.dir={tmp_path / 'sim'}")
    assert alone.returncode == 0, alone.stderr
    summary = json.loads((tmp_path / "sim" / "summary.json").read_text())["schedules"]["fcfs"]
    row = next(r for r in plan["plans"] if r["replicas"] == 2)
    assert row["session_s_mean"] == pytest.approx(summary["session_s_mean"], rel=1e-12)

