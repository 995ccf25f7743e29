"""What every Hydra subcommand shares: where the configs are, progress on stderr, and one way
to end on bad input (a clear line, exit 2) or on Ctrl-C (records kept, exit 130)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, TypeVar

from scheduler.errors import WorkloadError

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
T = TypeVar("T")


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def guarded(name: str, run_dir: Path, work: Callable[[], T], kept: str | None = None) -> T:
    """``work()``, ending on bad input or Ctrl-C with a line that says what was kept: ``kept``,
    or by default the records of every finished schedule in ``run_dir``."""
    try:
        return work()
    except (WorkloadError, ValueError) as error:
        say(f"batchlab {name}: error: {error}")
        sys.exit(2)
    except KeyboardInterrupt:
        say(f"batchlab {name}: interrupted; " + (kept or f"the records of every finished schedule are in {run_dir} "
            f"(summary.json says complete: false; steps flushed so far are under parts/)"))
        sys.exit(130)


def workload_of(cfg, base_dir: str):
    """The composed config's workload, with several completions of each prompt (``samples``) and
    output-length estimates where it asks for them."""
    from omegaconf import OmegaConf

    from traces.build import build_workload

    workload = build_workload(OmegaConf.to_container(cfg.workload, resolve=True), base_dir)
    samples = cfg.get("samples")
    if samples is not None:  # (n 1 and no spread: the workload as it is)
        from traces.samples import with_samples
        workload = with_samples(workload, samples.get("n", 1), samples.get("output_cv", 0.0), int(samples.get("seed", 0)))
    estimate = cfg.get("output_estimate")
    if estimate is not None and estimate.get("cv"):
        from traces.estimates import with_output_estimates
        workload = with_output_estimates(workload, estimate.cv, int(estimate.get("seed", 0)))
    return workload


def read_hf_config(path: Path) -> dict:
    """A Hugging Face ``config.json`` (``path`` the file, or the directory holding it) as a dict."""
    import json

    from scheduler.errors import ConfigError

    path = Path(path)
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"{file}: no such file (model.config names a Hugging Face config.json, or the "
                          f"checkpoint directory holding one)")
    try:
        config = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        where = f" at line {error.lineno}, column {error.colno}" if isinstance(error, json.JSONDecodeError) else ""
        raise ConfigError(f"{file}: malformed JSON ({getattr(error, 'msg', error)}{where})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{file}: expected a JSON object (a model's config.json), got {type(config).__name__}")
    return config


def model_of(cfg, base_dir: str, costs_only: bool = False):
    """The composed config's model: a preset (``model=NAME``), or a Hugging Face config.json
    (``model=hf model.config=PATH``; for ``batchlab run`` and the engine, the checkpoint's own
    when ``weights=`` is given without it), with ``model.overrides`` applied. ``costs_only``:
    the model is only simulated, so what changes only its numbers (RoPE scaling, biases) is
    taken, and a quantized checkpoint's weights cost the bytes its method says."""
    from omegaconf import OmegaConf

    from scheduler.config import with_overrides
    from scheduler.errors import ConfigError
    from scheduler.model_spec import ModelSpec, model_spec

    overrides = OmegaConf.to_container(cfg.model.overrides, resolve=True)
    if cfg.model.get("preset") is not None:
        return _engine_can_run(model_spec(cfg.model.preset, **overrides), costs_only)
    path = cfg.model.get("config") or cfg.get("weights")
    if not path:
        raise ConfigError("model=hf needs model.config=PATH: a Hugging Face config.json, or the checkpoint "
                          "directory holding one")
    path = Path(base_dir) / str(path)
    name = (path if path.is_dir() else path.parent if path.name == "config.json" else path.with_suffix("")).name
    spec = ModelSpec.from_hf_config(read_hf_config(path), name=name, costs_only=costs_only,
                                    weight_bytes=overrides.get("weight_bytes"))
    return _engine_can_run(with_overrides("model", spec, overrides), costs_only)


def _engine_can_run(spec, costs_only: bool):
    """``spec``, unless the engine is to run it and cannot (``ModelSpec.simulated_only``)."""
    if not costs_only:
        spec.check_engine_runs()
    return spec


def kernel_options_of(cfg) -> dict:
    """The Triton kernels' options the config sets (conf/kernels/default.yaml), by kernel, the
    unset (null) ones left out: {} when none is set."""
    from omegaconf import OmegaConf

    from scheduler.errors import ConfigError

    given = OmegaConf.to_container(cfg.kernels, resolve=True) if "kernels" in cfg else {}
    options = {}
    for kernel, values in (given or {}).items():
        if not isinstance(values, dict):
            raise ConfigError(f"kernels.{kernel} is {values!r}; expected its options (e.g. kernels.{kernel}.pages=2)")
        chosen = {name: value for name, value in values.items() if value is not None}
        if chosen:
            options[kernel] = chosen
    return options


def recorded_kernel_options(recorded: dict | None) -> dict | None:
    """A profile's recorded kernel options (None: from before they were recorded) with the options
    added to its kernels since filled in at their defaults, as the kernels it was measured with
    ran; as recorded where it names an option the kernels no longer take (then it differs)."""
    from engine.attention import make_backend
    from scheduler.errors import ConfigError

    if not recorded:
        return recorded
    try:
        return make_backend("triton", recorded).options
    except ConfigError:
        return recorded


def kernel_options_in_force(cfg) -> dict:
    """Every option of the kernels the config's backend runs with, the kernels' defaults filled
    in (what a profile and a run record); a bad one refused here, before anything loads."""
    from engine.attention import make_backend

    return make_backend(cfg.backend, kernel_options_of(cfg)).options
