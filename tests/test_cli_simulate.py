"""``batchlab simulate`` as a user runs it: records written, table printed, clear errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from cli_runs import batchlab

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = ("makespan_s", "throughput_tokens_per_s", "output_tokens_per_s", "prefill_tokens_logical",
            "prefill_tokens_computed", "prefill_token_saving", "ttft_s_p50", "ttft_s_p99", "tpot_s_p50",
            "tpot_s_p99", "peak_kv_blocks", "num_steps", "num_preemptions", "profile_kind")


def test_simulate_writes_records_and_prints_the_table(tmp_path):
    run_dir = tmp_path / "run"
    result = batchlab("simulate", "workload.params.num_requests=64", "workload.params.share_degree=4",
                      "report=false", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr
    assert "prefix_grouped" in result.stdout and "vs fcfs" in result.stdout
    assert "tokens/s/GPU" not in result.stdout  # one GPU: the column would repeat tokens/s
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["complete"] and summary["profile_kind"] == "roofline" and summary["hardware"] == "h100-sxm"
    from scheduler import kv_blocks
    from scheduler._compiled import compiled
    assert summary["kv_block_manager"] == ("compiled" if kv_blocks.NativeBlockManager else "python")
    assert summary["profile_lookup"] == ("compiled" if compiled("Bilinear", "sim._interp") else "python")
    assert list(summary["schedules"]) == ["fcfs", "sorted", "prefix_grouped", "decode_first", "batchllm"]
    for name, entry in summary["schedules"].items():
        assert set(REQUIRED) <= set(entry), name
    requests = pd.read_parquet(run_dir / "requests.parquet")
    steps = pd.read_parquet(run_dir / "steps.parquet")
    assert len(requests) == 5 * 64
    grouped = summary["schedules"]["prefix_grouped"]
    assert grouped["num_steps"] == int((steps["schedule"] == "prefix_grouped").sum())
    assert grouped["prefill_tokens_computed"] == int(steps.loc[steps["schedule"] == "prefix_grouped",
                                                               "num_prefill_tokens"].sum())
    assert "llama-3.1-8b" in (run_dir / "config.yaml").read_text()
    assert not (run_dir / "parts").exists()


def test_simulate_does_not_import_pandas(tmp_path):
    """The run records are written through pyarrow's buffers (traces/columns.py): importing
    pandas alone took longer than writing the records of the Azure replay."""
    code = ("import sys\nfrom batchlab.cli import main\ntry:\n    main(sys.argv[1:])\nfinally:\n"
            "    print('PANDAS', 'pandas' in sys.modules, file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code, "simulate", "workload.params.num_requests=32",
                             "workload.params.share_degree=4", "schedule.names=[fcfs,batchllm]", "report=false",
                             f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert result.returncode == 0, result.stderr
    assert "PANDAS False" in result.stderr  # two schedules: the combined files were rebuilt too
    assert len(pd.read_parquet(tmp_path / "run" / "steps.parquet")["schedule"].unique()) == 2


@pytest.mark.parametrize("overrides, message", [
    (["schedule.names=[fcfs,fifo]"], "unknown schedule 'fifo'"),
    (["workload=file"], "needs a path"),
    (["model=llama-3.1-70b"], "does not fit on 'h100-sxm'"),
    (["model=llama-3.1-70b", "hardware.overrides.tensor_parallel=3"], "cannot be split over tensor_parallel=3"),
    (["hardware.overrides.tensor_parallel=2", "profile=profiles/any"], "applies to the roofline profile only"),
    (["+schedule.overrides.chunk=3"], "unknown option"),
    (["schedule.overrides.chunk=3"], "unknown option"),  # the plain form reaches the same check
    (["model.overrides.num_layerz=3"], "unknown field(s) ['num_layerz']; expected some of"),
    (["workload.params.share_degree=0"], "share_degree is 0"),
])
def test_simulate_errors_are_one_clear_line(tmp_path, overrides, message):
    result = batchlab("simulate", *overrides, f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_trace_file_is_named(tmp_path):
    result = batchlab("simulate", "workload=file", "workload.path=nowhere.jsonl", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2 and "nowhere.jsonl: no such file" in result.stderr
    # and how to give one: a replay's default trace is a shared copy that a machine may lack
    assert "(workload.path is 'nowhere.jsonl'; set workload.path=FILE to your workload file)" in result.stderr


def test_interrupt_keeps_finished_schedules(tmp_path):
    import signal
    import time

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    # a child of a background job inherits SIGINT as ignored: restore the default, as a terminal has
    process = subprocess.Popen([sys.executable, "-m", "batchlab.cli", "simulate", "report=false",
                                "schedule.names=[prefix_grouped,fcfs,decode_first]", f"hydra.run.dir={tmp_path}"],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    summary = tmp_path / "summary.json"
    deadline = time.time() + 120
    while not summary.exists() and time.time() < deadline:  # prefix_grouped is done
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr[-2000:]
    assert "interrupted" in stderr and "Traceback" not in stderr
    data = json.loads(summary.read_text())
    assert data["complete"] is False and list(data["schedules"]) == ["prefix_grouped"]
    assert len(pd.read_parquet(tmp_path / "requests.parquet")) == 6400


def readme_commands():
    """The ``batchlab simulate|plan|run|profile|validate`` examples of README.md's code blocks."""
    import re
    import shlex

    lines = (ROOT / "README.md").read_text().splitlines()
    for number, line in enumerate(lines, 1):
        match = re.match(r"^ {4}(?:.*&& )?(?:\.venv/bin/)?batchlab (simulate|plan|run|profile|validate)\b(.*)$", line)
        if match and "--multirun" not in line:
            yield number, match.group(1), shlex.split(match.group(2).split(" #")[0])


@pytest.mark.parametrize("number, command, args", list(readme_commands()))
def test_readme_examples_compose(number, command, args):
    # every example a user may copy from the README must be a valid command line: Hydra
    # composes it (groups, keys, experiments) as the CLI passes it on
    from hydra import compose, initialize_config_dir

    from batchlab.cli import hydra_overrides
    from batchlab.command import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(command, overrides=hydra_overrides(args))
    assert cfg is not None, f"README.md:{number}"


def test_readme_has_examples_for_each_command():
    assert {command for _, command, _ in readme_commands()} == {"simulate", "plan", "run", "profile", "validate"}


@pytest.mark.parametrize("how", [["-m"], ["hydra.mode=MULTIRUN"]])
def test_sweeps_run_every_job_whether_asked_by_flag_or_by_mode(tmp_path, how):
    # the CLI skips Hydra's first composition (a probe for hydra.mode) where nothing sets the
    # mode; -m must still sweep, and so must a mode set on the command line (probed as before)
    result = batchlab("simulate", *how, "workload.params.num_requests=32,64", "workload.params.share_degree=4",
                      "schedule.names=[fcfs]", "report=false", f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    for job in ("0", "1"):
        assert json.loads((tmp_path / job / "summary.json").read_text())["complete"]


def test_the_mode_probe_is_skipped_only_where_nothing_can_set_the_mode(tmp_path):
    from batchlab.cli import mode_is_unset
    from batchlab.command import CONF_DIR

    assert mode_is_unset(["+experiment=azure_replay", "-m", "seed=1,2"], CONF_DIR)
    assert not mode_is_unset(["hydra.mode=MULTIRUN"], CONF_DIR)
    assert not mode_is_unset(["hydra.searchpath=[file:///elsewhere]"], CONF_DIR)
    (tmp_path / "experiment").mkdir()
    (tmp_path / "simulate.yaml").write_text("defaults:\n  - _self_\n")
    assert mode_is_unset([], str(tmp_path))
    (tmp_path / "experiment" / "sweep.yaml").write_text("# @package _global_\nhydra:\n  mode: MULTIRUN\n")
    assert not mode_is_unset([], str(tmp_path))
