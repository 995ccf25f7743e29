"""``timeline.json`` in Chrome trace format (opens in Perfetto or chrome://tracing).

Steps are complete slices on one track per schedule (per replica, with data-parallel replicas), with their token counts and per-kernel
times as arguments; requests are async spans (queued, then running until finished). The file
is written row by row, so a million-step run never sits in memory as JSON.
"""
from __future__ import annotations

import json
from pathlib import Path

from .run_records import RunRecords

US = 1e6


def write_timeline(runs: list[RunRecords], path: Path, max_requests: int = 2000) -> Path:
    with path.open("w", encoding="utf-8") as out:
        out.write('{"displayTimeUnit": "ms", "traceEvents": [\n')
        first = [True]

        def emit(event: dict) -> None:
            out.write(("" if first[0] else ",\n") + json.dumps(event, separators=(",", ":")))
            first[0] = False

        for pid, run in enumerate(runs, 1):
            emit({"ph": "M", "name": "process_name", "pid": pid, "args": {"name": run.label}})
            tid = 0
            for schedule in run.schedules():
                steps = run.steps[run.steps["schedule"] == schedule]
                requests = run.requests[run.requests["schedule"] == schedule].head(max_requests)
                # data-parallel replicas run side by side: a track each, with their own requests
                split = "replica" in steps.columns and "replica" in requests.columns
                for replica in sorted(steps["replica"].unique()) if split else [None]:
                    tid += 1
                    track = f"{schedule} steps" if replica is None else f"{schedule} steps, replica {int(replica)}"
                    emit({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": track}})
                    mine = (lambda frame: frame) if replica is None else (lambda frame: frame[frame["replica"] == replica])
                    _emit_steps(emit, mine(steps), pid, tid)
                    _emit_requests(emit, mine(requests), schedule, pid, tid)
        out.write("\n]}\n")
    return path


def _emit_steps(emit, steps, pid: int, tid: int) -> None:
    kernel_columns = [c for c in steps.columns if c.startswith("kernel_")]
    columns = ["step", "start_s", "duration_s", "num_tokens", "num_prefill_tokens", "num_requests",
               "kv_blocks_used"] + kernel_columns
    for row in steps[columns].itertuples(index=False, name=None):
        step, start, duration, tokens, prefill, requests, kv = row[:7]
        args = {"tokens": int(tokens), "prefill_tokens": int(prefill), "requests": int(requests), "kv_blocks": int(kv)}
        args.update({name[7:-2]: round(value * 1e3, 4) for name, value in zip(kernel_columns, row[7:])})
        emit({"ph": "X", "name": f"step {int(step)}", "cat": "step", "pid": pid, "tid": tid,
              "ts": start * US, "dur": duration * US, "args": args})


def _emit_requests(emit, requests, schedule: str, pid: int, tid: int) -> None:
    for req in requests.itertuples(index=False):
        span = f"{schedule}:{req.req_id}"
        emit({"ph": "b", "cat": "request", "name": f"request {req.req_id}", "id": span, "pid": pid, "tid": tid,
              "ts": req.arrival_s * US, "args": {"prompt_len": int(req.prompt_len), "output_len": int(req.output_len)}})
        if req.first_token_s == req.first_token_s:
            emit({"ph": "n", "cat": "request", "name": "first token", "id": span, "pid": pid, "tid": tid,
                  "ts": req.first_token_s * US})
        if req.finish_s == req.finish_s:
            emit({"ph": "e", "cat": "request", "name": f"request {req.req_id}", "id": span, "pid": pid, "tid": tid,
                  "ts": req.finish_s * US})
