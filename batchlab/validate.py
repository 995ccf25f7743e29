"""``batchlab profile`` and ``batchlab validate``: measure the engine, predict it, report the error."""
from __future__ import annotations

import json
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_original_cwd
from omegaconf import DictConfig, OmegaConf

from scheduler import schedule_config
from scheduler.errors import ConfigError

from .command import (CONF_DIR, guarded, kernel_options_in_force, kernel_options_of, model_of,
                      recorded_kernel_options, say, workload_of)
from .records import RunWriter, finite_json, requests_frame, run_meta
from .run import device_memory, load_weights


def _runner(cfg: DictConfig, model, kv_blocks: int, weights):
    import torch

    from engine.runner import ModelRunner

    block_size = cfg.schedule.block_size if "schedule" in cfg else cfg.block_size
    return ModelRunner(model, kv_blocks, model.vllm_block_size(int(block_size)), cfg.device, getattr(torch, cfg.dtype),
                       cfg.backend, weights, kernel_options=kernel_options_of(cfg))


def measure_profile(cfg: DictConfig, out: Path, weights=None) -> Path:
    """A profile measured into ``out`` (with ``weights``, or those ``cfg`` names)."""
    from engine.profiler import profile_engine

    device_memory(cfg.device)
    kernel_options_in_force(cfg)  # a bad kernel option refused before the weights load
    model = model_of(cfg, get_original_cwd())
    # the shapes are measured in a KV cache of the run's size (validate) or profile.yaml's
    weights = weights if weights is not None else load_weights(cfg, model, get_original_cwd())
    runner = _runner(cfg, model, int(cfg.kv_blocks), weights)
    return profile_engine(runner, out, cfg.dtype, cfg.backend, int(cfg.repeats), say)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="profile")
def profile_main(cfg: DictConfig) -> None:
    out = Path(get_original_cwd()) / cfg.out
    path = guarded("profile", out, lambda: measure_profile(cfg, out))
    print(f"profile: {path}")


def run_validation(cfg: DictConfig, run_dir: Path, base_dir: str) -> dict:
    from engine.host_memory import for_device as host_memory_for
    from engine.loop import run_engine
    from engine.host_load import copy_ms, cpu_counters, stolen_share, yardstick_ms
    from reports.validation import (compare_runs, discordant_pairs, kernel_errors, own_plan_errors, ranking,
                                    run_noise, scatter, step_errors)
    from sim.cost_model import CostModel
    from sim.profile import Profile
    from sim.profile_check import check_profile_matches
    from sim.simulator import simulate

    device_memory(cfg.device)
    warm = warm_up(cfg)  # a bad value refused before anything runs
    model = model_of(cfg, base_dir)
    workload = workload_of(cfg, base_dir)
    configs = [schedule_config(n, **OmegaConf.to_container(cfg.schedule.overrides, resolve=True))
               for n in cfg.schedule.names]
    kv_blocks, block_size = int(cfg.kv_blocks), model.vllm_block_size(int(cfg.schedule.block_size))
    profile, kernel_options = None, kernel_options_in_force(cfg)  # a bad kernel option refused before anything runs
    if cfg.profile:  # refused before anything runs if it is not this model's
        profile_dir = Path(base_dir) / cfg.profile
        profile = Profile.load(profile_dir)
        # an option added to a kernel after the profile was measured ran then as its default does
        if profile.provenance.get("kernel_options"):
            profile.provenance["kernel_options"] = recorded_kernel_options(profile.provenance["kernel_options"])
        check_profile_matches(profile, model, cfg.dtype, kernel_options)
    weights = load_weights(cfg, model, base_dir)
    # the profile first, then every schedule once, then every schedule again: the noise floor
    # then spans the whole validation, so the machine slowing down for a minute shows as noise
    # rather than as one schedule's prediction error (back to back, two runs of a schedule share
    # one slow spell). Running the engine between the profile's passes instead, so that both
    # sampled the same minutes, made the errors larger: in 5 alternating rounds on 2026-12-03,
    # makespan error median 8.0 % against 5.0 % with the profile first.
    if profile is None:
        say("measuring a profile first (batchlab profile)")
        profile_dir = measure_profile(cfg, run_dir / "profile", weights)
        profile = Profile.load(profile_dir)
    for config in configs if warm else ():
        # unrecorded: a GPU's first run of a schedule compiles Triton kernels for the shapes it makes
        # (on an H200 in 2026-12, an 8B model's first fcfs run took 5.5 s, the second 3.1 s)
        run_engine(workload, config, _runner(cfg, model, kv_blocks, weights), kv_blocks, block_size)
        say(f"warm-up run of {config.name} done (not recorded)")
    runs = {config.name: [] for config in configs}
    speed = {config.name: [] for config in configs}
    bandwidth = {config.name: [] for config in configs}
    stolen = {config.name: [] for config in configs}
    for config in [config for _ in range(2 if cfg.noise_floor else 1) for config in configs]:
        runner = _runner(cfg, model, kv_blocks, weights)
        speed[config.name].append(yardstick_ms(runner.device))
        bandwidth[config.name].append(copy_ms(runner.device))
        before = cpu_counters()
        runs[config.name].append(run_engine(workload, config, runner, kv_blocks, block_size, keep_plans=True))
        stolen[config.name].append(stolen_share(before, cpu_counters()))
        say(f"engine run {len(runs[config.name])} of {config.name}: {runs[config.name][-1].makespan_s:.3f} s")
    cost = CostModel(profile, model)
    roofline = None
    if cfg.get("roofline"):  # how far the analytic profile of this GPU is from the measurement
        from sim.hardware import hardware_spec
        from sim.roofline import build_roofline_profile
        roofline = CostModel(build_roofline_profile(model, hardware_spec(cfg.roofline)), model)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    offline = workload.is_offline
    device = profile.provenance.get("device", cfg.device)
    meta = dict(hardware=device, profile_kind=profile.kind, profile=profile.label, provenance=profile.provenance,
                kv_blocks=kv_blocks, block_size=block_size)
    writers = {mode: RunWriter(run_dir / mode, run_meta(workload, model, mode=mode, **meta))
               for mode in ("simulated", "measured")}
    result = {"workload": workload.name, "roofline": cfg.get("roofline"), "offline": offline,
              "profile": str(profile_dir), "device": device, "host_memory": host_memory_for(cfg.device),
              "schedules": {}}
    for key, per_run in (("yardstick_ms", speed), ("copy_ms", bandwidth)):
        marks = [ms for values in per_run.values() for ms in values]
        result[key] = {"per_run": per_run, "min": min(marks), "max": max(marks)}
    shares = [share for values in stolen.values() for share in values if share is not None]
    result["cpu_stolen"] = {"per_run": stolen, "min": min(shares, default=None), "max": max(shares, default=None)}
    points = {}
    for config in configs:
        plans = []
        simulated = simulate(workload, config, cost, kv_blocks, block_size, fast_forward=False,
                             on_plan=lambda p: plans.append(p.outline()))
        measured = runs[config.name]
        sim_steps, meas_steps = simulated.steps.all_steps(), measured[0].steps.all_steps()
        sim_requests = requests_frame(simulated.scheduler, config.name, workload.sessions)
        meas_requests = requests_frame(measured[0].scheduler, config.name, workload.sessions)
        writers["simulated"].add(config.name, sim_requests, sim_steps, {"profile_kind": profile.kind})
        writers["measured"].add(config.name, meas_requests, meas_steps, {"profile_kind": "measured"})
        entry = compare_runs(sim_requests, sim_steps, meas_requests, meas_steps)
        if offline:
            entry["plans_identical"] = plans == measured[0].plans
            if entry["plans_identical"]:
                entry["step_error"] = step_errors(sim_steps["duration_s"], meas_steps["duration_s"])
                entry["kernels"] = kernel_errors(sim_steps, meas_steps)
                points[config.name] = (sim_steps["duration_s"].to_numpy(), meas_steps["duration_s"].to_numpy())
        if not entry.get("plans_identical"):  # the cost model on the plans the engine ran instead
            step_cost = cost.for_schedule(config.name)
            entry["own_plans"] = own_plan_errors([step_cost.step(plan)[0] for plan in measured[0].batch_plans],
                                                 meas_steps)
        if len(measured) == 2:
            again = measured[1].steps.all_steps()
            entry["noise_makespan"] = abs(measured[1].makespan_s - measured[0].makespan_s) / measured[0].makespan_s
            entry["noise"] = run_noise(meas_requests, meas_steps, requests_frame(measured[1].scheduler, config.name, workload.sessions),
                                       again)
            if offline and measured[1].plans == measured[0].plans:
                entry["noise_step_error"] = step_errors(again["duration_s"], meas_steps["duration_s"])
        if roofline is not None:
            # step by step only where the measured run made the simulated plans
            entry["roofline"] = roofline_errors(workload, config, roofline, kv_blocks, block_size, plans,
                                                meas_requests, meas_steps, bool(entry.get("plans_identical")))
        result["schedules"][config.name] = entry
        say(f"{config.name}: makespan predicted {entry['makespan_s_predicted']:.3f} s, measured "
             f"{entry['makespan_s_measured']:.3f} s (error {entry['makespan_s_error']:.1%})"
             + (f", per-step MAPE {entry['step_error']['mape']:.1%}" if "step_error" in entry else "")
             + (f", noise floor MAPE {entry['noise_step_error']['mape']:.1%}" if "noise_step_error" in entry else ""))
    for writer in writers.values():
        writer.write(complete=True)
    schedules = result["schedules"]
    predicted = {n: e["makespan_s_predicted"] for n, e in schedules.items()}
    measured = {n: e["makespan_s_measured"] for n, e in schedules.items()}
    predicted_rank, measured_rank = ranking(predicted), ranking(measured)
    separated, discordant = discordant_pairs(predicted, measured,
                                             {n: e.get("noise_makespan") for n, e in schedules.items()})
    result.update({"ranking_predicted": predicted_rank, "ranking_measured": measured_rank,
                   "same_ranking": predicted_rank == measured_rank,
                   "pairs_separated_beyond_noise": [list(p) for p in separated],
                   "pairs_discordant": [list(p) for p in discordant],
                   "same_ranking_beyond_noise": not discordant})
    if points:
        scatter(points, run_dir / "validation_scatter.png")
    (run_dir / "validation.json").write_text(json.dumps(finite_json(result), indent=2))
    return result


def warm_up(cfg: DictConfig) -> bool:
    """Whether every schedule runs once, unrecorded, before the measured runs: ``warmup`` true,
    false, or auto (on a GPU, whose kernels are compiled when first launched with a shape)."""
    choice = cfg.get("warmup", "auto")
    if choice == "auto":
        return str(cfg.device).startswith("cuda")
    if not isinstance(choice, bool):
        raise ConfigError(f"warmup is {choice!r}; expected true, false or auto")
    return choice


def roofline_errors(workload, config, cost, kv_blocks: int, block_size: int, plans: list, meas_requests,
                    meas_steps, measured_made_plans: bool) -> dict:
    """The same schedule predicted with a roofline profile, against the same measurement;
    per step where the roofline's plans are ``plans``, which the measured run made too."""
    from reports.validation import compare_runs, step_errors
    from sim.simulator import simulate

    roof_plans = []
    outcome = simulate(workload, config, cost, kv_blocks, block_size, fast_forward=False,
                       on_plan=lambda p: roof_plans.append(p.outline()))
    steps = outcome.steps.all_steps()
    entry = compare_runs(requests_frame(outcome.scheduler, config.name), steps, meas_requests, meas_steps)
    entry["profile"] = cost.profile.label
    if measured_made_plans and roof_plans == plans:
        entry["step_error"] = step_errors(steps["duration_s"], meas_steps["duration_s"])
    return entry


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="validate")
def validate_main(cfg: DictConfig) -> None:
    import torch

    from reports.validation import kernel_table, latency_table, own_plans_table, roofline_table, validation_table

    torch.set_num_threads(1)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    result = guarded("validate", run_dir, lambda: run_validation(cfg, run_dir, get_original_cwd()))
    table = validation_table(result)
    if result.get("roofline"):
        table += "\n\n" + roofline_table(result)
    if not result["offline"]:  # arrivals: plans differ, latencies are what is compared
        table += "\n\n" + latency_table(result["schedules"])
    if any("own_plans" in e for e in result["schedules"].values()):
        table += "\n\n" + own_plans_table(result["schedules"])
    print(table)
    kernels = "\n\n".join(kernel_table(n, e["kernels"]) for n, e in result["schedules"].items() if "kernels" in e)
    (run_dir / "validation.md").write_text("# batchlab validation\n\n```\n" + table + "\n```\n\n"
                                           + (f"```\n{kernels}\n```\n\n" if kernels else "")
                                           + ("![predicted vs measured](validation_scatter.png)\n"
                                              if (run_dir / "validation_scatter.png").exists() else ""))
    if cfg.report:
        from reports.build import build_report
        build_report([run_dir / "simulated", run_dir / "measured"], run_dir)
        print(f"report: {run_dir / 'report.html'}")
    print(f"validation: {run_dir / 'validation.json'}")
