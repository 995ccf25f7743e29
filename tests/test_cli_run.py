"""``batchlab run`` as a user runs it: measured records readable by reports, clear errors up front."""
import json

import pytest

from reports.build import build_report
from test_cli_simulate import batchlab

SMALL = ["workload.params.num_requests=16", "workload.params.distinct_len=32", "workload.params.share_degree=4", "workload.params.prefix_len=64",
         "workload.params.output_len=4", "schedule.names=[fcfs,batchllm]", "report=false", "progress=false"]


def test_run_writes_measured_records_a_report_compares_with_a_simulation(tmp_path):
    result = batchlab("run", *SMALL, f"hydra.run.dir={tmp_path / 'measured'}")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "measured" / "summary.json").read_text())
    assert summary["mode"] == "measured" and summary["profile_kind"] == "measured"
    assert summary["schedules"]["batchllm"]["num_requests"] == 16
    sim = batchlab("simulate", *SMALL, "model=tiny", f"hydra.run.dir={tmp_path / 'simulated'}")
    assert sim.returncode == 0, sim.stderr
    build_report([tmp_path / "measured", tmp_path / "simulated"], tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert md.count("## Workload") == 1 and "measured" in md and "simulated" in md


@pytest.mark.parametrize("overrides, message", [
    (["kv_blocks=2"], "request 0: needs"),
    (["weights=no/such/dir"], "weights directory"),
    pytest.param(["device=cuda"], "no CUDA device", marks=pytest.mark.skipif(
        __import__("torch").cuda.is_available(), reason="this machine has a CUDA device")),
    (["model=llama-3.1-70b", "dtype=float32"], "does not fit"),
    # the engine's DeltaNet states count too: 3 layers x (4 x 16 x 8 fp32 values + 3 x 96 conv inputs) a block
    (["model=tiny-qwen3.5", "kv_blocks=50000000"], "(409.60 GB) and DeltaNet states for them (480.00 GB) does not fit"),
])
def test_run_errors_before_any_work(tmp_path, overrides, message):
    result = batchlab("run", *SMALL, *overrides, f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["run", "profile", "validate"])
def test_unknown_device_is_one_clear_line(tmp_path, command):
    result = batchlab(command, "device=tpu", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2 and "unknown device 'tpu'" in result.stderr and "Traceback" not in result.stderr
