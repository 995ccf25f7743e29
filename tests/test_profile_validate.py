"""Profiles round-trip from the engine to the simulator; stale profiles are refused; a tiny
validation's numbers match its records."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from scheduler.errors import ConfigError
from scheduler.model_spec import model_spec
from sim.cost_model import CostModel
from scheduler.config import SCHEDULES
from sim.profile import KERNEL_AXES, Profile, table_axes
from sim.profile_check import check_profile_matches

from test_cli_simulate import batchlab

def test_profile_round_trips_into_the_simulator(profile_dir, tmp_path):
    profile = Profile.load(profile_dir)
    assert profile.kind == "measured" and profile.model == "tiny" and profile.dtype == "float32"
    assert set(KERNEL_AXES) <= set(profile.tables)
    for name, table in profile.tables.items():
        assert table.axes == table_axes(name) is not None
    # each schedule's scheduler work beyond fcfs's, on the decode batch grid, never negative
    for name in SCHEDULES:
        if name != "fcfs":
            extra = profile.tables[f"schedule_overhead_{name}"]
            assert extra.grids[0].tolist() == [1.0, 4.0] and extra.values.min() >= 0.0
    # prompt chunks' host work beyond as many decodes': measured on its own grid, never
    # negative (what it holds: test_prefill_overhead_is_prompt_host_work_beyond_decodes')
    prompt = profile.tables["prefill_overhead"]
    assert [g.tolist() for g in prompt.grids] == [[1.0, 4.0], [8.0, 64.0]]
    assert prompt.values.min() >= 0.0
    assert profile.tables["linear_qkv"].grids[0].tolist() == [1.0, 8.0, 64.0]
    assert np.all(profile.tables["mlp"].values > 0) and np.all(profile.tables["attn_decode"].values > 0)
    provenance = profile.provenance
    assert provenance["backend"] == "torch" and provenance["torch"] == torch.__version__
    assert provenance["spread_p90_over_median_max"] >= 1.0 and provenance["prefix_aware_attention"] is False
    assert provenance["kernel_options"] == {}  # the torch backend runs no Triton kernel
    profile.save(tmp_path / "copy")
    again = Profile.load(tmp_path / "copy")
    for name in profile.tables:
        assert np.array_equal(again.tables[name].values, profile.tables[name].values)
    cost = CostModel(profile, model_spec("tiny"))
    assert cost.prefix_aware is False


def test_mismatched_profiles_are_refused(profile_dir):
    profile = Profile.load(profile_dir)
    check_profile_matches(profile, model_spec("tiny"), "float32")
    with pytest.raises(ConfigError, match="profile is for model 'tiny' but the simulation is of 'llama-3.1-8b'"):
        check_profile_matches(profile, model_spec("llama-3.1-8b"))
    with pytest.raises(ConfigError, match="different model config .*num_layers: 2 there, 3 here"):
        check_profile_matches(profile, model_spec("tiny", num_layers=3))
    with pytest.raises(ConfigError, match="profile dtype 'float32' does not match the requested 'bfloat16'"):
        check_profile_matches(profile, model_spec("tiny"), "bfloat16")
    # measured with the torch backend: no kernel options; a run with the Triton kernels' is refused
    check_profile_matches(profile, model_spec("tiny"), "float32", {})
    with pytest.raises(ConfigError, match=r"other kernel options \(shared_prefix.pages: None there, 2 here\)"):
        check_profile_matches(profile, model_spec("tiny"), "float32", {"shared_prefix": {"pages": 2}})
    meta = json.loads((profile_dir / "profile.json").read_text())
    (profile_dir / "tables.npz").rename(profile_dir / "moved.npz")
    try:
        with pytest.raises(ConfigError, match="missing tables.npz"):
            Profile.load(profile_dir)
    finally:
        (profile_dir / "moved.npz").rename(profile_dir / "tables.npz")
    assert meta["kind"] == "measured"


def roofline_makespan(schedule: str) -> float:
    """validate's default workload with the test's overrides, simulated with the H100 roofline."""
    from batchlab.records import outcome_summary
    from scheduler import schedule_config
    from sim.hardware import hardware_spec
    from sim.roofline import build_roofline_profile
    from sim.simulator import simulate
    from traces.synthetic import batchllm_microbenchmark

    model = model_spec("tiny")
    cost = CostModel(build_roofline_profile(model, hardware_spec("h100-sxm")), model)
    workload = batchllm_microbenchmark(64, 32, 4, 4, 16, shuffle=True, seed=0)
    outcome = simulate(workload, schedule_config(schedule), cost, 256, 16)
    return outcome_summary(outcome)["makespan_s"]


def test_validation_numbers_match_the_records(profile_dir, tmp_path):
    result = batchlab("validate", f"profile={profile_dir}", "workload.params.num_requests=16",
                      "workload.params.share_degree=4", "workload.params.prefix_len=64",
                      "workload.params.output_len=4", "schedule.names=[fcfs,batchllm]", "noise_floor=true",
                      "roofline=h100-sxm", "report=false", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    validation = json.loads((tmp_path / "validation.json").read_text())
    assert "h100-sxm roofline profile" in result.stdout
    assert validation["offline"] and set(validation["schedules"]) == {"fcfs", "batchllm"}
    predicted = pd.read_parquet(tmp_path / "simulated" / "steps.parquet")
    measured = pd.read_parquet(tmp_path / "measured" / "steps.parquet")
    for name, entry in validation["schedules"].items():
        assert entry["plans_identical"] is True and "own_plans" not in entry  # the step error is that
        p = predicted[predicted["schedule"] == name]["duration_s"].to_numpy()
        m = measured[measured["schedule"] == name]["duration_s"].to_numpy()
        ape = np.abs(p - m) / m
        assert entry["step_error"]["mape"] == pytest.approx(ape.mean(), rel=1e-9)
        assert entry["step_error"]["ape_p90"] == pytest.approx(np.percentile(ape, 90), rel=1e-9)
        requests = pd.read_parquet(tmp_path / "measured" / "requests.parquet")
        mine = requests[requests["schedule"] == name]
        assert entry["makespan_s_measured"] == pytest.approx(mine["finish_s"].max() - mine["arrival_s"].min())
        assert "noise_step_error" in entry
        if entry["noise_step_error"]["mape"] > 0:  # printed as how many noise floors away it is
            assert f"{name} {entry['step_error']['mape'] / entry['noise_step_error']['mape']:.1f}x / " in result.stdout
        # the kernel groups cover every second of the steps, predicted and measured
        kinds = [k for group in entry["kernels"].values() for k in group.values()]
        assert sum(k["predicted_s"] for k in kinds) == pytest.approx(p.sum(), rel=1e-9)
        assert sum(k["measured_s"] for k in kinds) == pytest.approx(m.sum(), rel=2e-2)
        prompt_steps = predicted[predicted["schedule"] == name]["num_prefill_tokens"].to_numpy() > 0
        attention = entry["kernels"]["attention"]["decode_steps"]["measured_s"]
        assert attention == pytest.approx(measured[measured["schedule"] == name]["kernel_attention_s"]
                                          .to_numpy()[~prompt_steps].sum())
        # the roofline's prediction of the same plans, against the same measurement
        roof = entry["roofline"]
        assert roof["makespan_s_predicted"] == pytest.approx(roofline_makespan(name))
        assert roof["makespan_s_error"] == pytest.approx(
            abs(roof["makespan_s_predicted"] - entry["makespan_s_measured"]) / entry["makespan_s_measured"])
        assert roof["step_error"]["steps"] == len(m)
    # a yardstick (and the hypervisor's share of the CPU, where /proc/stat tells) before and
    # during every engine run, each schedule's two
    for name in ("fcfs", "batchllm"):
        for yardstick in ("yardstick_ms", "copy_ms"):  # compute, and memory bandwidth
            assert len(validation[yardstick]["per_run"][name]) == 2
            assert all(ms > 0 for ms in validation[yardstick]["per_run"][name])
        assert all(v is None or 0 <= v <= 1 for v in validation["cpu_stolen"]["per_run"][name])
    assert "machine speed (yardstick before each run): 256x256 matmul" in result.stdout and "64 MB copy" in result.stdout
    assert "seconds per kernel over the run" in (tmp_path / "validation.md").read_text()
    assert (tmp_path / "validation_scatter.png").exists()
    assert validation["ranking_measured"] == sorted(validation["schedules"],
                                                    key=lambda n: validation["schedules"][n]["makespan_s_measured"])


def test_online_validation_compares_latencies_with_their_noise_floor(profile_dir, tmp_path):
    result = batchlab("validate", f"profile={profile_dir}", "workload.params.num_requests=16",
                      "workload.params.share_degree=4", "workload.params.prefix_len=64",
                      "workload.params.output_len=4", "workload.arrivals.process=poisson",
                      "workload.arrivals.rate=400", "schedule.names=[fcfs]", "noise_floor=true",
                      "report=false", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    validation = json.loads((tmp_path / "validation.json").read_text())
    entry = validation["schedules"]["fcfs"]
    assert validation["offline"] is False and "step_error" not in entry  # online plans do not pair
    for mode in ("simulated", "measured"):
        requests = pd.read_parquet(tmp_path / mode / "requests.parquet")
        ttft = requests["first_token_s"] - requests["arrival_s"]
        key = "predicted" if mode == "simulated" else "measured"
        assert entry[f"ttft_s_p50_{key}"] == pytest.approx(np.percentile(ttft, 50), rel=1e-9)
        assert entry[f"ttft_s_p99_{key}"] == pytest.approx(np.percentile(ttft, 99), rel=1e-9)
    error = abs(entry["ttft_s_p50_predicted"] - entry["ttft_s_p50_measured"]) / entry["ttft_s_p50_measured"]
    assert entry["ttft_s_p50_error"] == pytest.approx(error)
    assert set(entry["noise"]) >= {"ttft_s_p50", "tpot_s_p99", "throughput_tokens_per_s"}
    assert all(v >= 0 for v in entry["noise"].values())
    text = (tmp_path / "validation.md").read_text()
    assert "TTFT p50 ms" in text and f"{1e3 * entry['ttft_s_p50_measured']:.1f}" in text
    # each measured step priced by the cost model for the plan the engine ran: one price a step
    steps = pd.read_parquet(tmp_path / "measured" / "steps.parquet")
    durations = steps[steps["schedule"] == "fcfs"]["duration_s"].to_numpy()
    own = entry["own_plans"]
    assert own["steps"] == len(durations) and own["busy_s_measured"] == pytest.approx(durations.sum(), rel=1e-9)
    assert 0 < own["ratio_median"] < 10 and own["busy_s_predicted"] > 0
    assert "the cost model on the engine's own plans" in text


def test_damaged_profile_names_the_directory_and_kernel(profile_dir, tmp_path):
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(profile_dir, damaged)
    arrays = dict(np.load(damaged / "tables.npz"))
    arrays["mlp.values"] = arrays["mlp.values"][:-1]  # one value short of the grid
    np.savez(damaged / "tables.npz", **arrays)
    with pytest.raises(ConfigError, match=r"damaged: kernel 'mlp': .*do not match values"):
        Profile.load(damaged)
    (damaged / "profile.json").write_text("{")
    with pytest.raises(ConfigError, match="profile.json is malformed"):
        Profile.load(damaged)


def test_noisy_tables_never_extrapolate_below_their_values():
    """A measured table whose last segment slopes down (noise) must not predict a negative
    time past the grid: CI once failed with SimPy's 'Negative delay' from exactly that."""
    from sim.profile import Table

    line = Table(("tokens",), (np.array([1.0, 2.0]),), np.array([5e-3, 1e-3]))
    far = 1000.0
    assert line.scalar(far) == pytest.approx(1e-3)
    assert float(line(far)) == pytest.approx(1e-3)
    assert line.scalar(1.5) == pytest.approx(3e-3)           # interpolation is unchanged
    rising = Table(("tokens",), (np.array([1.0, 2.0]),), np.array([1e-3, 2e-3]))
    assert rising.scalar(4.0) == pytest.approx(4e-3)          # upward extrapolation is kept
    grid = Table(("batch", "mean_context"), (np.array([1.0, 4.0]), np.array([16.0, 64.0])),
                 np.array([[2e-3, 1e-3], [1e-3, 5e-4]]))
    points = [(b, c) for b in (1, 3, 100, 10_000) for c in (1, 40, 500, 10_000)]
    for b, c in points:
        assert grid.scalar(b, c) >= 5e-4 and float(grid(b, c)) == pytest.approx(grid.scalar(b, c))
    with pytest.raises(ConfigError, match=r"time at tokens=2 is -0\.001; expected finite, non-negative"):
        Table(("tokens",), (np.array([1.0, 2.0]),), np.array([1e-3, -1e-3]))


def test_ranking_is_judged_only_where_the_engine_separates_schedules():
    from reports.validation import discordant_pairs

    measured = {"fcfs": 1.90, "decode_first": 1.88, "batchllm": 0.94, "prefix_grouped": 0.93}
    noise = {"fcfs": 0.03, "decode_first": 0.03, "batchllm": 0.02, "prefix_grouped": 0.02}
    # the simulator swaps the two pairs the engine cannot tell apart: no discordance
    predicted = {"fcfs": 1.88, "decode_first": 1.89, "batchllm": 0.89, "prefix_grouped": 0.91}
    separated, discordant = discordant_pairs(predicted, measured, noise)
    assert len(separated) == 4 and ("prefix_grouped", "decode_first") in separated
    assert discordant == []
    # ... but swapping a grouped schedule with fcfs is a real disagreement
    wrong = {**predicted, "batchllm": 2.0}
    _, discordant = discordant_pairs(wrong, measured, noise)
    assert discordant == [("batchllm", "decode_first"), ("batchllm", "fcfs")]
    # without a noise floor every difference counts
    separated, discordant = discordant_pairs(predicted, measured, {})
    assert len(separated) == 6 and set(discordant) == {("prefix_grouped", "batchllm"), ("decode_first", "fcfs")}


def test_point_lookups_equal_the_vectorised_lookup_bit_for_bit():
    """The cost model costs single steps through ``Table.scalar`` and decode stretches through
    the numpy lookup; fast-forwarded and step-by-step simulations agree to the last bit only if
    these two do. Tables with noisy (downward) segments, points below, inside and past the grid,
    on grid points, and grids of one point."""
    from sim.profile import Table

    rng = np.random.default_rng(7)
    for shape in ((1,), (2,), (7,), (1, 5), (6, 1), (2, 2), (9, 13)):
        grids = tuple(np.cumsum(rng.uniform(0.5, 300.0, n)) for n in shape)
        table = Table(tuple(f"axis{i}" for i in range(len(shape))), grids, rng.uniform(1e-5, 1e-2, shape))
        coords = [np.concatenate([rng.uniform(0.0, 1.5 * g[-1] + 10.0, 200), g, [0.0, g[-1] * 40.0]])
                  for g in grids]
        if len(shape) == 2:
            coords = [np.repeat(coords[0], len(coords[1])), np.tile(coords[1], len(coords[0]))]
        vectorised = table(*coords)
        pointwise = np.array([table.scalar(*(float(c[k]) for c in coords)) for k in range(len(coords[0]))])
        assert np.array_equal(pointwise, vectorised), shape


def test_validation_runs_every_schedule_before_running_any_again(profile_dir, tmp_path, monkeypatch):
    """The noise floor's second runs come after a first run of every schedule, so that a slow
    spell of the machine lands on several schedules' runs instead of on both runs of one."""
    from hydra import compose, initialize_config_dir

    import engine.loop
    from batchlab.command import CONF_DIR
    from batchlab.validate import run_validation

    order = []
    real = engine.loop.run_engine

    def recorded(workload, config, *args, **kwargs):
        order.append(config.name)
        return real(workload, config, *args, **kwargs)

    monkeypatch.setattr(engine.loop, "run_engine", recorded)
    overrides = [f"profile={profile_dir}", "workload.params.num_requests=8", "workload.params.share_degree=4",
                 "workload.params.prefix_len=32", "workload.params.output_len=2",
                 "schedule.names=[fcfs,prefix_grouped,batchllm]", "noise_floor=true", "report=false"]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("validate", overrides=overrides)
    result = run_validation(cfg, tmp_path, ".")
    assert order == ["fcfs", "prefix_grouped", "batchllm"] * 2
    assert all("noise_step_error" in entry for entry in result["schedules"].values())


def test_warm_up_runs_each_schedule_once_unrecorded(profile_dir, tmp_path, monkeypatch):
    """warmup=true: every schedule once before the measured runs, its run not the one reported
    (on a GPU the first run of a schedule compiles kernels: 5.5 s against 3.1 s on an H200)."""
    from hydra import compose, initialize_config_dir

    import engine.loop
    from batchlab.command import CONF_DIR
    from batchlab.validate import run_validation, warm_up
    from scheduler.errors import ConfigError

    calls = []
    real = engine.loop.run_engine

    def recorded(workload, config, *args, **kwargs):
        outcome = real(workload, config, *args, **kwargs)
        calls.append((config.name, outcome.makespan_s))
        return outcome

    monkeypatch.setattr(engine.loop, "run_engine", recorded)
    overrides = [f"profile={profile_dir}", "workload.params.num_requests=8", "workload.params.share_degree=4",
                 "workload.params.prefix_len=32", "workload.params.output_len=2",
                 "schedule.names=[fcfs,batchllm]", "noise_floor=false", "report=false"]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("validate", overrides=overrides + ["warmup=true"])
        assert not warm_up(compose("validate", overrides=overrides))  # auto: on a CPU, none
        assert warm_up(compose("validate", overrides=overrides + ["device=cuda"]))  # auto: on a GPU
        with pytest.raises(ConfigError, match="warmup is 'sometimes'; expected true, false or auto"):
            warm_up(compose("validate", overrides=overrides + ["warmup=sometimes"]))
    result = run_validation(cfg, tmp_path, ".")
    assert [name for name, _ in calls] == ["fcfs", "batchllm"] * 2
    for name, makespan in calls[2:]:  # the reported runs are the second ones
        assert result["schedules"][name]["makespan_s_measured"] == makespan


def test_stolen_cpu_share_is_read_from_proc_stat(tmp_path, monkeypatch):
    from engine import host_load

    stat = tmp_path / "stat"
    monkeypatch.setattr(host_load, "STAT", stat)
    stat.write_text("cpu  100 0 20 500 3 0 0 10 0 0\ncpu0 50 0 10 250 1 0 0 5 0 0\n")
    before = host_load.cpu_counters()
    assert before == (130, 10)  # user + nice + system + irq + softirq + steal; steal
    stat.write_text("cpu  160 0 30 900 3 0 0 40 0 0\n")
    assert host_load.stolen_share(before, host_load.cpu_counters()) == pytest.approx(30 / 100)
    stat.write_text("intr 1 2 3\n")
    assert host_load.cpu_counters() is None and host_load.stolen_share(before, None) is None


def test_own_plan_prices_are_the_simulators_step_durations():
    """What `validate` prices the engine's own plans with is what the simulator charges a step:
    on the simulator's own plans (online, shared-prefix groups, the H200 profile) the two agree
    to the last bit, so an online miss the table shows is the engine's, not this pricing's."""
    from pathlib import Path

    from reports.validation import own_plan_errors
    from scheduler import schedule_config
    from sim.simulator import simulate
    from traces.arrivals import with_arrivals
    from traces.synthetic import batchllm_microbenchmark

    profile = Profile.load(Path(__file__).resolve().parents[1] / "profiles/llama-3.1-8b-cuda-bfloat16-triton")
    model = model_spec("llama-3.1-8b")
    cost = CostModel(profile, model)
    workload = with_arrivals(batchllm_microbenchmark(2048, 128, 32, 16, 64, seed=1), "poisson", rate=4.0, seed=1)
    plans = []
    outcome = simulate(workload, schedule_config("batchllm"), cost, 1280, 16, fast_forward=False,
                       on_plan=plans.append)
    own = own_plan_errors([cost.for_schedule("batchllm").step(plan)[0] for plan in plans],
                          outcome.steps.all_steps())
    assert any(plan.shared_prefix_groups for plan in plans)
    assert (own["mape"], own["ratio_median"], own["busy_error"]) == (0.0, 1.0, 0.0) and own["steps"] == len(plans)
    # the arrivals leave the engine idle now and then: those steps are told apart (the first counts)
    assert own["after_idle"]["steps"] >= 2 and own["after_idle"]["steps"] + own["back_to_back"]["steps"] == len(plans)
    assert own["after_idle"]["ratio_median"] == own["back_to_back"]["ratio_median"] == 1.0
