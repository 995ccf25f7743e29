"""Prediction errors: simulated records against measured records of the same plans."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .metrics import summarize


def step_errors(predicted: pd.Series, measured: pd.Series) -> dict:
    """Absolute percentage error per step (offline: the plans are the same, step for step)."""
    predicted, measured = np.asarray(predicted, float), np.asarray(measured, float)
    if len(predicted) != len(measured):
        raise ValueError(f"{len(predicted)} predicted steps but {len(measured)} measured: not the same plans")
    ape = np.abs(predicted - measured) / measured
    return {"steps": int(len(ape)), "ape_median": float(np.median(ape)), "ape_p90": float(np.percentile(ape, 90)),
            "mape": float(np.mean(ape))}


IDLE_S = 1e-3  # an idle spell before a step at least this long (a GPU may lower its clocks in one)


def own_plan_errors(predicted: list[float], steps: pd.DataFrame) -> dict:
    """The cost model's price of each plan the engine ran, against its measured step (``steps``:
    the run's step records, in order): the cost model's own error, apart from where the
    engine's plans left the simulation's (online, where arrivals fall between steps
    differently). Offline with the same plans it is the step error itself. The steps right
    after an idle spell of ``IDLE_S`` or more, and the rest, apart: a device that slows down
    while it waits for arrivals shows as a lower ratio after idle spells."""
    out = step_errors(predicted, steps["duration_s"])
    predicted, measured = np.asarray(predicted, float), steps["duration_s"].to_numpy(float)
    start = steps["start_s"].to_numpy(float)
    idle = np.concatenate([[np.inf], start[1:] - (start[:-1] + measured[:-1])]) >= IDLE_S  # the first: after none
    ratio = predicted / measured
    out.update({"ratio_median": float(np.median(ratio)), "busy_s_predicted": float(predicted.sum()),
                "busy_s_measured": float(measured.sum()),
                "busy_error": relative_error(float(predicted.sum()), float(measured.sum()))})
    for key, mask in (("after_idle", idle), ("back_to_back", ~idle)):
        out[key] = {"steps": int(mask.sum()), "ratio_median": float(np.median(ratio[mask])) if mask.any() else None}
    return out


# the simulator's kernels and the engine's, grouped where they name the same work
KERNEL_GROUPS = {
    "projections, MLP": (("linear_qkv", "linear_o", "mlp"), ("linear_qkv", "linear_o", "mlp")),
    "norms, RoPE, KV store": (("elementwise",), ("norms", "rope_kv_store")),
    "attention": (("attn_prefill", "attn_decode", "attn_shared_prefix"), ("attention",)),
    "LM head, sampling": (("lm_head_sampling",), ("lm_head_sampling",)),
    "host (overhead, scheduler)": (("step_overhead",), ("overhead", "scheduler")),
}


def kernel_errors(pred_steps: pd.DataFrame, meas_steps: pd.DataFrame) -> dict:
    """Seconds per kernel group over the run, predicted and measured, in prompt steps (some
    prefill) and decode-only steps apart: where the predictions miss. Same plans only."""
    prompt = pred_steps["num_prefill_tokens"].to_numpy() > 0
    column = lambda steps, names: sum(steps[f"kernel_{n}_s"].to_numpy() for n in names)
    out = {}
    for group, (simulated, engine) in KERNEL_GROUPS.items():
        p, m = column(pred_steps, simulated), column(meas_steps, engine)
        out[group] = {kind: {"predicted_s": float(p[mask].sum()), "measured_s": float(m[mask].sum())}
                      for kind, mask in (("prompt_steps", prompt), ("decode_steps", ~prompt))}
    return out


def _shown(value, fmt: str) -> str:
    """``value`` formatted; "-" where there is none (None or NaN)."""
    return "-" if value is None or value != value else fmt.format(value)


def _pct(value) -> str:
    """A fraction as a percentage."""
    return _shown(value, "{:.1%}")


def validation_table(result: dict) -> str:
    """Per schedule: plans, step errors, makespans and their noise floors; then the ranking."""
    lines = ["schedule        plans same  step MAPE  step APE p90  noise MAPE  makespan pred  makespan meas  error  noise",
             "--------------  ----------  ---------  ------------  ----------  -------------  -------------  -----  -----"]
    for name, e in result["schedules"].items():
        step, noise = e.get("step_error", {}), e.get("noise_step_error", {})
        lines.append(f"{name:<14}  {str(e.get('plans_identical', '-')):>10}  {_pct(step.get('mape')):>9}  "
                     f"{_pct(step.get('ape_p90')):>12}  {_pct(noise.get('mape')):>10}  {e['makespan_s_predicted']:>13.3f}  "
                     f"{e['makespan_s_measured']:>13.3f}  {_pct(e['makespan_s_error']):>5}  {_pct(e.get('noise_makespan')):>5}")
    ratios = []
    for name, e in result["schedules"].items():  # how many noise floors away each prediction is
        step, noise = e.get("step_error", {}).get("mape"), e.get("noise_step_error", {}).get("mape")
        spans = (e["makespan_s_error"], e.get("noise_makespan"))
        shown = [f"{error / floor:.1f}x" if error is not None and floor else "-" for error, floor in ((step, noise), spans)]
        if shown != ["-", "-"]:
            ratios.append(f"{name} {shown[0]} / {shown[1]}")
    if ratios:
        lines.append("error over its noise floor (step MAPE / makespan): " + ", ".join(ratios))
    lines.append(f"ranking predicted: {result['ranking_predicted']}; measured: {result['ranking_measured']}; "
                 f"same: {result['same_ranking']}")
    separated, discordant = result["pairs_separated_beyond_noise"], result["pairs_discordant"]
    lines.append(f"pairs the engine separates beyond its noise floor: {len(separated)}, ordered the other way "
                 f"by the simulator: {len(discordant)}" + (f" {discordant}" if discordant else ""))
    marks = [(what, result[key]) for key, what in (("yardstick_ms", "256x256 matmul"), ("copy_ms", "64 MB copy"))
             if result.get(key)]
    if marks:  # fixed pieces of work before every engine run: how steady the machine was
        lines.append("machine speed (yardstick before each run): " + "; ".join(
            f"{what} {m['min']:.3f}-{m['max']:.3f} ms, {m['max'] / m['min'] - 1:.0%} apart" for what, m in marks))
    stolen = result.get("cpu_stolen") or {}
    if stolen.get("max") is not None:  # a VM's hypervisor running other guests on our cores
        per_run = ", ".join(f"{name} " + "/".join(_pct(v) for v in values) for name, values in stolen["per_run"].items())
        lines.append(f"CPU time stolen by the hypervisor during the engine runs: {per_run}")
    return "\n".join(lines)


def roofline_table(result: dict) -> str:
    """The measured profile's errors beside those of the hardware's analytic roofline profile."""
    lines = [f"the same runs predicted with the {result['roofline']} roofline profile instead of the measured one:",
             "schedule        measured profile: step MAPE  makespan error   roofline: step MAPE  makespan pred  makespan error",
             "--------------  ---------------------------  --------------   -------------------  -------------  --------------"]
    for name, e in result["schedules"].items():
        roof = e.get("roofline")
        if roof is None:
            continue
        lines.append(f"{name:<14}  {_pct(e.get('step_error', {}).get('mape')):>27}  {_pct(e['makespan_s_error']):>14}   "
                     f"{_pct(roof.get('step_error', {}).get('mape')):>19}  {roof['makespan_s_predicted']:>13.3f}  "
                     f"{_pct(roof['makespan_s_error']):>14}")
    return "\n".join(lines)


def kernel_table(name: str, kernels: dict) -> str:
    lines = [f"{name}: seconds per kernel over the run, predicted / measured (error)",
             f"  {'kernels':<28}{'prompt steps':>28}{'decode-only steps':>28}"]
    cell = lambda e: (f"{e['predicted_s']:.3f} / {e['measured_s']:.3f} "
                      f"({(e['predicted_s'] - e['measured_s']) / e['measured_s']:+.0%})" if e["measured_s"] else "-")
    for group, kinds in kernels.items():
        lines.append(f"  {group:<28}{cell(kinds['prompt_steps']):>28}{cell(kinds['decode_steps']):>28}")
    return "\n".join(lines)


def relative_error(predicted: float, measured: float) -> float:
    return abs(predicted - measured) / measured if measured else float("nan")


COMPARED = ("makespan_s", "throughput_tokens_per_s", "ttft_s_p50", "ttft_s_p99", "tpot_s_p50", "tpot_s_p99")
SESSION = "session_s_mean"  # compared too where the requests are sessions' turns (agents' jobs)


def _compared(summary: dict) -> tuple[str, ...]:
    return COMPARED + ((SESSION,) if SESSION in summary else ())


def compare_runs(pred_requests, pred_steps, meas_requests, meas_steps) -> dict:
    """Makespan, throughput and latency-percentile errors of one schedule (and the sessions'
    mean time, where there are sessions)."""
    pred, meas = summarize(pred_requests, pred_steps), summarize(meas_requests, meas_steps)
    keys = _compared(pred)
    out = {f"{k}_predicted": pred[k] for k in keys}
    out.update({f"{k}_measured": meas[k] for k in keys})
    out.update({f"{k}_error": relative_error(pred[k], meas[k]) for k in keys})
    return out


def run_noise(first_requests, first_steps, again_requests, again_steps) -> dict:
    """The same metrics' relative difference between two engine runs of one schedule: the
    noise floor their prediction errors are to be read against."""
    first, again = summarize(first_requests, first_steps), summarize(again_requests, again_steps)
    return {k: relative_error(again[k], first[k]) for k in _compared(first)}


def latency_table(schedules: dict) -> str:
    """Throughput and TTFT/TPOT percentiles, predicted / measured (error, noise floor): what an
    online replay is judged by (its plans differ from the prediction's, so steps do not pair)."""
    ms = lambda v: _shown(v if v is None else 1e3 * v, "{:.1f}")
    columns = (("throughput_tokens_per_s", "tokens/s", lambda v: f"{v:,.0f}"), ("ttft_s_p50", "TTFT p50 ms", ms),
               ("ttft_s_p99", "TTFT p99 ms", ms), ("tpot_s_p50", "TPOT p50 ms", ms), ("tpot_s_p99", "TPOT p99 ms", ms))
    if any(f"{SESSION}_predicted" in e for e in schedules.values()):
        columns += ((SESSION, "session mean s", lambda v: _shown(v, "{:.3f}")),)
    lines = ["predicted / measured (error, noise floor)",
             f"{'schedule':<14}" + "".join(f"  {title:>30}" for _, title, _ in columns)]
    for name, e in schedules.items():
        noise = e.get("noise", {})
        cells = [f"{fmt(e[f'{k}_predicted'])} / {fmt(e[f'{k}_measured'])} ({_pct(e[f'{k}_error'])}, {_pct(noise.get(k))})"
                 for k, _, fmt in columns]
        lines.append(f"{name:<14}" + "".join(f"  {c:>30}" for c in cells))
    return "\n".join(lines)


def ranking(values: dict[str, float]) -> list[str]:
    """Schedules from fastest to slowest makespan."""
    return sorted(values, key=values.__getitem__)


def discordant_pairs(predicted: dict[str, float], measured: dict[str, float],
                     noise: dict[str, float | None]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Pairs of schedules the engine tells apart and the simulator orders the other way.

    A pair counts as told apart when their measured makespans differ by more than the noise
    floor (the larger relative run-to-run difference of the two; 0 where none was measured):
    below it the measured order is a coin toss. Returns (separated pairs, discordant ones),
    each pair written (measured faster, measured slower)."""
    names = sorted(measured, key=measured.__getitem__)
    separated, discordant = [], []
    for i, fast in enumerate(names):
        for slow in names[i + 1:]:
            floor = max(noise.get(fast) or 0.0, noise.get(slow) or 0.0)
            if measured[slow] - measured[fast] > floor * measured[fast]:
                separated.append((fast, slow))
                if predicted[fast] > predicted[slow]:
                    discordant.append((fast, slow))
    return separated, discordant


def scatter(points: dict[str, tuple[np.ndarray, np.ndarray]], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 6))
    top = 0.0
    for name, (predicted, measured) in points.items():
        ax.scatter(np.asarray(measured) * 1e3, np.asarray(predicted) * 1e3, s=8, label=name, alpha=0.7)
        top = max(top, float(np.max(measured)) * 1e3, float(np.max(predicted)) * 1e3)
    ax.plot([0, top], [0, top], color="black", linewidth=0.8, label="prediction = measurement")
    ax.set_xlabel("measured step time (ms)")
    ax.set_ylabel("predicted step time (ms)")
    ax.set_title("Predicted vs measured step time")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def own_plans_table(schedules: dict) -> str:
    """Each measured step priced by the cost model for the plan the engine ran: whether a miss
    online is the cost model's or the plans'."""
    lines = ["the cost model on the engine's own plans (each measured step priced as the engine ran it):",
             "schedule        steps  step MAPE  step APE p90  predicted/measured (median)  busy s pred / meas (error)"
             "  after idle (steps, median)  back to back",
             "--------------  -----  ---------  ------------  ---------------------------  --------------------------"
             "  --------------------------  ------------"]
    for name, e in schedules.items():
        own = e.get("own_plans")
        if own is None:
            continue
        busy = f"{own['busy_s_predicted']:.3f} / {own['busy_s_measured']:.3f} ({_pct(own['busy_error'])})"
        idle, packed = (f"{own[k]['steps']}, {_shown(own[k]['ratio_median'], '{:.3f}')}" for k in ("after_idle", "back_to_back"))
        lines.append(f"{name:<14}  {own['steps']:>5}  {_pct(own['mape']):>9}  {_pct(own['ape_p90']):>12}  "
                     f"{own['ratio_median']:>27.3f}  {busy:>26}  {idle:>26}  {packed:>12}")
    return "\n".join(lines)
