"""Fitting the roofline's assumptions to measured serving benchmarks (``batchlab calibrate``).

The analytic profile rests on a few numbers of ours (achievable fractions of peak FLOP/s and
bandwidth, a per-step and per-request host cost); a user who has benchmarked a server on their
GPU (``vllm bench serve`` at a few concurrencies, say) has what it takes to replace them. Each
benchmark point is simulated as it was run (``traces/bench_results.py``), and the parameters
are fitted by Levenberg-Marquardt (finite differences) to the log of predicted over measured,
every measured figure weighing alike, within bounds (fractions 0.001..1, seconds 0..10).
``client_overhead_s`` is the benchmark client's own time per request (HTTP, tokenizing,
streaming): added to its TTFT and end-to-end latency, and spent between a response and the
client's next request; it is not the server's and no hardware field.

Held-out errors are the honest figure: each point predicted by a fit to the others.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from scheduler import ScheduleConfig
from scheduler.errors import ConfigError
from scheduler.model_spec import ModelSpec
from traces.bench_results import BenchPoint

from .records import outcome_summary

# attention_efficiency's 0 (unset: memory_efficiency's) is no fraction to fit from: fitted, it starts
# at memory_efficiency (``starting_values``)
FRACTIONS = ("compute_efficiency", "memory_efficiency", "moe_compute_efficiency", "attention_efficiency")
SECONDS = ("step_overhead_s", "step_overhead_per_request_s", "kernel_launch_s", "client_overhead_s")
PARAMETERS = FRACTIONS + SECONDS
DEFAULT_FIT = ("compute_efficiency", "memory_efficiency", "step_overhead_s", "step_overhead_per_request_s",
               "client_overhead_s")
CLIENT_METRICS = ("ttft_s_p50", "e2e_s_p50")  # measured by the client: its own time included


@dataclass(frozen=True)
class Setting:
    """What one prediction needs besides the parameters."""
    model: ModelSpec
    hardware: object      # sim.hardware.HardwareSpec: the preset with the user's overrides
    schedule: ScheduleConfig
    block_size: int = 16
    seed: int = 0

    def values(self, client_overhead_s: float) -> dict[str, float]:
        """The parameters' values in this setting: the hardware's and the client's."""
        return {**{name: getattr(self.hardware, name) for name in PARAMETERS if name != "client_overhead_s"},
                "client_overhead_s": client_overhead_s}

    def starting_values(self, client_overhead_s: float, names) -> dict[str, float]:
        """``values``, with an unset attention_efficiency that is to be fitted (``names``) started
        at the memory efficiency, what it stands for while unset."""
        values = self.values(client_overhead_s)
        if "attention_efficiency" in names and not values["attention_efficiency"]:
            values["attention_efficiency"] = values["memory_efficiency"]
        return values


def _costed(setting: Setting, values: dict[str, float], model_name: str | None, built: dict):
    """(cost model, KV blocks) of a model (the setting's where None) on the hardware with
    ``values``, built once per model for one set of values (``built`` remembers them)."""
    if model_name not in built:
        from scheduler.model_spec import model_spec
        from sim.cost_model import CostModel
        from sim.hardware import kv_capacity_blocks
        from sim.roofline import build_roofline_profile

        hardware = replace(setting.hardware, **{k: v for k, v in values.items() if k != "client_overhead_s"})
        model = model_spec(model_name) if model_name else setting.model
        built[model_name] = (CostModel(build_roofline_profile(model, hardware), model),
                             kv_capacity_blocks(model, hardware, setting.block_size))
    return built[model_name]


def predict(point: BenchPoint, setting: Setting, values: dict[str, float], built: dict | None = None) -> dict:
    """The simulated counterpart of each figure ``point`` measured, with ``values`` (``built``:
    the cost models already made for these values)."""
    from sim.simulator import simulate

    client = values["client_overhead_s"]
    cost, kv_blocks = _costed(setting, values, point.model, {} if built is None else built)
    outcome = simulate(point.workload(think_s=client, seed=setting.seed), setting.schedule, cost, kv_blocks,
                       setting.block_size)
    summary = outcome_summary(outcome)
    return {metric: summary[metric] + (client if metric in CLIENT_METRICS else 0.0) for metric in point.measured}


def log_errors(points, setting: Setting, values: dict[str, float]) -> np.ndarray:
    """log(predicted / measured) of every measured figure, point by point."""
    errors, built = [], {}
    for point in points:
        predicted = predict(point, setting, values, built)
        errors.extend(math.log(predicted[m] / point.measured[m]) if predicted[m] > 0 else 10.0 for m in point.measured)
    return np.array(errors)


# The free variables: a fraction's inverse (a slowness: time is linear in it) and seconds in units
# of their typical size. Predicted times are close to linear in both, so Gauss-Newton steps land
# near the optimum, and a cost at zero can still rise again (in logarithms it could not: a cost
# driven towards zero loses its gradient and stays there). Bounds: fractions 0.001..1, seconds 0..10.
UNIT_S = {"step_overhead_s": 1e-3, "step_overhead_per_request_s": 1e-5, "kernel_launch_s": 1e-6,
          "client_overhead_s": 1e-3}
MAX_STEP = 3.0  # free units a step


def _bounds(name: str) -> tuple[float, float]:
    return (1.0, 1000.0) if name in FRACTIONS else (0.0, 10.0 / UNIT_S[name])


def _bounded(names, u: np.ndarray) -> np.ndarray:
    return np.array([np.clip(x, *_bounds(n)) for n, x in zip(names, u)])


def at_bound(name: str, value: float) -> bool:
    """Whether a fitted value ended on one of its bounds (the fit would have gone past)."""
    return any(_from_free(name, edge) == value for edge in _bounds(name))


def _to_free(name: str, value: float) -> float:
    return 1.0 / value if name in FRACTIONS else value / UNIT_S[name]


def _from_free(name: str, u: float) -> float:
    return 1.0 / u if name in FRACTIONS else u * UNIT_S[name]


@dataclass(frozen=True)
class Fit:
    values: dict          # every parameter's value, fitted or kept
    spread: dict          # fitted parameter -> one standard error (linearised; inf: not determined)
    rms_log_error: float
    iterations: int
    evaluations: int


def _where_fractions_bind(names, u: np.ndarray, r: np.ndarray, errors_at, evaluations: int):
    """An efficiency whose roofline nothing is bound by at its start (a step takes the larger of
    its compute and memory times: lowering a fraction that loses that race changes nothing) has
    no gradient, and the fit would leave it there. Such a fraction is started lower, a quarter at
    a time (at most 4 times), until the figures move with it."""
    for j, name in enumerate(names):
        if name not in FRACTIONS:
            continue
        for _ in range(4):
            nudged = u.copy()
            nudged[j] += 1e-3
            evaluations += 1
            if np.any(errors_at(nudged) != r) or u[j] * 4 > _bounds(name)[1]:
                break
            u = u.copy()
            u[j] *= 4
            r = errors_at(u)
            evaluations += 1
    return u, r, evaluations


def fit(points, setting: Setting, names, start: dict[str, float], max_iterations: int = 40,
        progress: Callable[[str], None] | None = None) -> Fit:
    """Levenberg-Marquardt over the named parameters from ``start`` (every parameter's value)."""
    names = list(names)
    figures = sum(len(p.measured) for p in points)
    if figures <= len(names):
        raise ConfigError(f"{figures} measured figures cannot determine {len(names)} parameters ({', '.join(names)}); "
                          f"measure more points or fit fewer (fit=[...])")

    def errors_at(u):
        return log_errors(points, setting, {**start, **{n: _from_free(n, x) for n, x in zip(names, u)}})

    u = _bounded(names, np.array([_to_free(n, start[n]) for n in names]))
    r, evaluations, damping, iterations = errors_at(u), 1, 1e-2, 0
    u, r, evaluations = _where_fractions_bind(names, u, r, errors_at, evaluations)
    cost = float(r @ r)
    for iterations in range(1, max_iterations + 1):
        jacobian = np.empty((len(r), len(u)))
        for j in range(len(u)):
            du = np.zeros_like(u)
            du[j] = 1e-3
            jacobian[:, j] = (errors_at(u + du) - r) / 1e-3
        evaluations += len(u)
        normal, gradient = jacobian.T @ jacobian, jacobian.T @ r
        improved = False
        lower, upper = map(np.array, zip(*(_bounds(n) for n in names)))
        while damping < 1e8:
            damped = normal + damping * np.diag(np.diag(normal) + 1e-9)
            step = np.linalg.solve(damped, -gradient)
            # a parameter at a bound the step would cross stays there; the others are solved without it
            held = ((u <= lower) & (step < 0)) | ((u >= upper) & (step > 0))
            if held.any():
                free = ~held
                step = np.zeros_like(u)
                if free.any():
                    step[free] = np.linalg.solve(damped[np.ix_(free, free)], -gradient[free])
            step *= min(1.0, MAX_STEP / max(np.abs(step).max(), 1e-300))
            step = _bounded(names, u + step) - u
            trial = errors_at(u + step)
            evaluations += 1
            if float(trial @ trial) < cost:
                gain = (cost - float(trial @ trial)) / cost
                u, r, cost, damping, improved = u + step, trial, float(trial @ trial), damping / 3, True
                break
            damping *= 4
        if progress:
            progress(f"iteration {iterations}: rms log error {math.sqrt(cost / len(r)):.4f}")
        if not improved or gain < 1e-4 or np.abs(step).max() < 1e-4:
            break
    values = {**start, **{n: _from_free(n, x) for n, x in zip(names, u)}}
    return Fit(values, _spread(names, values, jacobian, cost, len(r)), math.sqrt(cost / len(r)), iterations,
               evaluations)


def _spread(names, values, jacobian, cost: float, figures: int) -> dict[str, float]:
    """One standard error of each fitted parameter from the last Jacobian: the residual variance
    times (J'J)^-1, carried from the free variable back to the value. Parameters the figures
    cannot tell apart (one can stand in for another) get large or infinite spreads."""
    variance = cost / max(figures - len(names), 1)
    try:
        covariance = np.linalg.inv(jacobian.T @ jacobian) * variance
    except np.linalg.LinAlgError:
        return {name: math.inf for name in names}
    spread = {}
    for j, name in enumerate(names):
        sigma = math.sqrt(max(covariance[j, j], 0.0))
        x = values[name]
        spread[name] = x * x * sigma if name in FRACTIONS else UNIT_S[name] * sigma
    return spread


def held_out(points, setting: Setting, names, start: dict[str, float],
             progress: Callable[[str], None] | None = None) -> list[dict | None]:
    """Each point predicted by a fit to the others (from ``start``, the full fit), or None where
    the others cannot determine the parameters."""
    predictions = []
    for index, point in enumerate(points):
        others = points[:index] + points[index + 1:]
        if sum(len(p.measured) for p in others) <= len(names):
            predictions.append(None)
            continue
        result = fit(others, setting, names, start, max_iterations=20)
        predictions.append(predict(point, setting, result.values))
        if progress:
            progress(f"held out {point.label}: fitted to the other {len(others)} points")
    return predictions


def load_calibrations(paths, base_dir: str) -> dict[str, dict]:
    """hardware preset -> a ``calibration.json`` (``batchlab calibrate``) for it, from one path
    or a list (a directory: its calibration.json); one calibration a GPU type. What a run takes
    from one is the fitted hardware values only, not the benchmark server's other settings."""
    import json
    from pathlib import Path

    found: dict[str, dict] = {}
    for entry in [paths] if isinstance(paths, str) else list(paths):
        path = Path(base_dir) / str(entry)
        if path.is_dir():
            path = path / "calibration.json"
        try:
            calibration = json.loads(path.read_text())
            preset, values = calibration["hardware_preset"], dict(calibration["fitted_hardware"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ConfigError(f"calibration={entry}: not a calibration.json written by batchlab calibrate "
                              f"({type(error).__name__}: {error})") from None
        if preset in found:
            raise ConfigError(f"calibration: two calibrations for {preset!r} ({found[preset]['path']} and {path})")
        found[preset] = {**calibration, "path": str(path), "fitted_hardware": values}
    return found


def calibration_note(calibration: dict) -> dict:
    """What a run records of the calibration it used."""
    return {"path": calibration["path"], "models": calibration.get("models"), "points": len(calibration.get("points", [])),
            "values": calibration["fitted_hardware"],
            "median_abs_error_held_out": (calibration.get("median_abs_error") or {}).get("held_out")}


def calibration_for(paths, base_dir: str, preset: str, model_name: str, warn: Callable[[str], None]) -> dict:
    """The calibration among ``paths`` made on this GPU type (``simulate`` takes one)."""
    calibrations = load_calibrations(paths, base_dir)
    if preset not in calibrations:
        raise ConfigError(f"calibration={paths} holds calibrations for {sorted(calibrations)}, not for "
                          f"hardware={preset}")
    check_model(calibrations[preset], model_name, warn)
    return calibrations[preset]


def check_model(calibration: dict, model_name: str, warn: Callable[[str], None]) -> None:
    """A calibration serves other models with a warning: what its points did not pin down may
    not hold for them."""
    models = calibration.get("models") or [calibration.get("model")]
    if model_name not in models:
        warn(f"warning: {calibration['path']} was fitted to {', '.join(map(str, models))}, not {model_name}: "
             f"values its points did not pin down may not hold for this model")
