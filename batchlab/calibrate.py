"""``batchlab calibrate``: fit the roofline profile's assumptions to benchmarks measured on the
user's GPU, and say how well the fitted simulator predicts points it was not fitted to.

For a user who has a GPU and a serving engine but not batchlab's engine on it: a few runs of
``vllm bench serve --save-result`` give the achievable bandwidth and FLOP fractions and the host
costs of *their* stack, and every later ``batchlab simulate`` / ``plan`` can use them
(``hardware.overrides.*``, printed at the end)."""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_original_cwd
from omegaconf import DictConfig, OmegaConf

from scheduler import schedule_config
from scheduler.errors import ConfigError
from sim.hardware import hardware_spec
from traces.bench_results import METRIC_LABELS, read_bench_points

from .calibration import CLIENT_METRICS, PARAMETERS, Setting, at_bound, fit, held_out, predict
from .command import CONF_DIR, guarded, model_of, say
from .records import finite_json


def measurement_files(given, base_dir: str) -> list[Path]:
    """The files named, a directory standing for its ``*.json`` and ``*.csv`` files."""
    if not given:
        raise ConfigError("measurements is not set; expected benchmark result files, e.g. "
                          "measurements=[c1.json,c8.json] or measurements=[sweep_dir/] (vllm bench serve --save-result)")
    files = []
    for entry in [given] if isinstance(given, str) else list(given):
        path = Path(base_dir) / str(entry)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in (".json", ".csv"))
            if not found:
                raise ConfigError(f"measurements: {path} holds no .json or .csv file")
            files.extend(found)
        else:
            files.append(path)
    return files


def _scale(metric: str) -> float:
    return 1e3 if metric in ("ttft_s_p50", "tpot_s_p50", "e2e_s_p50") else 1.0  # latencies shown in ms


def run_calibration(cfg: DictConfig, run_dir: Path, base_dir: str) -> dict:
    started = time.perf_counter()
    points = read_bench_points(measurement_files(cfg.measurements, base_dir))
    model = model_of(cfg, base_dir, costs_only=True)
    hardware_overrides = OmegaConf.to_container(cfg.hardware.overrides, resolve=True)
    hardware = hardware_spec(cfg.hardware.preset, **hardware_overrides)
    schedule = schedule_config(cfg.schedule.name, **OmegaConf.to_container(cfg.schedule.overrides, resolve=True))
    setting = Setting(model, hardware, schedule, model.vllm_block_size(int(cfg.block_size)), int(cfg.seed))
    names = list(cfg.fit)
    unknown = [name for name in names if name not in PARAMETERS]
    if unknown or not names:
        raise ConfigError(f"fit={names}: unknown parameters {unknown}; expected some of {list(PARAMETERS)}")
    notes = []
    if "client_overhead_s" in names and not any(m in p.measured for p in points for m in CLIENT_METRICS):
        names.remove("client_overhead_s")
        notes.append("no point measures TTFT or end-to-end latency: client_overhead_s not fitted")
    start = setting.starting_values(float(cfg.client_overhead_s), names)
    models = sorted({point.model or model.name for point in points})
    say(f"calibrate: {len(points)} points, {sum(len(p.measured) for p in points)} measured figures; "
        f"fitting {', '.join(names)} for {', '.join(models)} on {hardware.label}")
    preset = [predict(point, setting, start) for point in points]
    result = fit(points, setting, names, start, progress=say)
    for name in names:
        if at_bound(name, result.values[name]):
            notes.append(f"{name} ended at its bound ({result.values[name]:g}): the figures would take it past. A "
                         f"fraction of 1 or a cost of 0 can be real (an engine hiding host work behind the GPU's), or a "
                         f"sign that the preset, the model or the server's settings are not what ran")
    calibrated = [predict(point, setting, result.values) for point in points]
    held = held_out(points, setting, names, result.values, progress=say) if cfg.holdout else [None] * len(points)
    rows = []
    for point, before, after, out in zip(points, preset, calibrated, held):
        for metric, measured in point.measured.items():
            rows.append({"point": point.label, "source": point.source, "metric": metric, "measured": measured,
                         "preset": before[metric], "calibrated": after[metric],
                         "held_out": None if out is None else out[metric]})
    fitted_hardware = {n: result.values[n] for n in names if n != "client_overhead_s"}
    overrides = {**hardware_overrides, **fitted_hardware}
    command = " ".join([f"hardware={cfg.hardware.preset}"]
                       + [f"hardware.overrides.{k}={v:.4g}" if isinstance(v, float) else f"hardware.overrides.{k}={v}"
                          for k, v in overrides.items()])
    calibration = {
        "model": model.name, "models": models,
        "hardware": hardware.label, "hardware_preset": cfg.hardware.preset,
        "schedule": {"name": schedule.name, "max_num_batched_tokens": schedule.max_num_batched_tokens,
                     "max_num_seqs": schedule.max_num_seqs},
        "points": [{"label": p.label, "source": p.source, "requests": len(p.input_lens), "concurrency": p.concurrency,
                    "request_rate": p.request_rate, "measured": p.measured} for p in points],
        "fitted": names, "start": start, "values": result.values, "spread": result.spread,
        "rms_log_error": result.rms_log_error,
        "iterations": result.iterations, "evaluations": result.evaluations, "rows": rows,
        "median_abs_error": {column: _median_abs_error(rows, column) for column in ("preset", "calibrated", "held_out")},
        "fitted_hardware": fitted_hardware, "overrides": command, "notes": notes, "wall_s": time.perf_counter() - started,
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    (run_dir / "calibration.json").write_text(json.dumps(finite_json(calibration), indent=2))
    from reports.plots import calibration_panels
    calibration_panels(rows, METRIC_LABELS, {m: _scale(m) for m in METRIC_LABELS}, run_dir / "calibration.png")
    return calibration


def _median_abs_error(rows, column: str) -> float | None:
    errors = [abs(row[column] / row["measured"] - 1) for row in rows if row[column] is not None]
    return statistics.median(errors) if errors else None


def _cell(value, measured, scale) -> str:
    if value is None:
        return f"{'-':>16}"
    return f"{value * scale:>9,.4g} {100 * (value / measured - 1):>+5.0f}%"


def calibration_table(result: dict) -> str:
    """Per point and figure: measured, predicted with the preset, calibrated, and held out."""
    lines = [f"{'point':<22}{'figure':<14}{'measured':>10}  {'preset':>16}  {'calibrated':>16}  {'held out':>16}"]
    for row in result["rows"]:
        scale = _scale(row["metric"])
        lines.append(f"{row['point']:<22}{METRIC_LABELS[row['metric']]:<14}{row['measured'] * scale:>10,.4g}  "
                     + "  ".join(_cell(row[c], row["measured"], scale) for c in ("preset", "calibrated", "held_out")))
    medians = result["median_abs_error"]
    lines.append("median |error|: " + ", ".join(f"{c.replace('_', ' ')} {100 * medians[c]:.1f}%"
                                                 for c in ("preset", "calibrated", "held_out") if medians[c] is not None))
    start, values, spread = result["start"], result["values"], result["spread"]
    lines.append("fitted (+- one standard error; was): " + ", ".join(
        f"{n} {values[n]:.3g} +- {spread[n]:.2g} ({start[n]:.3g})" for n in result["fitted"]))
    loose = [n for n in result["fitted"] if not spread[n] < 0.5 * values[n]]
    if loose:
        lines.append(f"not pinned down by these points (others can stand in for them; predictions of the models "
                     f"benchmarked hold, of another model may not; a second model size separates them): "
                     f"{', '.join(loose)}")
    lines.extend(result["notes"])
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="calibrate")
def calibrate_main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    result = guarded("calibrate", run_dir, lambda: run_calibration(cfg, run_dir, get_original_cwd()),
                     kept="nothing written (a fit is kept only whole); the progress lines above show how far it got")
    print(calibration_table(result))
    print(f"use it: batchlab simulate hardware={result['hardware_preset']} calibration={run_dir}\n"
          f"    (the same by hand: batchlab simulate {result['overrides']})")
    if "client_overhead_s" in result["fitted"]:
        print(f"(the benchmark client's own time, {1e3 * result['values']['client_overhead_s']:.1f} ms a request, is "
              f"no server's; for client-pool what-ifs: workload.arrivals.think_s="
              f"{result['values']['client_overhead_s']:.4g})")
    print(f"calibration: {run_dir / 'calibration.json'}, {run_dir / 'calibration.png'} ({result['wall_s']:.0f} s)")
