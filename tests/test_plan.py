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
