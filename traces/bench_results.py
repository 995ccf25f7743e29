"""Measured serving benchmarks as points ``batchlab calibrate`` fits the simulator to.

A point is one benchmark run: how many requests of which lengths were sent how (a client pool
of ``concurrency`` requests in flight, as ``vllm bench serve --max-concurrency`` keeps; a
Poisson rate; or all at once), and what was measured: output tokens/s, the run's duration, and
the medians of TTFT, TPOT and end-to-end latency. Two sources:

- the result JSON ``vllm bench serve --save-result`` writes (one object a file, one a line
  with ``--append-result``, or a list of them): ``num_prompts``/``completed``, ``max_concurrency``,
  ``request_rate``, ``total_input_tokens``/``total_output_tokens`` (the per-request
  ``input_lens``/``output_lens`` where ``--save-detailed`` kept them), ``output_throughput``,
  ``duration``, ``median_ttft_ms``, ``median_tpot_ms``, ``median_e2el_ms``;
- a CSV, one row a run (``#`` lines are comments, for where the figures came from):
  ``input_len``, ``output_len``, ``num_prompts`` (required), ``concurrency``, ``request_rate``
  (requests/s; absent or ``inf``: all at once), and any of ``output_tokens_per_s``,
  ``duration_s``, ``ttft_ms_p50``, ``tpot_ms_p50`` (or ``itl_ms_p50``), ``e2e_ms_p50``.

Prompts are distinct (the random dataset shares no prefix), unless the point says how vLLM's
``prefix_repetition`` dataset shared them: ``prefix_len`` and ``num_prefixes`` (CSV columns, or
in the JSON through ``--metadata prefix_len=P num_prefixes=N``): each of ``num_prefixes``
prefixes starts an equal share of the prompts, ``input_len`` tokens long in all, in an order
shuffled with the seed (vLLM shuffles too, with its own). A point may name the model preset
served (``model``: CSV column or ``--metadata model=...``), so that one calibration covers
several models on one GPU: what one model cannot tell apart (bandwidth from per-step host work,
each decode step reading the same weights), two sizes can. Every error names the file, the line
and what was expected.
"""
from __future__ import annotations

import csv
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

from scheduler import Request
from scheduler.model_spec import MODEL_PRESETS

from .arrivals import with_arrivals
from .errors import TraceError
from .workload import Workload

# what a point may measure, in seconds and tokens/s
METRICS = ("output_tokens_per_s", "makespan_s", "ttft_s_p50", "tpot_s_p50", "e2e_s_p50")
METRIC_LABELS = {"output_tokens_per_s": "output tok/s", "makespan_s": "duration s", "ttft_s_p50": "TTFT p50 ms",
                 "tpot_s_p50": "TPOT p50 ms", "e2e_s_p50": "E2E p50 ms"}
# CSV column -> (metric, factor to SI)
CSV_METRICS = {"output_tokens_per_s": ("output_tokens_per_s", 1.0), "duration_s": ("makespan_s", 1.0),
               "ttft_ms_p50": ("ttft_s_p50", 1e-3), "tpot_ms_p50": ("tpot_s_p50", 1e-3),
               "itl_ms_p50": ("tpot_s_p50", 1e-3), "e2e_ms_p50": ("e2e_s_p50", 1e-3)}
# vLLM result key -> (metric, factor), the first found of a metric taken; SGLang's bench_serving
# (one result a line) names end-to-end latency differently and may give inter-token latency only
VLLM_METRICS = {"output_throughput": ("output_tokens_per_s", 1.0), "duration": ("makespan_s", 1.0),
                "median_ttft_ms": ("ttft_s_p50", 1e-3), "median_tpot_ms": ("tpot_s_p50", 1e-3),
                "median_itl_ms": ("tpot_s_p50", 1e-3),
                "median_e2el_ms": ("e2e_s_p50", 1e-3), "median_e2e_latency_ms": ("e2e_s_p50", 1e-3)}


@dataclass(frozen=True)
class BenchPoint:
    source: str                     # "file" or "file:line"
    input_lens: tuple[int, ...]     # one per request
    output_lens: tuple[int, ...]
    concurrency: int | None         # requests kept in flight by the client; None: not capped
    request_rate: float             # requests/s; inf: all sent at once (or as the pool allows)
    measured: dict = field(default_factory=dict)  # METRICS -> value
    prefix_len: int = 0             # tokens of a shared prefix (vLLM's prefix_repetition); 0: none
    num_prefixes: int = 0           # distinct prefixes, each starting an equal share of the prompts
    model: str | None = None        # the model preset served, where not the calibration's model

    @property
    def label(self) -> str:
        lengths = f"{_mean(self.input_lens):g}/{_mean(self.output_lens):g}"
        if self.prefix_len:
            lengths += f" ({self.num_prefixes} x prefix {self.prefix_len})"
        if self.model:
            lengths += f" {self.model}"
        if self.concurrency is not None:
            return f"C={self.concurrency} {lengths}"
        if math.isinf(self.request_rate):
            return f"batch of {len(self.input_lens)} {lengths}"
        return f"{self.request_rate:g} req/s {lengths}"

    def workload(self, think_s: float = 0.0, seed: int = 0) -> Workload:
        """The benchmark as a workload: distinct prompts; a closed loop whose clients wait
        ``think_s`` between a response and their next request, Poisson arrivals, or a batch."""
        count = len(self.input_lens)
        if self.prefix_len:  # prefix g is segment count + g; the prompts' own parts are segments 0..count-1
            groups = [g for g in range(self.num_prefixes) for _ in range(count // self.num_prefixes)]
            random.Random(seed).shuffle(groups)
            prompts = [((count + g, self.prefix_len), (i, n - self.prefix_len))
                       for i, (g, n) in enumerate(zip(groups, self.input_lens))]
        else:
            prompts = [((i, n),) for i, n in enumerate(self.input_lens)]
        requests = tuple(Request(i, 0.0, prompt, m) for i, (prompt, m) in enumerate(zip(prompts, self.output_lens)))
        workload = Workload(f"bench {self.label}", requests, source=self.source)
        if self.concurrency is not None:
            return with_arrivals(workload, "closed", clients=self.concurrency, think_s=think_s)
        if math.isinf(self.request_rate):
            return workload
        return with_arrivals(workload, "poisson", rate=self.request_rate, seed=seed)


def _mean(values) -> float:
    return round(sum(values) / len(values), 1)


def read_bench_points(paths) -> list[BenchPoint]:
    """The points in the given files, in order (``.csv``: rows; anything else: vLLM JSON)."""
    points: list[BenchPoint] = []
    for path in map(Path, paths):
        if not path.exists():
            raise TraceError(path, None, "no such file")
        points.extend(_csv_points(path) if path.suffix.lower() == ".csv" else _vllm_points(path))
    if not points:
        raise TraceError(", ".join(map(str, paths)) or "measurements", None, "no benchmark points in these files")
    return points


def _number(path, line, name, value, integer=False, positive=True):
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TraceError(path, line, f"{name} is {value!r}; expected a number") from None
    if integer and not (number.is_integer() and number >= 1):
        raise TraceError(path, line, f"{name} is {value!r}; expected a whole number >= 1")
    if math.isnan(number) or (positive and not number > 0):
        raise TraceError(path, line, f"{name} is {value!r}; expected a number > 0")
    return int(number) if integer else number


def _point(path, line, input_lens, output_lens, concurrency, rate, measured, sharing=(None, None),
           model=None) -> BenchPoint:
    prefix_len, num_prefixes = sharing
    if model is not None and model not in MODEL_PRESETS:
        raise TraceError(path, line, f"model {model!r} is no model preset; expected one of {sorted(MODEL_PRESETS)}")
    if (prefix_len is None) != (num_prefixes is None):
        raise TraceError(path, line, "prefix_len and num_prefixes go together (vLLM's prefix_repetition dataset); "
                                     "give both or neither")
    if prefix_len is not None:
        prefix_len = _number(path, line, "prefix_len", prefix_len, integer=True)
        num_prefixes = _number(path, line, "num_prefixes", num_prefixes, integer=True)
        if len(input_lens) % num_prefixes or min(input_lens) <= prefix_len:
            raise TraceError(path, line, f"{len(input_lens)} prompts of {min(input_lens)}+ tokens cannot share "
                                         f"{num_prefixes} prefixes of {prefix_len} tokens equally; expected a "
                                         f"multiple of num_prefixes, each prompt longer than its prefix")
    if not measured:
        raise TraceError(path, line, f"nothing measured; expected any of {sorted(CSV_METRICS)} (CSV) or "
                                     f"{sorted(VLLM_METRICS)} (vLLM result JSON)")
    if concurrency is not None and not math.isinf(rate):
        raise TraceError(path, line, f"a client pool (concurrency {concurrency}) sending at a capped rate "
                                     f"({rate:g}/s) is not modelled; expected one of the two")
    source = f"{path}:{line}" if line is not None else str(path)
    return BenchPoint(source, tuple(input_lens), tuple(output_lens), concurrency, rate, measured,
                      prefix_len or 0, num_prefixes or 0, model)


def _csv_points(path: Path) -> list[BenchPoint]:
    with path.open(encoding="utf-8-sig", newline="") as handle:  # -sig: a spreadsheet's byte-order mark
        numbered = [(n, text) for n, text in enumerate(handle, 1) if text.strip() and not text.lstrip().startswith("#")]
    if not numbered:
        raise TraceError(path, None, "no header line; expected input_len,output_len,num_prompts,...")
    rows = csv.DictReader(text for _, text in numbered)
    rows.fieldnames = header = [name.strip() for name in (rows.fieldnames or [])]
    for needed in ("input_len", "output_len", "num_prompts"):
        if needed not in header:
            raise TraceError(path, numbered[0][0], f"no column {needed!r}; the header has {header}")
    known = {"input_len", "output_len", "num_prompts", "concurrency", "request_rate", "prefix_len", "num_prefixes",
             "model", *CSV_METRICS}
    unknown = [name for name in header if name not in known]
    if unknown:
        raise TraceError(path, numbered[0][0], f"unknown columns {unknown}; expected some of {sorted(known)}")
    points = []
    for (line, _), row in zip(numbered[1:], rows):
        count = _number(path, line, "num_prompts", row["num_prompts"], integer=True)
        lengths = [_number(path, line, name, row[name], integer=True) for name in ("input_len", "output_len")]
        cell = (row.get("concurrency") or "").strip()
        concurrency = _number(path, line, "concurrency", cell, integer=True) if cell else None
        cell = (row.get("request_rate") or "").strip()
        rate = _number(path, line, "request_rate", cell) if cell and cell != "inf" else math.inf
        measured = {}
        for column, (metric, factor) in CSV_METRICS.items():
            cell = (row.get(column) or "").strip()
            if cell:
                measured[metric] = _number(path, line, column, cell) * factor
        sharing = tuple((row.get(name) or "").strip() or None for name in ("prefix_len", "num_prefixes"))
        points.append(_point(path, line, [lengths[0]] * count, [lengths[1]] * count, concurrency, rate, measured,
                             sharing, (row.get("model") or "").strip() or None))
    return points


def _vllm_points(path: Path) -> list[BenchPoint]:
    text = path.read_text(encoding="utf-8")
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:  # --append-result: one object a line
        from .errors import json_lines
        records = list(json_lines(path))
    else:  # one result, or a list of them (a sweep gathered in one file: each named by its index)
        records = [(f"[{i}]", r) for i, r in enumerate(parsed)] if isinstance(parsed, list) else [(None, parsed)]
    return [_vllm_point(path, line, record) for line, record in records]


def _vllm_point(path: Path, line, record) -> BenchPoint:
    if not isinstance(record, dict):
        raise TraceError(path, line, "expected a JSON object (the result vllm bench serve --save-result writes)")
    completed = record.get("completed", record.get("num_prompts"))
    if completed is None:
        raise TraceError(path, line, "no 'completed' or 'num_prompts'; expected a vllm bench serve result")
    count = _number(path, line, "completed", completed, integer=True)
    failed = record.get("failed") or 0
    if failed:
        raise TraceError(path, line, f"{failed} requests failed; a run with failures does not measure the server")
    if isinstance(record.get("input_lens"), list) and isinstance(record.get("output_lens"), list):
        inputs = [_number(path, line, "input_lens[]", n, integer=True) for n in record["input_lens"]]
        outputs = [_number(path, line, "output_lens[]", n, integer=True) for n in record["output_lens"]]
        if not len(inputs) == len(outputs) == count:
            raise TraceError(path, line, f"{len(inputs)} input_lens and {len(outputs)} output_lens for {count} "
                                         f"completed requests; expected one of each a request")
    else:  # without --save-detailed: the totals, spread evenly (the random dataset's lengths are fixed)
        totals = []
        for name in ("total_input_tokens", "total_output_tokens"):
            if name not in record:
                raise TraceError(path, line, f"no {name!r} (nor input_lens/output_lens); expected a vllm bench "
                                             f"serve result")
            totals.append(_number(path, line, name, record[name]))
        inputs = [max(1, round(totals[0] / count))] * count
        outputs = [max(1, round(totals[1] / count))] * count
    concurrency = record.get("max_concurrency")
    concurrency = None if concurrency is None else _number(path, line, "max_concurrency", concurrency, integer=True)
    rate = record.get("request_rate", "inf")
    rate = math.inf if rate in ("inf", None) else _number(path, line, "request_rate", rate)
    burstiness = record.get("burstiness", 1.0)
    if not math.isinf(rate) and burstiness not in (None, 1, 1.0):
        raise TraceError(path, line, f"burstiness {burstiness!r}: only Poisson arrivals (burstiness 1) are modelled")
    measured = {}
    for key, (metric, factor) in VLLM_METRICS.items():
        if record.get(key) is not None and metric not in measured:
            measured[metric] = _number(path, line, key, record[key]) * factor
    return _point(path, line, inputs, outputs, concurrency, rate, measured,
                  (record.get("prefix_len"), record.get("num_prefixes")), record.get("model"))
