"""``batchlab plan``: the ways to deploy one model on a number of GPUs (tensor-parallel size x
replicas), each simulated on the workload with each schedule, in one table ranked by makespan.
The question a batch job asks before it rents the GPUs: four engines of two GPUs, or one of
eight, and which schedule on them."""
from __future__ import annotations

import json
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_original_cwd
from omegaconf import DictConfig, OmegaConf

from scheduler import schedule_config
from scheduler.errors import ConfigError
from sim.hardware import HARDWARE_PRESETS

from .calibration import calibration_note, check_model, load_calibrations
from .command import CONF_DIR, guarded, model_of, say, workload_of
from .records import finite_json, request_columns
from .simulate import _with_replicas, block_size_of, host_tier_overrides, pooled_host_tier, simulate_replicas, split_for_replicas


def tensor_parallel_sizes(gpus: int) -> list[int]:
    """1, 2, 4, ... up to ``gpus``: the sizes that divide it."""
    if not isinstance(gpus, int) or gpus < 1:
        raise ConfigError(f"gpus is {gpus!r}; expected a whole number >= 1")
    sizes, size = [], 1
    while size <= gpus:
        if gpus % size == 0:
            sizes.append(size)
        size *= 2
    return sizes


def gpu_options(cfg: DictConfig) -> list[tuple[str, int]]:
    """(hardware preset, GPU count) to plan for: ``hardware_options`` entries ``preset`` or
    ``preset:count`` (count default ``gpus``), or the hardware group's preset alone."""
    options = cfg.get("hardware_options") or [cfg.hardware.preset]
    parsed = []
    for option in options:
        name, _, count = str(option).partition(":")
        try:
            gpus = int(count) if count else cfg.gpus
        except ValueError:
            raise ConfigError(f"hardware_options entry {option!r}: expected PRESET or PRESET:GPUS, "
                              f"e.g. l40s:8") from None
        if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
            raise ConfigError(f"hardware_options entry {option!r}: {gpus!r} GPUs; expected a whole number >= 1")
        if name not in HARDWARE_PRESETS:
            raise ConfigError(f"hardware_options entry {option!r}: unknown GPU type {name!r}; expected one of "
                              f"{sorted(HARDWARE_PRESETS)}")
        parsed.append((name, gpus))
    if len(set(parsed)) < len(parsed):
        raise ConfigError(f"hardware_options lists a GPU type and count twice: {list(options)}")
    return parsed


def gpu_prices(cfg: DictConfig, presets: set[str]) -> dict[str, float]:
    """``price_per_gpu_hour`` checked: positive numbers, for GPU types the plan covers."""
    prices = dict(cfg.get("price_per_gpu_hour") or {})
    unknown = sorted(set(prices) - presets)
    if unknown:
        raise ConfigError(f"price_per_gpu_hour names {unknown}, which the plan does not cover ({sorted(presets)})")
    checked = {}
    for name, price in prices.items():
        if isinstance(price, bool) or not isinstance(price, (int, float)) or not price > 0:
            raise ConfigError(f"price_per_gpu_hour.{name} is {price!r}; expected a price > 0")
        checked[name] = float(price)
    if cfg.get("rank_by") == "cost" and set(checked) != presets:
        raise ConfigError(f"rank_by=cost needs price_per_gpu_hour for every GPU type; missing "
                          f"{sorted(presets - set(checked))}")
    return checked


def run_plan(cfg: DictConfig, run_dir: Path, base_dir: str) -> dict:
    from reports.metrics import summarize
    from sim.hardware import hardware_spec, kv_capacity_blocks, kv_reserve_note
    from sim.overlap import roofline_cost_model

    workload = workload_of(cfg, base_dir)
    model = model_of(cfg, base_dir, costs_only=True)
    requested = OmegaConf.to_container(cfg.schedule.overrides, resolve=True)
    overrides = host_tier_overrides(cfg, model, requested)
    sharding = cfg.sharding
    base = OmegaConf.to_container(cfg.hardware.overrides, resolve=True)
    if "tensor_parallel" in base:
        raise ConfigError("plan tries every tensor-parallel size itself; give gpus=N, not hardware.overrides.tensor_parallel")
    options = gpu_options(cfg)
    key = rank_key(cfg, workload)
    pooled = pooled_host_tier(cfg, overrides, cfg.sharding in ("least_loaded", "cache_aware"), None)
    prices = gpu_prices(cfg, {name for name, _ in options})
    calibrations = {}
    if cfg.get("calibration"):
        calibrations = load_calibrations(cfg.calibration, base_dir)
        unused = sorted(set(calibrations) - {name for name, _ in options})
        if unused:
            raise ConfigError(f"calibration: calibrations for {unused}, which the plan does not cover")
        for calibration in calibrations.values():
            check_model(calibration, model.name, say)
    say(f"workload {workload.describe()}")
    say(f"model {model.name} ({model.describe()}) on " + ", ".join(f"{gpus} x {name}" for name, gpus in options)
        + f", schedules {list(cfg.schedule.names)}, {sharding} sharding")
    rows, skipped = [], []
    progress = say if cfg.progress else None
    for preset, gpus in options:
        fitted = 0
        for tp in tensor_parallel_sizes(gpus):
            calibrated = calibrations[preset]["fitted_hardware"] if preset in calibrations else {}
            hardware = hardware_spec(preset, **{**calibrated, **base}, tensor_parallel=tp)
            block_size = block_size_of(cfg, model, tp)  # Gemma 4's pages can change with the split
            configs = [schedule_config(name, **host_tier_overrides(cfg, model, requested, tp))  # so can its tier's
                       for name in cfg.schedule.names]
            try:
                kv_blocks = kv_capacity_blocks(model, hardware, block_size)
            except ConfigError as error:  # does not fit, or the heads do not split this way
                skipped.append({"hardware": preset, "gpus": gpus, "tensor_parallel": tp, "why": str(error)})
                say(f"{preset} tensor parallel {tp}: skipped ({error})")
                continue
            fitted += 1
            note = kv_reserve_note(model, hardware)  # the KV blocks hang on the activation reserve here
            if note:
                say(f"{preset} tensor parallel {tp}: {note}")
            replicas = gpus // tp
            cost = roofline_cost_model(model, hardware)
            router, shards = split_for_replicas(cfg, workload, replicas, block_size)
            shared = pooled and router is not None and replicas > 1  # one engine keeps its tier
            for config in configs:
                started = time.perf_counter()
                outcomes = simulate_replicas(workload, shards, router, config, cost, kv_blocks, block_size, True,
                                             [None] * replicas, progress, shared)
                summary = summarize(_with_replicas([request_columns(o.scheduler, config.name, workload.sessions)
                                                    for o in outcomes]),
                                    _with_replicas([o.steps.columns() for o in outcomes]))
                gpu_hours = summary["makespan_s"] * gpus / 3600
                rows.append({"hardware": preset, "gpus": gpus, "tensor_parallel": tp, "replicas": replicas,
                             "schedule": config.name, "kv_blocks_per_replica": kv_blocks, **summary,
                             "tokens_per_s_per_gpu": summary["throughput_tokens_per_s"] / gpus,
                             "gpu_hours": gpu_hours,
                             "cost": gpu_hours * prices[preset] if preset in prices else None,
                             "wall_s": time.perf_counter() - started})
                say(f"{preset} tensor parallel {tp} x {replicas} replicas, {config.name}: makespan "
                    f"{summary['makespan_s']:,.1f} s (simulated in {rows[-1]['wall_s']:.1f} s)")
        if not fitted and len(options) == 1:
            raise ConfigError(f"model {model.name!r} fits no tensor-parallel size of {gpus} x {preset}: "
                              + "; ".join(s["why"] for s in skipped))
    if not rows:
        raise ConfigError(f"model {model.name!r} fits none of " + ", ".join(f"{g} x {n}" for n, g in options)
                          + ": " + "; ".join(f"{s['hardware']} TP {s['tensor_parallel']}: {s['why']}" for s in skipped))
    rank_by = cfg.get("rank_by", "makespan")
    rows.sort(key=lambda row: (row[key] != row[key], row[key]))  # NaN (no figure) last
    result = {"workload": workload.name, "model": model.name, "hardware": [name for name, _ in options],
              "gpus": {name: gpus for name, gpus in options}, "price_per_gpu_hour": prices, "rank_by": rank_by,
              "sharding": sharding, "profile_kind": "roofline", "plans": rows, "skipped": skipped,
              "calibrations": {name: calibration_note(c) for name, c in calibrations.items()}}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    (run_dir / "plan.json").write_text(json.dumps(finite_json(result), indent=2))
    from reports.plots import plan_scatter
    plan_scatter(rows, run_dir / "plan.png", "cost" if all(row["cost"] is not None for row in rows) else "gpu_hours")
    return result


# what a plan may be ranked by -> its figure in a plan's row (smaller is better)
RANK_KEYS = {"makespan": "makespan_s", "cost": "cost", "ttft": "ttft_s_p50", "session": "session_s_mean"}


def rank_key(cfg: DictConfig, workload) -> str:
    """The row figure ``rank_by`` names, checked against what the workload has."""
    rank_by = cfg.get("rank_by", "makespan")
    if rank_by not in RANK_KEYS:
        raise ConfigError(f"rank_by is {rank_by!r}; expected one of {list(RANK_KEYS)}")
    if rank_by == "session" and workload.sessions is None:
        raise ConfigError(f"rank_by=session ranks by the sessions' mean time, and workload {workload.name!r} has no "
                          f"sessions (workload=agent_jobs or agent_sessions have)")
    return RANK_KEYS[rank_by]


def _money(amount: float) -> str:
    """Three significant digits below 1,000 (a small batch costs cents), whole units above."""
    return f"{amount:.3g}" if amount < 1000 else f"{amount:,.0f}"


def plan_table(result: dict) -> str:
    """The ranked plans; with several GPU types or prices, each plan's GPU type, GPU-hours and
    cost too."""
    key = RANK_KEYS[result.get("rank_by", "makespan")]
    best = result["plans"][0][key]
    several = len(result["hardware"]) > 1 or bool(result.get("price_per_gpu_hour"))
    jobs = "session_s_mean" in result["plans"][0]  # sessions' turns: their mean time too
    head = ["GPU           GPUs  " if several else "", "TP  replicas  schedule        makespan s  vs best  tokens/s/GPU  ",
            "GPU-hours      cost  " if several else "", "prefill saved  TTFT p50 s  ", "session s  " if jobs else "",
            "KV blocks/replica"]
    rule = ["------------  ----  " if several else "", "--  --------  --------------  ----------  -------  ------------  ",
            "---------  --------  " if several else "", "-------------  ----------  ", "---------  " if jobs else "",
            "-----------------"]
    lines = ["".join(head), "".join(rule)]
    for row in result["plans"]:
        cost = "-" if row.get("cost") is None else _money(row["cost"])
        lines.append((f"{row['hardware']:<12}  {row['gpus']:>4}  " if several else "")
                     + f"{row['tensor_parallel']:>2}  {row['replicas']:>8}  {row['schedule']:<14}  {row['makespan_s']:>10,.1f}  "
                     f"{row[key] / best:>6.2f}x  {row['tokens_per_s_per_gpu']:>12,.0f}  "
                     + (f"{row['gpu_hours']:>9.3g}  {cost:>8}  " if several else "")
                     + f"{row['prefill_token_saving']:>13.3f}  {row['ttft_s_p50']:>10,.2f}  "
                     + (f"{row['session_s_mean']:>9,.2f}  " if jobs else "") + f"{row['kv_blocks_per_replica']:>17,}")
    for skip in result["skipped"]:
        lines.append(f"{skip['hardware']} TP {skip['tensor_parallel']}: {skip['why']}" if several
                     else f"TP {skip['tensor_parallel']}: {skip['why']}")
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="plan")
def plan_main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    result = guarded("plan", run_dir, lambda: run_plan(cfg, run_dir, get_original_cwd()),
                     kept="nothing written (plan.json is written whole, at the end); the lines above give the "
                          "plans simulated so far")
    print(plan_table(result))
    for name in result["hardware"] if result["calibrations"] else []:
        note = result["calibrations"].get(name)
        print(f"{name}: " + (f"the roofline calibrated to {note['points']} measured points ({note['path']})" if note
                             else "the data-sheet roofline, not calibrated: compare with care"))
    print(f"plan: {run_dir / 'plan.json'}, {run_dir / 'plan.png'}")
