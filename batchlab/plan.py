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
from scheduler.model_spec import model_spec

from .command import CONF_DIR, guarded, say
from .records import finite_json, request_columns
from .simulate import _with_replicas, simulate_replicas, split_for_replicas


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


def run_plan(cfg: DictConfig, run_dir: Path, base_dir: str) -> dict:
    from reports.metrics import summarize
    from sim.cost_model import CostModel
    from sim.hardware import hardware_spec, kv_capacity_blocks
    from sim.roofline import build_roofline_profile
    from traces.build import build_workload

    workload = build_workload(OmegaConf.to_container(cfg.workload, resolve=True), base_dir)
    model = model_spec(cfg.model.preset, **OmegaConf.to_container(cfg.model.overrides, resolve=True))
    overrides = OmegaConf.to_container(cfg.schedule.overrides, resolve=True)
    configs = [schedule_config(name, **overrides) for name in cfg.schedule.names]
    block_size, gpus, sharding = int(cfg.schedule.block_size), cfg.gpus, cfg.sharding
    base = OmegaConf.to_container(cfg.hardware.overrides, resolve=True)
    if "tensor_parallel" in base:
        raise ConfigError("plan tries every tensor-parallel size itself; give gpus=N, not hardware.overrides.tensor_parallel")
    say(f"workload {workload.describe()}")
    say(f"model {model.name} on {gpus} x {cfg.hardware.preset}, schedules {list(cfg.schedule.names)}, "
        f"{sharding} sharding")
    rows, skipped = [], []
    progress = say if cfg.progress else None
    for tp in tensor_parallel_sizes(gpus):
        hardware = hardware_spec(cfg.hardware.preset, **base, tensor_parallel=tp)
        try:
            kv_blocks = kv_capacity_blocks(model, hardware, block_size)
        except ConfigError as error:  # does not fit, or the heads do not split this way
            skipped.append({"tensor_parallel": tp, "why": str(error)})
            say(f"tensor parallel {tp}: skipped ({error})")
            continue
        replicas = gpus // tp
        cost = CostModel(build_roofline_profile(model, hardware), model)
        router, shards = split_for_replicas(cfg, workload, replicas, block_size)
        for config in configs:
            started = time.perf_counter()
            outcomes = simulate_replicas(workload, shards, router, config, cost, kv_blocks, block_size, True,
                                         [None] * replicas, progress)
            summary = summarize(_with_replicas([request_columns(o.scheduler, config.name) for o in outcomes]),
                                _with_replicas([o.steps.columns() for o in outcomes]))
            rows.append({"tensor_parallel": tp, "replicas": replicas, "schedule": config.name,
                         "kv_blocks_per_replica": kv_blocks, **summary,
                         "tokens_per_s_per_gpu": summary["throughput_tokens_per_s"] / gpus,
                         "wall_s": time.perf_counter() - started})
            say(f"tensor parallel {tp} x {replicas} replicas, {config.name}: makespan {summary['makespan_s']:,.1f} s "
                f"(simulated in {rows[-1]['wall_s']:.1f} s)")
    if not rows:
        raise ConfigError(f"model {model.name!r} fits no tensor-parallel size of {gpus} x {cfg.hardware.preset}: "
                          + "; ".join(s["why"] for s in skipped))
    rows.sort(key=lambda row: row["makespan_s"])
    result = {"workload": workload.name, "model": model.name, "hardware": cfg.hardware.preset, "gpus": gpus,
              "sharding": sharding, "profile_kind": "roofline", "plans": rows, "skipped": skipped}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    (run_dir / "plan.json").write_text(json.dumps(finite_json(result), indent=2))
    return result


def plan_table(result: dict) -> str:
    best = result["plans"][0]["makespan_s"]
    lines = ["TP  replicas  schedule        makespan s  vs best  tokens/s/GPU  prefill saved  TTFT p50 s  KV blocks/replica",
             "--  --------  --------------  ----------  -------  ------------  -------------  ----------  -----------------"]
    for row in result["plans"]:
        lines.append(f"{row['tensor_parallel']:>2}  {row['replicas']:>8}  {row['schedule']:<14}  {row['makespan_s']:>10,.1f}  "
                     f"{row['makespan_s'] / best:>6.2f}x  {row['tokens_per_s_per_gpu']:>12,.0f}  "
                     f"{row['prefill_token_saving']:>13.3f}  {row['ttft_s_p50']:>10,.2f}  {row['kv_blocks_per_replica']:>17,}")
    for skip in result["skipped"]:
        lines.append(f"TP {skip['tensor_parallel']}: {skip['why']}")
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="plan")
def plan_main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    result = guarded("plan", run_dir, lambda: run_plan(cfg, run_dir, get_original_cwd()))
    print(plan_table(result))
    print(f"plan: {run_dir / 'plan.json'}")
