"""batchlab's own workload format, JSONL and Parquet, which round-trips exactly.

JSONL, one request per line: ``{"req_id": 0, "arrival_s": 0.0, "prompt": [[segment_id, length],
...], "output_len": 100}``. Parquet: columns ``req_id``, ``arrival_s``, ``segment_ids`` and
``segment_lens`` (lists of int64), ``output_len``.
"""
from __future__ import annotations

import json
from pathlib import Path

from scheduler import Request
from scheduler.errors import WorkloadError

from .errors import TraceError, json_lines
from .workload import Workload


def save_jsonl(workload: Workload, path: str | Path) -> None:
    with Path(path).open("w", encoding="utf-8") as handle:
        for r in workload.requests:
            handle.write(json.dumps({"req_id": r.req_id, "arrival_s": r.arrival_s,
                                     "prompt": [list(segment) for segment in r.prompt],
                                     "output_len": r.output_len}) + "\n")


def load_jsonl(path: str | Path) -> Workload:
    path = Path(path)
    requests = []
    for line, record in json_lines(path):
        missing = {"req_id", "arrival_s", "prompt", "output_len"} - set(record)
        if missing:
            raise TraceError(path, line, f"missing field(s) {sorted(missing)}")
        try:
            prompt = tuple(tuple(segment) for segment in record["prompt"])
            requests.append(Request(record["req_id"], float(record["arrival_s"]), prompt, record["output_len"]))
        except (TypeError, ValueError, WorkloadError) as error:
            raise TraceError(path, line, str(error)) from None
    return _checked(Workload(f"jsonl:{path.stem}", tuple(requests), str(path)), path)


def save_parquet(workload: Workload, path: str | Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    requests = workload.requests
    table = pa.table({
        "req_id": pa.array([r.req_id for r in requests], pa.int64()),
        "arrival_s": pa.array([r.arrival_s for r in requests], pa.float64()),
        "segment_ids": pa.array([[s for s, _ in r.prompt] for r in requests], pa.list_(pa.int64())),
        "segment_lens": pa.array([[n for _, n in r.prompt] for r in requests], pa.list_(pa.int64())),
        "output_len": pa.array([r.output_len for r in requests], pa.int64()),
    })
    pq.write_table(table, path)


def load_parquet(path: str | Path) -> Workload:
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        raise TraceError(path, None, "no such file")
    try:
        columns = pq.read_table(path).to_pydict()
    except Exception as error:  # pyarrow raises several types for a damaged file
        raise TraceError(path, None, f"not a readable Parquet file ({error})") from None
    missing = {"req_id", "arrival_s", "segment_ids", "segment_lens", "output_len"} - set(columns)
    if missing:
        raise TraceError(path, None, f"missing column(s) {sorted(missing)}")
    requests = []
    for row, req_id in enumerate(columns["req_id"]):
        try:
            prompt = tuple(zip(columns["segment_ids"][row], columns["segment_lens"][row]))
            requests.append(Request(req_id, columns["arrival_s"][row], prompt, columns["output_len"][row]))
        except (TypeError, WorkloadError) as error:
            raise TraceError(path, None, f"row {row}: {error}") from None
    return _checked(Workload(f"parquet:{path.stem}", tuple(requests), str(path)), path)


def _checked(workload: Workload, path: Path) -> Workload:
    seen: set[int] = set()
    for r in workload.requests:
        if r.req_id in seen:
            raise TraceError(path, None, f"request id {r.req_id} appears twice")
        seen.add(r.req_id)
    return workload
