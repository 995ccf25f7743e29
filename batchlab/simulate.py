"""``batchlab simulate``: every schedule of the config on the same workload, a comparison
table on stdout, run records in the Hydra run directory."""
from __future__ import annotations

import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_original_cwd
from omegaconf import DictConfig, OmegaConf

from scheduler import schedule_config
from scheduler.errors import ConfigError

from .command import CONF_DIR, guarded, model_of, say, workload_of
from .records import RunWriter, request_columns, run_meta
from .table import comparison_table


def build_setup(cfg: DictConfig, base_dir: str):
    """Workload, model, hardware, cost model and KV capacity from a composed config."""
    from sim.cost_model import CostModel
    from sim.hardware import hardware_spec, kv_capacity_blocks
    from sim.overlap import roofline_cost_model
    from sim.profile import Profile

    workload = workload_of(cfg, base_dir)
    model = model_of(cfg, base_dir, costs_only=True)
    overrides = OmegaConf.to_container(cfg.hardware.overrides, resolve=True)
    calibration = None
    if cfg.get("calibration"):
        from .calibration import calibration_for
        calibration = calibration_for(cfg.calibration, base_dir, cfg.hardware.preset, model.name, say)
        overrides = {**calibration["fitted_hardware"], **overrides}  # what the user gives wins
    hardware = hardware_spec(cfg.hardware.preset, **overrides)
    if cfg.profile and calibration is not None:
        raise ConfigError(f"profile={cfg.profile} and calibration={cfg.calibration}: a calibration fits the roofline "
                          f"profile; give one or the other")
    if cfg.profile and hardware.step_overlap:
        raise ConfigError(f"profile={cfg.profile} and hardware.overrides.step_overlap=true: overlap splits each "
                          f"kernel into its compute and memory time, which only the roofline profile has (profile=null)")
    if cfg.profile:
        from sim.profile_check import check_profile_matches
        if hardware.tensor_parallel > 1:
            raise ConfigError(f"profile={cfg.profile} was measured on one device; tensor_parallel="
                              f"{hardware.tensor_parallel} applies to the roofline profile only (profile=null)")
        profile = Profile.load(Path(base_dir) / cfg.profile)
        check_profile_matches(profile, model)
        cost = CostModel(profile, model)
    else:
        cost = roofline_cost_model(model, hardware)
        if calibration is not None:
            from .calibration import calibration_note
            cost.profile.provenance["calibration"] = calibration_note(calibration)
    return workload, model, hardware, cost, kv_capacity_blocks(model, hardware, block_size_of(cfg, model))


def whole_block_note(workload, asked: int, served: int) -> str:
    """Where a model is served in larger blocks than asked for (linear attention), how much of
    the prompt tokens global prefix grouping saves at either size: shared prefixes are hit in
    whole blocks only. "" where the blocks are the same or it makes no difference of a point."""
    if served == asked or not workload.requests:
        return ""
    from scheduler import group_requests

    whole, fine = (group_requests(workload.requests, size).saving for size in (served, asked))
    if fine - whole < 0.01:
        return ""
    return (f"note: shared prefixes are reused in whole {served:,}-token blocks only: grouping them saves "
            f"{whole:.3f} of the prompt tokens, against {fine:.3f} with {asked}-token blocks; shared prefixes "
            f"that end on a multiple of {served:,} tokens keep the difference")


def cascade_note(workload, configs, block_size: int) -> str:
    """Where every request shares a prefix that vLLM's cascade attention would read once a step
    (whole blocks, 256 tokens or more), and a schedule without shared-prefix attention runs: the
    override that shows what it would do."""
    if len(workload.requests) < 8 or all(c.prefix_aware_attention or c.cascade_attention for c in configs):
        return ""
    common = list(workload.requests[0].prompt)
    for request in workload.requests[1:]:
        prompt, same = request.prompt, 0
        while same < min(len(common), len(prompt)) and prompt[same] == common[same]:
            same += 1
        del common[same:]
        if not common:
            return ""
    shortest = min(r.prompt_len for r in workload.requests)
    tokens = min(sum(length for _, length in common), shortest - 1) // block_size * block_size
    if tokens < 256:
        return ""
    return (f"note: every request shares its first {tokens:,} prompt tokens; vLLM's cascade attention reads such a "
            f"prefix once a step (off by default since vLLM PR #36318; --no-disable-cascade-attn): "
            f"schedule.overrides.cascade_attention=true shows what it would do")


def block_size_of(cfg: DictConfig, model, tensor_parallel: int | None = None) -> int:
    """``schedule.block_size``, or the larger block vLLM serves a linear-attention model (or Gemma
    4) with, on one of ``tensor_parallel`` GPUs (default: the hardware's)."""
    if tensor_parallel is None:
        tensor_parallel = int(OmegaConf.select(cfg, "hardware.overrides.tensor_parallel", default=None) or 1)
    return model.vllm_block_size(int(cfg.schedule.block_size), tensor_parallel)


def simulate_replicas(workload, shards: list, router, config, cost, kv_blocks: int, block_size: int,
                      fast_forward: bool, step_dirs: list, progress, shared_host: bool = False) -> list:
    """One schedule on every replica: ``shards`` (one workload per replica) simulated apart, or,
    with a ``router``, the whole workload routed as it arrives over ``len(step_dirs)`` replicas
    simulated together (``shared_host``: their host tiers pooled). One outcome per replica."""
    from sim.simulator import simulate

    replicas = len(step_dirs)
    if router is not None and replicas > 1:
        from sim.cluster import simulate_cluster

        return simulate_cluster(workload, config, cost, kv_blocks, block_size, replicas, router, step_dirs, progress,
                                fast_forward=fast_forward, shared_host=shared_host)
    outcomes = []
    for index, shard in enumerate(shards, 1):
        told = progress if progress is None or replicas == 1 else \
            (lambda message, index=index: progress(f"replica {index}/{replicas}: {message}"))
        outcomes.append(simulate(shard, config, cost, kv_blocks, block_size, fast_forward, step_dirs[index - 1], told))
    return outcomes


def split_for_replicas(cfg: DictConfig, workload, replicas: int, block_size: int) -> tuple:
    """(router, shards) for ``replicas`` engines under ``cfg.sharding``: a router config and the
    whole workload where requests are routed as they arrive, else None and one workload per
    replica (split before the run)."""
    sharding = cfg.get("sharding", "prefix")
    if replicas == 1 and sharding == "prefix":  # one engine and the default: nothing to split (nor to import)
        return None, [workload]
    from sim.cluster import ROUTERS, RouterConfig
    from traces.sharding import SHARDINGS, shard_workload

    if sharding not in SHARDINGS + ROUTERS:
        raise ConfigError(f"unknown sharding {sharding!r}; expected one of {list(SHARDINGS + ROUTERS)} (split "
                          f"before the run: {', '.join(SHARDINGS)}; routed as requests arrive: {', '.join(ROUTERS)})")
    if not isinstance(replicas, int) or replicas < 1:
        raise ConfigError(f"replicas is {replicas!r}; expected a whole number >= 1")
    if workload.closed_loop is not None and sharding not in ROUTERS:
        if replicas == 1:  # nothing to split: the client pool sends to the one engine
            return None, [workload]
        raise ConfigError(f"closed-loop arrivals (workload.arrivals.process=closed) reach {replicas} replicas through "
                          f"a router, as they are sent: sharding={sharding!r} splits the workload before the run; "
                          f"give sharding=least_loaded or cache_aware")
    if sharding in ROUTERS:  # routed as requests arrive: the replicas are simulated together
        return RouterConfig(sharding, **OmegaConf.to_container(cfg.get("router") or {}, resolve=True)), [workload]
    return None, shard_workload(workload, replicas, sharding, block_size)


def host_tier_overrides(cfg: DictConfig, model, overrides: dict, tensor_parallel: int | None = None) -> dict:
    """``host_kv_gb`` (GB of host memory for a KV tier behind each engine's prefix cache) as the
    schedules' ``host_cache_blocks``: the blocks of the model's whole KV (every GPU's share)
    that fit, in the block the model is served in on ``tensor_parallel`` GPUs (``block_size_of``;
    Gemma 4's changes with the split)."""
    gigabytes = cfg.get("host_kv_gb") or 0
    if isinstance(gigabytes, bool) or not isinstance(gigabytes, (int, float)) or gigabytes < 0:
        raise ConfigError(f"host_kv_gb is {gigabytes!r}; expected GB of host memory >= 0")
    if not gigabytes:
        return overrides
    if "host_cache_blocks" in overrides:
        raise ConfigError("host_kv_gb and schedule.overrides.host_cache_blocks both size the host tier; give one")
    block_bytes = model.kv_bytes_per_token * block_size_of(cfg, model, tensor_parallel)
    return {**overrides, "host_cache_blocks": int(gigabytes * 1e9 // block_bytes)}


def pooled_host_tier(cfg: DictConfig, overrides: dict, routed: bool, replicas: int | None) -> bool:
    """``host_kv_shared``: whether the replicas' host tiers are pooled, checked (``replicas``
    None: a plan, whose options have any number)."""
    shared = cfg.get("host_kv_shared", False)
    if not isinstance(shared, bool):
        raise ConfigError(f"host_kv_shared is {shared!r}; expected true or false")
    if shared and not overrides.get("host_cache_blocks"):
        raise ConfigError("host_kv_shared=true pools the replicas' host tiers, and there are none: give host_kv_gb=N "
                          "(each replica's share of the pool)")
    if shared and (not routed or (replicas is not None and replicas < 2)):
        raise ConfigError("host_kv_shared=true pools the host tiers of replicas routed as requests arrive; give "
                          + (f"replicas >= 2 (now {replicas}) and " if replicas is not None else "")
                          + "sharding=least_loaded or cache_aware")
    return shared


def run_simulation(cfg: DictConfig, run_dir: Path, base_dir: str) -> RunWriter:
    import numpy as np

    workload, model, hardware, cost, kv_blocks = build_setup(cfg, base_dir)
    overrides = host_tier_overrides(cfg, model, OmegaConf.to_container(cfg.schedule.overrides, resolve=True))
    configs = [schedule_config(name, **overrides) for name in cfg.schedule.names]  # fail early on typos
    block_size = block_size_of(cfg, model)
    replicas, sharding = cfg.get("replicas", 1), cfg.get("sharding", "prefix")
    router, shards = split_for_replicas(cfg, workload, replicas, block_size)
    shared_host = pooled_host_tier(cfg, overrides, router is not None, replicas)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    where = hardware.label if replicas == 1 else f"{replicas} replicas of {hardware.label} ({sharding} sharding)"
    writer = RunWriter(run_dir, run_meta(
        workload, model, mode="simulated", hardware=where, profile_kind=cost.profile.kind,
        profile=cost.profile.label, provenance=cost.profile.provenance, kv_blocks=kv_blocks, block_size=block_size))
    say(f"workload {workload.describe()}")
    if replicas > 1 and sharding == "prefix" and not workload.is_offline:
        say("note: prefix sharding balances each replica's work over the whole replay, not over time; with "
            "arrivals, bursts of one prefix land on one replica (sharding=round_robin spreads them)")
    say(f"model {model.name} ({model.describe()}) on {where}, {kv_blocks:,} KV blocks of {block_size} tokens"
        f"{' each' if replicas > 1 else ''}, profile: {cost.profile.label}")
    from sim.hardware import kv_reserve_note, window_blocks_note
    for note in ("" if cfg.profile else kv_reserve_note(model, hardware),
                 window_blocks_note(model, block_size, hardware.tensor_parallel),
                 whole_block_note(workload, int(cfg.schedule.block_size), block_size),
                 cascade_note(workload, configs, block_size)):
        if note:
            say(note)
    progress = say if cfg.progress else None
    for config in configs:
        started = time.perf_counter()
        step_dirs = [writer.step_dir(config.name) / (f"replica{index}" if replicas > 1 else "")
                     for index in range(1, replicas + 1)]
        outcomes = simulate_replicas(workload, shards, router, config, cost, kv_blocks, block_size,
                                     bool(cfg.schedule.fast_forward), step_dirs, progress, shared_host)
        requests = [request_columns(outcome.scheduler, config.name, workload.sessions) for outcome in outcomes]
        steps = [outcome.steps.columns() for outcome in outcomes]
        events = outcomes[0].num_events if router is not None and replicas > 1 else \
            sum(outcome.num_events for outcome in outcomes)
        extra = {"profile_kind": cost.profile.kind, "wall_s": time.perf_counter() - started, "num_events": events,
                 "num_gpus": replicas * hardware.tensor_parallel}
        if replicas > 1:  # how evenly the replicas were loaded: each one's requests and last finish
            extra["replicas"] = [{"requests": len(r["req_id"]), "last_finish_s": float(np.nanmax(r["finish_s"]))
                                  if len(r["req_id"]) else 0.0} for r in requests]
        summary = writer.add(config.name, _with_replicas(requests), _with_replicas(steps), extra)
        say(f"{config.name}: makespan {summary['makespan_s']:,.1f} s simulated in {summary['wall_s']:.2f} s "
             f"({summary['num_steps']:,} steps, {events:,} events)"
            + (f", {summary['host_loaded_tokens']:,} prompt tokens loaded from host memory"
               if summary["host_loaded_tokens"] else "")
            + (f" ({sum(o.scheduler.stats.host_remote_blocks for o in outcomes) * block_size:,} of them another "
               f"replica's)" if shared_host else ""))
        if replicas > 1:
            say(f"{config.name}: replicas' requests and last finishes: " + ", ".join(
                f"{r['requests']:,} / {r['last_finish_s']:,.1f} s" for r in extra["replicas"]))
    writer.write(complete=True)
    return writer


def _with_replicas(tables: list[dict]) -> dict:
    """One replica's record columns as they are; several, concatenated after a ``replica``
    column (1, 2, ...)."""
    if len(tables) == 1:
        return tables[0]
    import numpy as np

    rows = lambda table: len(next(iter(table.values())))
    columns = {"replica": np.concatenate([np.full(rows(t), index, dtype=np.int64) for index, t in enumerate(tables, 1)])}
    columns.update({name: np.concatenate([t[name] for t in tables]) for name in tables[0]})
    return columns


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="simulate")
def simulate_main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    writer = guarded("simulate", run_dir, lambda: run_simulation(cfg, run_dir, get_original_cwd()))
    summaries = writer.summaries
    print(comparison_table(summaries))
    if cfg.report:
        from reports.build import build_report
        print(f"report: {build_report([run_dir], run_dir)}")
    print(f"run records: {run_dir}")
    for hint in (order_hint(cfg, summaries, writer.meta["workload_offline"], run_dir), sharing_hint(cfg, summaries),
                 preemption_hint(cfg, summaries)):
        if hint:
            print(hint)


def sharing_hint(cfg: DictConfig, summaries: dict) -> str | None:
    """Grouped schedules without an LRU cache that computed more of the prompts than a cached
    schedule did: their one level of groups recomputes what requests share past a group's
    prefix (several completions of a prompt, deeper sharing); the cache under the groups finds it."""
    overrides = dict(cfg.schedule.get("overrides") or {})
    if overrides.get("caching") is not None:
        return None
    saving = {name: entry["prefill_token_saving"] for name, entry in summaries.items()}
    configs = {name: schedule_config(name) for name in saving}
    cached = [name for name, config in configs.items() if config.caching == "lru"]
    grouped = [name for name, config in configs.items() if config.grouping and config.caching == "off"
               and not preempts_often(summaries[name])]  # (preemptions recompute prompts too: preemption_hint)
    if not cached or not grouped:
        return None
    best = max(cached, key=saving.get)
    short = [name for name in grouped if saving[name] < saving[best] - 0.01]
    if not short:
        return None
    return (f"{', '.join(short)} computed more of the prompts than {best} (prefill saved "
            f"{', '.join(f'{saving[name]:.3f}' for name in short)} against {saving[best]:.3f}): their one level of "
            f"prefix groups recomputes what requests share past a group's prefix (several completions of a prompt, "
            f"deeper sharing); schedule.overrides.caching=lru gives them an LRU cache under the groups")


PREEMPTIONS_NOTED = 0.1  # preemptions a request from which simulate names SGLang's admission


def preempts_often(summary: dict) -> bool:
    """Whether a schedule's summary counts at least PREEMPTIONS_NOTED preemptions a request."""
    return summary["num_preemptions"] >= PREEMPTIONS_NOTED * max(summary["num_requests"], 1)


def preemption_hint(cfg: DictConfig, summaries: dict) -> str | None:
    """Schedules that preempted at least one request in ten (recomputed them): their answers
    outgrow the KV cache. SGLang's admission keeps room for them (scheduler/reserve.py); where a
    schedule keeps it already, a larger share or fewer running requests keep more."""
    many = {name: entry["num_preemptions"] for name, entry in summaries.items() if preempts_often(entry)}
    if not many:
        return None
    # (the ratio only: the other overrides may need what run_simulation adds, a host tier's size)
    ratio = {k: v for k, v in (cfg.schedule.get("overrides") or {}).items() if k == "new_token_ratio"}
    kept = {name for name in many if schedule_config(name, **ratio).new_token_ratio is not None}
    said = lambda names: (f"{', '.join(names)} preempted {', '.join(f'{many[n]:,}' for n in names)} times"  # noqa: E731
                          f"{' with room kept for the answers to come' if names[0] in kept else ''}")
    hints = []
    plain = [name for name in many if name not in kept]
    if plain:
        hints.append(f"{said(plain)}: the answers outgrow the KV cache and the preempted requests are computed again; "
                     f"SGLang admits only where room is left for a share of every answer still to come: "
                     f"schedule.overrides.new_token_ratio=0.7 shows what that would do (fewer preemptions, shorter "
                     f"slowest times between tokens)")
    if kept:
        hints.append(f"{said([name for name in many if name in kept])}: the share kept falls to 0.14 of its start "
                     f"within 600 decode steps and the batch outgrows the cache again; a larger start "
                     f"(schedule.overrides.new_token_ratio=1.0, SGLang's --schedule-conservativeness 1.43) or fewer "
                     f"running requests (a smaller schedule.overrides.max_num_seqs, its --max-running-requests) keep "
                     f"more room")
    return "\n".join(hints)


ARRIVAL_ORDER = ("sorted", "blend")  # schedules an engine serving in arrival order reproduces from their order


def order_hint(cfg: DictConfig, summaries: dict, offline: bool, run_dir: Path) -> str | None:
    """Over the user's own prompts sent at once (``offline``): how to hand an engine that serves
    in arrival order (vLLM, SGLang) the order of `sorted` or `blend`, whichever ran faster; fcfs
    over that order runs as the schedule did (tests/test_order.py, tests/test_blend.py)."""
    ordered = [name for name in summaries if name in ARRIVAL_ORDER]
    if cfg.workload.get("kind") != "prompts" or not ordered or not offline:
        return None
    best = min(ordered, key=lambda name: summaries[name]["makespan_s"])
    against = f" against fcfs's {summaries['fcfs']['makespan_s']:,.1f} s" if "fcfs" in summaries else ""
    return (f"an engine that serves in arrival order (vLLM, SGLang) runs your prompts as {best} did "
            f"({summaries[best]['makespan_s']:,.1f} s{against}) when sent in its order: "
            f"batchlab order {run_dir} ORDERED.jsonl --schedule {best}")
