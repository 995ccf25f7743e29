"""Comparison tables: one row per (run, schedule), read from the records alone."""
from __future__ import annotations

import math

import pandas as pd

from .metrics import summarize
from .run_records import RunRecords

# column -> (summary key, heading, whether larger is better, format)
COLUMNS = (
    ("makespan_s", "makespan (s)", False, "{:,.1f}"),
    ("throughput_tokens_per_s", "throughput (tok/s)", True, "{:,.0f}"),
    ("speedup_vs_fcfs", "vs fcfs", True, "{:.2f}x"),
    ("prefill_token_saving", "prefill saved", True, "{:.3f}"),
    ("host_loaded_share", "from host", True, "{:.3f}"),  # shown where a host tier loaded anything
    ("session_s_mean", "session mean (s)", False, "{:,.2f}"),  # shown where the requests are sessions' turns
    ("ttft_s_p50", "TTFT p50 (s)", False, "{:,.2f}"),
    ("ttft_s_p99", "TTFT p99 (s)", False, "{:,.2f}"),
    ("tpot_ms_p50", "TPOT p50 (ms)", False, "{:,.1f}"),
    ("tpot_ms_p99", "TPOT p99 (ms)", False, "{:,.1f}"),
    ("peak_kv_gb", "peak KV (GB)", False, "{:,.2f}"),
    ("num_preemptions", "preemptions", False, "{:,}"),
)

# summary key -> what its column means, under the table of a report
MEANINGS = {
    "makespan_s": "first arrival to last finish",
    "throughput_tokens_per_s": "prompt and output tokens over the makespan",
    "speedup_vs_fcfs": "throughput over fcfs's in the same run",
    "prefill_token_saving": "share of the prompts' tokens not computed (1 - prompt tokens computed / prompt tokens): "
                            "cache hits and a group's prefix computed once save, preempted requests computed again "
                            "cost, so it falls below 0 where they cost more than the cache saved",
    "host_loaded_share": "share of the prompts' tokens loaded from host-memory KV instead of computed",
    "session_s_mean": "mean time from a session's (agent job's) first arrival to its last finish",
    "ttft_s_p50": "time to first token from arrival, median (p99: 99th percentile)",
    "tpot_ms_p50": "time per output token after the first, a request's mean, median over requests (p99 likewise)",
    "peak_kv_gb": "most KV cache in use at once",
    "num_preemptions": "times a running request lost its KV blocks (computed again, or reloaded, later)",
}


def column_legend(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """(heading, meaning) of each column the tables of ``frame`` show; a p99 column goes with
    its p50."""
    return [(heading, MEANINGS[key]) for key, heading, _, _ in shown_columns(frame) if key in MEANINGS]


def comparison_frame(runs: list[RunRecords]) -> pd.DataFrame:
    """Metrics recomputed from each run's requests and steps (not copied from summary.json)."""
    rows = []
    for run in runs:
        kv_bytes_per_block = run.summary.get("kv_bytes_per_block")
        for schedule in run.schedules():
            requests = run.requests[run.requests["schedule"] == schedule]
            steps = run.steps[run.steps["schedule"] == schedule]
            metrics = summarize(requests, steps)
            row = {"run": run.path.name, "schedule": schedule, "mode": run.summary.get("mode", "simulated"),
                   "hardware": run.summary.get("hardware"), "profile_kind": run.summary.get("profile_kind"), **metrics}
            row["tpot_ms_p50"] = metrics["tpot_s_p50"] * 1000
            row["tpot_ms_p99"] = metrics["tpot_s_p99"] * 1000
            row["peak_kv_gb"] = (metrics["peak_kv_blocks"] * kv_bytes_per_block / 1e9
                                 if kv_bytes_per_block else float("nan"))
            logical = metrics["prefill_tokens_logical"]
            row["host_loaded_share"] = metrics["host_loaded_tokens"] / logical if logical else float("nan")
            rows.append(row)
    frame = pd.DataFrame(rows)
    speedups = []
    for _, row in frame.iterrows():
        same_run = frame[(frame["run"] == row["run"]) & (frame["schedule"] == "fcfs")]
        base = same_run["throughput_tokens_per_s"].iloc[0] if len(same_run) else float("nan")
        speedups.append(row["throughput_tokens_per_s"] / base if base == base and base else float("nan"))
    frame["speedup_vs_fcfs"] = speedups
    return frame


def shown_columns(frame: pd.DataFrame) -> tuple:
    """COLUMNS, less the host tier's share where no run loaded anything from one, and the
    sessions' time where no run had sessions."""
    loaded, sessions = frame.get("host_loaded_share"), frame.get("session_s_mean")
    shown = {"host_loaded_share": loaded is not None and (loaded > 0).any(),
             "session_s_mean": sessions is not None and sessions.notna().any()}
    return tuple(c for c in COLUMNS if shown.get(c[0], True))


def best_rows(frame: pd.DataFrame) -> dict[str, set[int]]:
    """Row positions holding the best value of each column (ties all marked)."""
    best = {}
    for key, _, larger, _ in shown_columns(frame):
        values = frame[key].astype(float)
        finite = values[values.apply(lambda v: not math.isnan(v))]
        if finite.empty:
            best[key] = set()
            continue
        target = finite.max() if larger else finite.min()
        best[key] = {i for i, v in enumerate(values) if v == target}
    return best


def formatted_rows(frame: pd.DataFrame, marker: str = "**") -> list[list[str]]:
    """Heading row plus one row per schedule; the best value of each column wrapped in ``marker``."""
    best = best_rows(frame)
    multi_run = frame["run"].nunique() > 1
    columns = shown_columns(frame)
    header = (["run"] if multi_run else []) + ["schedule"] + [heading for _, heading, _, _ in columns]
    rows = [header]
    for position, (_, row) in enumerate(frame.iterrows()):
        cells = ([row["run"]] if multi_run else []) + [row["schedule"]]
        for key, _, _, fmt in columns:
            value = row[key]
            text = "-" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt.format(value)
            cells.append(f"{marker}{text}{marker}" if position in best[key] and text != "-" else text)
        rows.append(cells)
    return rows
