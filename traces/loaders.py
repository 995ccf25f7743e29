"""Loaders for real trace formats. Every error names the file and line and what was expected.

- Mooncake JSONL (FAST'25): ``timestamp`` (ms), ``input_length``, ``output_length``,
  ``hash_ids`` (one id per 512-token block, the last block partial);
- Azure LLM inference 2023 CSV (Splitwise, ISCA'24): ``TIMESTAMP``, ``ContextTokens``,
  ``GeneratedTokens`` (no prefix information: every prompt is one segment of its own);
- Vidur / Sarathi length CSVs: ``num_prefill_tokens``, ``num_decode_tokens``, optional
  ``arrived_at`` (seconds); without it every request arrives at t=0.
"""
from __future__ import annotations

import csv
import math
import warnings
from datetime import datetime, timezone
from itertools import repeat
from pathlib import Path

from scheduler import Request
from scheduler.errors import WorkloadError

from .errors import TraceError, json_lines
from .workload import Workload

MOONCAKE_BLOCK = 512
_UNIQUE_BASE = 1 << 42  # segment ids for prompts that share nothing


def _int_field(record: dict, name: str, path: Path, line: int, minimum: int) -> int:
    if name not in record:
        raise TraceError(path, line, f"missing field {name!r}")
    return _int_value(record[name], name, path, line, minimum)


def _int_value(value, name: str, path: Path, line: int, minimum: int) -> int:
    try:
        number = int(value)
        if isinstance(value, float) and value != number:
            raise ValueError
    except (TypeError, ValueError):
        raise TraceError(path, line, f"field {name!r} is {value!r}; expected an integer") from None
    if number < minimum:
        raise TraceError(path, line, f"field {name!r} is {number}; expected an integer >= {minimum}")
    return number


def _sorted_by_arrival(rows: list[tuple[float, int, tuple, int]], path: Path, notes: list[str]):
    if any(rows[i][0] > rows[i + 1][0] for i in range(len(rows) - 1)):
        message = f"{path}: timestamps are not sorted; requests were sorted by arrival time"
        warnings.warn(message, stacklevel=3)
        notes.append(message)
        rows.sort(key=lambda row: (row[0], row[1]))
    return rows


def _build(rows, path: Path, name: str, notes: list[str]) -> Workload:
    rows = _sorted_by_arrival(rows, path, notes)
    start = rows[0][0] if rows else 0.0
    requests = []
    for req_id, (arrival, line, prompt, output_len) in enumerate(rows):
        try:
            requests.append(Request(req_id, arrival - start, prompt, output_len))
        except WorkloadError as error:
            raise TraceError(path, line, str(error)) from None
    return Workload(name, tuple(requests), str(path), tuple(notes))


def _open_lines(path: Path):
    if not path.exists():
        raise TraceError(path, None, "no such file")
    return path.open("r", encoding="utf-8")


def load_mooncake(path: str | Path, block_size: int = MOONCAKE_BLOCK) -> Workload:
    path = Path(path)
    rows, notes = [], []
    for line, record in json_lines(path):
        timestamp = record.get("timestamp")
        if not isinstance(timestamp, (int, float)) or isinstance(timestamp, bool) or timestamp < 0:
            raise TraceError(path, line, f"field 'timestamp' is {timestamp!r}; expected milliseconds >= 0")
        input_length = _int_field(record, "input_length", path, line, 1)
        output_length = _int_field(record, "output_length", path, line, 1)
        hash_ids = record.get("hash_ids")
        if not isinstance(hash_ids, list) or (set(map(type, hash_ids)) != {int}  # plain ints: a C-level check
                                              and not all(isinstance(h, int) for h in hash_ids)):
            raise TraceError(path, line, "field 'hash_ids' must be a list of integers")
        if len(hash_ids) != math.ceil(input_length / block_size):
            raise TraceError(path, line, f"{len(hash_ids)} hash_ids for input_length {input_length}; "
                                         f"expected ceil({input_length}/{block_size}) = "
                                         f"{math.ceil(input_length / block_size)}")
        last = input_length - block_size * (len(hash_ids) - 1)
        prompt = tuple(zip(hash_ids[:-1], repeat(block_size))) + ((hash_ids[-1], last),)
        rows.append((timestamp / 1000.0, line, prompt, output_length))
    return _build(rows, path, f"mooncake:{path.stem}", notes)


def _require_columns(header, path: Path, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
    """A TraceError naming the missing columns unless ``header`` has every ``required`` one."""
    missing = set(required) - set(header or ())
    if missing:
        wanted = ", ".join(required) + (f" and optionally {', '.join(optional)}" if optional else "")
        raise TraceError(path, 1, f"missing column(s) {sorted(missing)}; expected {wanted}")


def _csv_reader(handle, path: Path, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> csv.DictReader:
    """A reader whose header has every ``required`` column (or a TraceError naming the missing)."""
    reader = csv.DictReader(handle)
    _require_columns(reader.fieldnames, path, required, optional)
    return reader


def _azure_seconds(stamp: str, minutes: dict[str, int]) -> float:
    """Seconds since the epoch of an Azure ``TIMESTAMP`` (UTC, 7 fractional digits: one more
    than ``datetime`` parses). Each minute is parsed once and its seconds and fraction added,
    the same float sums as parsing every stamp whole. ValueError if it is not a date-time."""
    head, _, fraction = stamp.strip().partition(".")
    if fraction and not (fraction.isascii() and fraction.isdigit()):
        raise ValueError(stamp)
    seconds = head[17:]
    if len(head) == 19 and head[16] == ":" and seconds.isascii() and seconds.isdigit() and seconds < "60":
        minute = minutes.get(head[:16])
        if minute is None:
            minute = int(datetime.fromisoformat(head[:16]).replace(tzinfo=timezone.utc).timestamp())
            minutes[head[:16]] = minute
        moment = float(minute + int(seconds))
    else:
        moment = datetime.fromisoformat(head).replace(tzinfo=timezone.utc).timestamp()
    return moment + float("0." + fraction) if fraction else moment


def load_azure(path: str | Path) -> Workload:
    path = Path(path)
    rows, notes, minutes = [], [], {}
    columns = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
    with _open_lines(path) as handle:
        reader = csv.reader(handle)
        header = next(reader, [])
        _require_columns(header, path, columns)
        when, contexts, outputs = (header.index(name) for name in columns)
        width = max(when, contexts, outputs) + 1
        for row in reader:
            if not row:
                continue  # a blank line
            line = reader.line_num
            if len(row) < width:
                raise TraceError(path, line, f"{len(row)} fields; expected {len(header)} ({', '.join(header)})")
            stamp = row[when]
            try:
                moment = _azure_seconds(stamp, minutes)
            except ValueError:
                raise TraceError(path, line, f"TIMESTAMP {stamp!r} is not a date-time "
                                             f"like 2023-11-16 18:15:46.6805900") from None
            try:  # the common case in one go; a bad value gets its own message below
                context, generated = int(row[contexts]), int(row[outputs])
                if context < 1 or generated < 1:
                    raise ValueError
            except ValueError:
                context = _int_value(row[contexts], "ContextTokens", path, line, 1)
                generated = _int_value(row[outputs], "GeneratedTokens", path, line, 1)
            rows.append((moment, line, ((_UNIQUE_BASE + line, context),), generated))
    return _build(rows, path, f"azure:{path.stem}", notes)


def load_length_csv(path: str | Path) -> Workload:
    """Vidur/Sarathi length files (ShareGPT, arXiv summarisation)."""
    path = Path(path)
    rows, notes = [], []
    with _open_lines(path) as handle:
        reader = _csv_reader(handle, path, ("num_prefill_tokens", "num_decode_tokens"), ("arrived_at",))
        timed = "arrived_at" in (reader.fieldnames or ())
        for line, record in enumerate(reader, 2):
            prefill = _int_field(record, "num_prefill_tokens", path, line, 1)
            decode = _int_field(record, "num_decode_tokens", path, line, 1)
            arrival = 0.0
            if timed:
                try:
                    arrival = float(record["arrived_at"])
                except (TypeError, ValueError):
                    raise TraceError(path, line, f"arrived_at is {record['arrived_at']!r}; expected seconds") from None
                if not arrival >= 0:
                    raise TraceError(path, line, f"arrived_at is {arrival}; expected seconds >= 0")
            rows.append((arrival, line, ((_UNIQUE_BASE + line, prefill),), decode))
    return _build(rows, path, f"lengths:{path.stem}", notes)
