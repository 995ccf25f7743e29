"""``batchlab run``: every schedule of the config executed by the engine, measured; the same run
records as ``batchlab simulate`` (with ``mode: measured``), so reports compare the two."""
from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_original_cwd
from omegaconf import DictConfig, OmegaConf

from scheduler import schedule_config
from scheduler.errors import ConfigError

from .command import CONF_DIR, guarded, kernel_options_in_force, kernel_options_of, model_of, say, workload_of
from .records import RunWriter, request_columns, run_meta
from .table import comparison_table

DTYPES = {"float32": 4, "bfloat16": 2, "float16": 2}


def device_memory(device: str) -> tuple[str, float]:
    """(device name, free bytes); a ConfigError for an unknown or absent device."""
    import torch

    if device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device=cuda but no CUDA device is available (try device=cpu)")
        free, _ = torch.cuda.mem_get_info()
        return torch.cuda.get_device_name(), float(free)
    if device != "cpu":
        raise ConfigError(f"unknown device {device!r}; expected cpu or cuda")
    return "cpu", float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def check_checkpoint_config(directory: Path, model) -> None:
    """A checkpoint whose ``config.json`` describes another architecture than ``model`` (the
    preset with its overrides) is refused, naming the fields: loaded anyway, the engine would
    compute another model than the checkpoint's."""
    from scheduler.model_spec import ModelSpec

    from .command import read_hf_config

    path = directory / "config.json"
    if not path.exists():
        return
    differences = model.architecture_differences(ModelSpec.from_hf_config(read_hf_config(path), name=str(directory)))
    if differences:
        raise ConfigError(f"{path} describes another model than {model.name!r} ({'; '.join(differences)}, "
                          f"preset vs checkpoint): use model=hf (the checkpoint's own config.json), pick the "
                          f"matching model= preset, or set the fields with model.overrides.<field>=<value>")


def load_weights(cfg: DictConfig, model, base_dir: str):
    """Safetensors from ``cfg.weights`` (relative to ``base_dir``), else seeded random weights."""
    import torch

    from engine.weights import load_safetensors, random_weights

    dtype = getattr(torch, cfg.dtype)
    if cfg.get("weights"):
        directory = Path(base_dir) / cfg.weights
        check_checkpoint_config(directory, model)
        return load_safetensors(directory, model, dtype, cfg.device)
    return random_weights(model, int(cfg.get("seed", 0)), dtype, cfg.device)


def run_measured(cfg: DictConfig, run_dir: Path, base_dir: str) -> dict:
    import torch

    from engine.host_memory import for_device as host_memory_for
    from engine.loop import run_engine
    from engine.runner import ModelRunner

    if cfg.dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {cfg.dtype!r}; expected one of {sorted(DTYPES)}")
    kernel_options, options_in_force = kernel_options_of(cfg), kernel_options_in_force(cfg)  # before the weights
    model = model_of(cfg, base_dir)
    device_name, free = device_memory(cfg.device)
    weight_bytes = model.num_params * DTYPES[cfg.dtype]
    block_size = model.vllm_block_size(int(cfg.schedule.block_size))  # a linear-attention model's: vLLM's
    kv_bytes = int(cfg.kv_blocks) * block_size * model.kv_bytes_every_layer * DTYPES[cfg.dtype] // model.activation_bytes
    # a linear-attention model's engine keeps, besides, a state (fp32) for every full block, at most one a block
    engine_states = replace(model, state_bytes=4, activation_bytes=DTYPES[cfg.dtype]) if model.linear_layers else model
    states = int(cfg.kv_blocks) * len(model.linear_layers) * engine_states.state_bytes_per_layer
    if weight_bytes + kv_bytes + states > free:
        kept = f" and DeltaNet states for them ({states / 1e9:.2f} GB)" if states else ""
        raise ConfigError(f"model {model.name!r} in {cfg.dtype} ({weight_bytes / 1e9:.2f} GB) plus a KV cache of "
                          f"{cfg.kv_blocks} blocks ({kv_bytes / 1e9:.2f} GB){kept} does not fit in the "
                          f"{free / 1e9:.2f} GB free on {device_name}")
    workload = workload_of(cfg, base_dir)
    overrides = OmegaConf.to_container(cfg.schedule.overrides, resolve=True)
    configs = [schedule_config(name, **overrides) for name in cfg.schedule.names]
    dtype = getattr(torch, cfg.dtype)
    weights = load_weights(cfg, model, base_dir)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    provenance = {"device": device_name, "backend": cfg.backend, "dtype": cfg.dtype, "torch": torch.__version__,
                  "kernel_options": options_in_force,
                  "weights": cfg.weights or f"random(seed={cfg.seed})",
                  "host_memory": host_memory_for(cfg.device)}
    writer = RunWriter(run_dir, run_meta(
        workload, model, mode="measured", hardware=device_name, profile_kind="measured",
        profile=f"measured on {device_name}", provenance=provenance, kv_blocks=int(cfg.kv_blocks),
        block_size=block_size, kv_bytes_per_block=kv_bytes // int(cfg.kv_blocks)))
    say(f"workload {workload.describe()}")
    say(f"model {model.name} ({model.num_params / 1e6:.1f}M parameters, {cfg.dtype}) on {device_name}, "
         f"{cfg.backend} attention, {cfg.kv_blocks} KV blocks")
    for config in configs:
        runner = ModelRunner(model, int(cfg.kv_blocks), block_size, cfg.device, dtype, cfg.backend, weights,
                             kernel_options=kernel_options)
        started = time.perf_counter()
        outcome = run_engine(workload, config, runner, int(cfg.kv_blocks), block_size, cfg.online,
                             writer.step_dir(config.name), say if cfg.progress else None)
        summary = writer.add(config.name, request_columns(outcome.scheduler, config.name, workload.sessions),
                             outcome.steps.columns(), {"profile_kind": "measured", "wall_s": time.perf_counter() - started})
        say(f"{config.name}: {summary['num_steps']:,} steps in {summary['makespan_s']:.2f} s, "
             f"{summary['throughput_tokens_per_s']:,.0f} tokens/s")
    writer.write(complete=True)
    return writer.summaries


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="run")
def run_main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    summaries = guarded("run", run_dir, lambda: run_measured(cfg, run_dir, get_original_cwd()))
    print(comparison_table(summaries))
    if cfg.report:
        from reports.build import build_report
        print(f"report: {build_report([run_dir], run_dir)}")
    print(f"run records: {run_dir}")
