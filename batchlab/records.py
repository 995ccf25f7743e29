"""Run directories: the resolved config, requests.parquet, steps.parquet and summary.json.

Each schedule's records are written as soon as that schedule finishes, into
``parts/<schedule>/``; the combined files are rebuilt after every schedule, so an interrupted
run keeps every finished schedule (and the steps flushed so far of the one that was running).
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np

from reports.metrics import summarize
from scheduler.gc_pause import cyclic_gc_paused
from traces.columns import read_parquet, write_parquet

REQUEST_COLUMNS = ("req_id", "arrival_s", "prompt_len", "output_len", "first_scheduled_s", "first_token_s",
                   "finish_s", "num_cached_tokens", "num_prompt_tokens_computed", "num_preemptions")
_TIME_COLUMNS = ("arrival_s", "first_scheduled_s", "first_token_s", "finish_s")


def request_columns(scheduler, schedule: str, sessions=None) -> dict[str, np.ndarray]:
    """The requests table of a finished (or interrupted) run, by request id: times in float64
    (NaN where there is none yet), counts in int64, the schedule's name first, ``admission``
    (``admission_ranks``) after the counts. ``sessions``
    (``Workload.sessions``): a ``session`` column, each request's session (its index)."""
    states = sorted((s for s in scheduler.states.values() if s.request is not None), key=lambda s: s.req_id)
    columns: dict[str, np.ndarray] = {"schedule": np.full(len(states), schedule, dtype=object)}
    for name in REQUEST_COLUMNS:
        if name in _TIME_COLUMNS:
            columns[name] = np.array([np.nan if v is None else v for v in (getattr(s, name) for s in states)],
                                     dtype=np.float64)
        else:
            columns[name] = np.array([getattr(s, name) for s in states], dtype=np.int64)
    columns["admission"] = admission_ranks([s.first_admission for s in states])
    if sessions is not None:
        session_of = {req_id: index for index, turns in enumerate(sessions) for req_id in turns}
        columns["session"] = np.array([session_of.get(s.req_id, -1) for s in states], dtype=np.int64)
    return columns


def admission_ranks(first_admissions) -> np.ndarray:
    """Each request's place (0, 1, ...) in the order the schedule first admitted them, -1 for
    one never admitted: the order in which to hand the batch to an engine that serves in arrival
    order (``batchlab order``). Group prefixes, not requests, take no place."""
    seq = np.asarray(first_admissions, dtype=np.int64)
    ranks = np.full(len(seq), -1, dtype=np.int64)
    admitted = np.flatnonzero(seq >= 0)
    ranks[admitted[np.argsort(seq[admitted], kind="stable")]] = np.arange(len(admitted))
    return ranks


def requests_frame(scheduler, schedule: str, sessions=None):
    """``request_columns`` as a pandas DataFrame."""
    import pandas as pd

    return pd.DataFrame(request_columns(scheduler, schedule, sessions))


def outcome_summary(outcome) -> dict:
    """The summary.json entry (``reports.metrics.summarize``) of one simulated schedule."""
    return summarize(request_columns(outcome.scheduler, outcome.schedule), outcome.steps.columns())


def _as_columns(table) -> dict[str, np.ndarray]:
    """A pandas DataFrame or a mapping of arrays as a mapping of numpy arrays."""
    return {name: np.asarray(table[name]) for name in (table.columns if hasattr(table, "columns") else table)}


def finite_json(value):
    """``value`` with NaN and infinities (nested in dicts and lists too) as None, for JSON."""
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def run_meta(workload, model, *, mode: str, hardware: str, profile_kind: str, profile: str, provenance: dict,
             kv_blocks: int, block_size: int, kv_bytes_per_block: int | None = None) -> dict:
    """What a run directory's summary.json says about where its numbers came from."""
    from batchlab import __version__
    from scheduler._compiled import compiled
    from scheduler.kv_blocks import BlockManager, NativeBlockManager

    meta = {"batchlab_version": __version__, "mode": mode, "workload": workload.name,
            # the wall times depend on them (the records do not)
            "kv_block_manager": "compiled" if BlockManager is NativeBlockManager else "python",
            "profile_lookup": "compiled" if compiled("Bilinear", "sim._interp") else "python",
            "workload_source": workload.source, "workload_notes": list(workload.notes),
            "num_requests": len(workload), "workload_offline": workload.is_offline,  # sent at once
            "model": model.name, "hardware": hardware,
            "profile_kind": profile_kind, "profile": profile, "profile_provenance": provenance,
            "kv_capacity_blocks": kv_blocks, "block_size": block_size,
            "kv_bytes_per_block": kv_bytes_per_block or model.kv_bytes_per_token * block_size}
    source = Path(workload.source)
    if source.is_file():  # what it was when read: batchlab order refuses a file changed since
        stat = source.stat()
        meta["workload_file"] = {"path": str(source.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return meta


class RunWriter:
    def __init__(self, run_dir: Path, meta: dict) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.meta = meta
        self.summaries: dict[str, dict] = {}
        self._combined: list[str] = []  # the schedules requests/steps.parquet hold now

    def step_dir(self, schedule: str) -> Path:
        return self.run_dir / "parts" / schedule / "steps"

    def add(self, schedule: str, requests, steps, extra: dict) -> dict:
        """One finished schedule's records (tables as mappings of numpy arrays, or pandas
        DataFrames): its part files, its summary, and the combined files rebuilt."""
        # the simulation's objects, still alive here, are all young to the collector (it was
        # paused while they were made): its passes over them while pyarrow is imported and the
        # tables are built took half of this (Azure replay: 0.14-0.23 s -> 0.08-0.10 s)
        with cyclic_gc_paused():
            return self._add(schedule, requests, steps, extra)

    def _add(self, schedule: str, requests, steps, extra: dict) -> dict:
        part = self.run_dir / "parts" / schedule
        part.mkdir(parents=True, exist_ok=True)
        requests = _as_columns(requests)
        write_parquet(requests, part / "requests.parquet")
        steps = _as_columns(steps)
        num_steps = len(next(iter(steps.values()))) if steps else 0
        steps = {"schedule": np.full(num_steps, schedule, dtype=object), **steps}
        if self.step_dir(schedule).exists():
            shutil.rmtree(self.step_dir(schedule))
        write_parquet(steps, part / "steps.parquet")
        summary = summarize(requests, steps)
        summary.update(extra)
        self.summaries[schedule] = summary
        self.write(complete=False)
        return summary

    def write(self, complete: bool) -> None:
        names = list(self.summaries)
        if names and names != self._combined:  # the combined files already hold these schedules
            for kind in ("requests", "steps"):
                parts = [self.run_dir / "parts" / n / f"{kind}.parquet" for n in names]
                if len(parts) == 1:  # the part is the combined file
                    shutil.copyfile(parts[0], self.run_dir / f"{kind}.parquet")
                else:
                    import pyarrow as pa
                    import pyarrow.parquet as pq

                    tables = [read_parquet(p) for p in parts]
                    pq.write_table(pa.concat_tables(tables, promote_options="default"),
                                   self.run_dir / f"{kind}.parquet")
            self._combined = names
        summary = dict(self.meta)
        summary["complete"] = complete
        summary["schedules"] = finite_json(self.summaries)
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        if complete and (self.run_dir / "parts").exists():
            shutil.rmtree(self.run_dir / "parts")
