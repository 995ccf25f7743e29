"""The report's plots (matplotlib, no display needed). Each function writes one PNG."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .metrics import request_latencies  # noqa: E402

MAX_POINTS = 4000  # per series: a million-step run is thinned for drawing, not for numbers


def _series_name(run: str, schedule: str, multi_run: bool) -> str:
    return f"{run}: {schedule}" if multi_run else schedule


def _thin(frame: pd.DataFrame) -> pd.DataFrame:
    if len(frame) <= MAX_POINTS:
        return frame
    return frame.iloc[np.linspace(0, len(frame) - 1, MAX_POINTS).astype(int)]


def twins(names: list[str], series: list[tuple[np.ndarray, ...]]) -> list[str | None]:
    """For each series, the first earlier one it equals exactly (its name), else None: two
    schedules that make the same plans draw one line, and the legend must say where the other
    went (the default workload's decode_first lies exactly on fcfs)."""
    found: list[str | None] = []
    for index, arrays in enumerate(series):
        found.append(next((names[j] for j in range(index) if found[j] is None and len(series[j]) == len(arrays)
                           and all(np.array_equal(a, b) for a, b in zip(series[j], arrays))), None))
    return found


def _line(name: str, twin: str | None) -> dict:
    """Plot keywords: a series equal to an earlier one is dashed over it and says so."""
    return {"label": name, "linestyle": "-"} if twin is None else {"label": f"{name} (= {twin})", "linestyle": "--"}


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def throughput_bars(table: pd.DataFrame, path: Path) -> Path:
    multi = table["run"].nunique() > 1
    labels = [_series_name(r, s, multi) for r, s in zip(table["run"], table["schedule"])]
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(labels) + 1.5))
    bars = ax.barh(labels, table["throughput_tokens_per_s"], color="tab:blue")
    for bar, speedup in zip(bars, table["speedup_vs_fcfs"]):
        if speedup == speedup:
            ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {speedup:.2f}x", va="center")
    ax.invert_yaxis()
    ax.set_xlabel("throughput (prompt + output tokens / s)")
    ax.set_title("Throughput per schedule (speedup over fcfs)")
    return _save(fig, path)


def latency_cdfs(groups: list[tuple[str, pd.DataFrame]], path: Path) -> Path:
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    series = []
    for _, requests in groups:
        latencies = request_latencies(requests)
        series.append(tuple(np.sort(latencies[column].dropna().to_numpy() * scale)
                            for column, scale in (("ttft_s", 1), ("tpot_s", 1000), ("e2e_s", 1))))
    names = [name for name, _ in groups]
    for name, twin, arrays in zip(names, twins(names, series), series):
        for ax, values in zip(axes, arrays):
            if len(values):
                ax.plot(values, np.arange(1, len(values) + 1) / len(values), **_line(name, twin))
    for ax, title in zip(axes, ("TTFT (s)", "TPOT (ms)", "end-to-end latency (s)")):
        ax.set_xlabel(title)
        ax.set_ylabel("fraction of requests")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Latency CDFs")
    return _save(fig, path)


def step_series(groups: list[tuple[str, pd.DataFrame]], column: str, ylabel: str, title: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(10, 4))
    names, series = [], []
    for name, steps in groups:
        if "replica" in steps.columns and steps["replica"].nunique() > 1:  # replicas' steps interleave
            count = steps["replica"].nunique()
            steps = steps[steps["replica"] == steps["replica"].min()]
            name = f"{name} (replica 1 of {count})"
        thinned = _thin(steps)
        names.append(name)
        series.append((thinned["start_s"].to_numpy(), thinned[column].to_numpy()))
    for name, twin, (start, values) in zip(names, twins(names, series), series):
        ax.plot(start, values, linewidth=0.8, **_line(name, twin))
    ax.set_xlabel("time (s)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def prefill_bars(table: pd.DataFrame, path: Path) -> Path:
    multi = table["run"].nunique() > 1
    labels = [_series_name(r, s, multi) for r, s in zip(table["run"], table["schedule"])]
    y = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(labels) + 1.5))
    ax.barh(y - 0.2, table["prefill_tokens_logical"], height=0.4, label="logical", color="tab:gray")
    ax.barh(y + 0.2, table["prefill_tokens_computed"], height=0.4, label="computed", color="tab:green")
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_xlabel("prefill tokens")
    ax.set_title("Prefill tokens: logical vs computed")
    ax.legend()
    return _save(fig, path)


def request_lifetimes(groups: list[tuple[str, pd.DataFrame]], path: Path, sample: int = 40) -> Path:
    fig, axes = plt.subplots(len(groups), 1, figsize=(10, 2.2 * len(groups) + 1), squeeze=False)
    for ax, (name, requests) in zip(axes[:, 0], groups):
        picked = requests.sort_values("req_id")
        if len(picked) > sample:
            picked = picked.iloc[np.linspace(0, len(picked) - 1, sample).astype(int)]
        rows = np.arange(len(picked))
        ax.hlines(rows, picked["arrival_s"], picked["first_token_s"], color="tab:orange", linewidth=3,
                  label="arrival to first token")
        ax.hlines(rows, picked["first_token_s"], picked["finish_s"], color="tab:blue", linewidth=3,
                  label="first token to finish")
        ax.set_ylabel(name, fontsize=8)
        ax.set_yticks([])
    axes[0, 0].legend(fontsize=8, loc="upper right")
    axes[-1, 0].set_xlabel("time (s)")
    fig.suptitle(f"Request lifetimes (a sample of up to {sample} per schedule)")
    return _save(fig, path)


def plan_scatter(rows: list[dict], path: Path, y_key: str = "gpu_hours") -> Path:
    """``batchlab plan``'s plans as points, makespan against GPU-hours (or cost): a colour per
    GPU type, a marker per schedule, each labelled tensor-parallel size x replicas; the plans
    no other beats on both axes joined by a line (the ones worth choosing among)."""
    fig, ax = plt.subplots(figsize=(9, 5.5))
    kinds = sorted({row["hardware"] for row in rows})
    schedules = sorted({row["schedule"] for row in rows})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    markers = "os^Dv<>ph*"
    for row in rows:
        x, y = row["makespan_s"], row[y_key]
        ax.scatter(x, y, color=colors[kinds.index(row["hardware"]) % len(colors)],
                   marker=markers[schedules.index(row["schedule"]) % len(markers)], s=36, zorder=3)
        ax.annotate(f"TP{row['tensor_parallel']}x{row['replicas']}", (x, y), textcoords="offset points",
                    xytext=(4, 3), fontsize=7)
    front, best = [], float("inf")  # Pareto front: by makespan, each cheaper than all faster ones
    for row in sorted(rows, key=lambda r: (r["makespan_s"], r[y_key])):
        if row[y_key] < best:
            front.append(row)
            best = row[y_key]
    ax.plot([r["makespan_s"] for r in front], [r[y_key] for r in front], color="gray", linewidth=0.8,
            linestyle=":", zorder=2, label="no plan both faster and cheaper")
    handles = [plt.Line2D([], [], color=colors[i % len(colors)], marker="o", linestyle="", label=kind)
               for i, kind in enumerate(kinds)]
    handles += [plt.Line2D([], [], color="black", marker=markers[i % len(markers)], linestyle="", label=name)
                for i, name in enumerate(schedules)]
    handles += [plt.Line2D([], [], color="gray", linestyle=":", label="no plan both faster and cheaper")]
    ax.legend(handles=handles, fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("makespan (s)")
    ax.set_ylabel("cost (GPU-hours x price)" if y_key == "cost" else "GPU-hours (makespan x GPUs)")
    ax.set_title("Plans: faster is left, cheaper is lower")
    ax.grid(alpha=0.3, which="both")
    return _save(fig, path)


def calibration_panels(rows: list[dict], titles: dict, scales: dict, path: Path) -> Path:
    """``batchlab calibrate``'s figures: a panel per measured quantity, the points along x;
    measured (black dots), the preset's prediction, the calibrated one and the held-out one
    (each point from a fit to the others), so a glance shows where the fit holds."""
    metrics = list(dict.fromkeys(row["metric"] for row in rows))
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.8), squeeze=False)
    styles = {"preset": {"color": "gray", "linestyle": "--", "marker": "s", "label": "preset roofline"},
              "calibrated": {"color": "tab:blue", "linestyle": "-", "marker": "", "label": "calibrated"},
              "held_out": {"color": "tab:orange", "linestyle": "", "marker": "x", "label": "held out"}}
    for ax, metric in zip(axes[0], metrics):
        mine = [row for row in rows if row["metric"] == metric]
        x, scale = np.arange(len(mine)), scales.get(metric, 1.0)
        for column, style in styles.items():
            values = [np.nan if row[column] is None else row[column] * scale for row in mine]
            if not all(np.isnan(values)):
                ax.plot(x, values, markersize=6, linewidth=1.2, **style)
        ax.plot(x, [row["measured"] * scale for row in mine], "o", color="black", markersize=5, label="measured")
        ax.set_xticks(x, [row["point"].split(" ")[0] for row in mine], rotation=45, fontsize=8)
        ax.set_title(titles.get(metric, metric), fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    return _save(fig, path)
