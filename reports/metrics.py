"""Metrics from run records (requests and steps tables), the same for simulated and measured runs."""
from __future__ import annotations

import numpy as np

SUMMARY_KEYS = ("makespan_s", "throughput_tokens_per_s", "output_tokens_per_s", "prefill_tokens_logical",
                "prefill_tokens_computed", "prefill_token_saving", "ttft_s_p50", "ttft_s_p99", "tpot_s_p50",
                "tpot_s_p99", "e2e_s_p50", "e2e_s_p99", "peak_kv_blocks", "num_steps", "num_preemptions",
                "num_requests", "host_loaded_tokens")


def _column(table, name: str) -> np.ndarray:
    """A column of a pandas DataFrame or of a mapping of numpy arrays (run records as written)."""
    return np.asarray(table[name])


def _floats(table, name: str) -> np.ndarray:
    """A time column as float64 (a missing time is NaN in the records)."""
    return _column(table, name).astype(np.float64, copy=False)


def latency_columns(requests) -> dict[str, np.ndarray]:
    """TTFT, TPOT (per output token after the first) and end-to-end latency per request, NaN
    where a request has none (no first token yet; one output token has no TPOT)."""
    arrival, first, finish = (_floats(requests, name) for name in ("arrival_s", "first_token_s", "finish_s"))
    output = _column(requests, "output_len")
    decode_tokens = np.where(output > 1, output - 1, np.nan)
    return {"ttft_s": first - arrival, "tpot_s": (finish - first) / decode_tokens, "e2e_s": finish - arrival}


def request_latencies(requests):
    """``latency_columns`` as a pandas DataFrame with the requests' ids."""
    import pandas as pd

    return pd.DataFrame({"req_id": _column(requests, "req_id"), **latency_columns(requests)})


def _percentile(values: np.ndarray, q: float) -> float:
    values = values[~np.isnan(values)]
    return float(np.percentile(values, q)) if len(values) else float("nan")


def _finite_extreme(values: np.ndarray, pick) -> float:
    values = values[~np.isnan(values)]  # as pandas' min and max skip NaN
    return float(pick(values)) if len(values) else float("nan")


def summarize(requests, steps) -> dict:
    """One schedule's summary from its records (pandas DataFrames, or mappings of numpy
    arrays). Makespan runs from the first arrival to the last finish; throughput counts prompt
    and output tokens over it."""
    latencies = latency_columns(requests)
    num_requests = len(_column(requests, "req_id"))
    num_steps = len(_column(steps, "num_prefill_tokens"))
    start = _finite_extreme(_floats(requests, "arrival_s"), np.min) if num_requests else 0.0
    makespan = _finite_extreme(_floats(requests, "finish_s"), np.max) - start if num_requests else 0.0
    prompt = int(_column(requests, "prompt_len").sum())
    output = int(_column(requests, "output_len").sum())
    # every token of a prefill chunk: group prefixes and recomputation after preemption included
    computed = int(_column(steps, "num_prefill_tokens").sum()) if num_steps else 0
    return {
        "makespan_s": makespan,
        "throughput_tokens_per_s": (prompt + output) / makespan if makespan > 0 else float("nan"),
        "output_tokens_per_s": output / makespan if makespan > 0 else float("nan"),
        "prefill_tokens_logical": prompt,
        "prefill_tokens_computed": computed,
        "prefill_token_saving": 1.0 - computed / prompt if prompt else 0.0,
        "ttft_s_p50": _percentile(latencies["ttft_s"], 50), "ttft_s_p99": _percentile(latencies["ttft_s"], 99),
        "tpot_s_p50": _percentile(latencies["tpot_s"], 50), "tpot_s_p99": _percentile(latencies["tpot_s"], 99),
        "e2e_s_p50": _percentile(latencies["e2e_s"], 50), "e2e_s_p99": _percentile(latencies["e2e_s"], 99),
        "peak_kv_blocks": int(_column(steps, "kv_blocks_used").max()) if num_steps else 0,
        "num_steps": num_steps,
        "num_preemptions": int(_column(requests, "num_preemptions").sum()),
        "num_requests": num_requests,
        # prompt tokens loaded from a host-memory tier (within the saving); records without the
        # column (written before it existed) had no tier
        "host_loaded_tokens": int(_column(steps, "num_loaded_tokens").sum())
        if num_steps and "num_loaded_tokens" in steps else 0,
        **(session_times(requests) if "session" in requests else {}),
    }


def session_times(requests) -> dict:
    """Sessions' (agents' jobs') times, from the first turn's arrival to the last turn's finish:
    mean, p50 and p99 over the sessions that finished (records with a ``session`` column)."""
    session = _column(requests, "session")
    arrival, finish = _floats(requests, "arrival_s"), _floats(requests, "finish_s")
    keep = session >= 0
    ids, where = np.unique(session[keep], return_inverse=True)
    first, last = np.full(len(ids), np.inf), np.full(len(ids), -np.inf)
    np.minimum.at(first, where, arrival[keep])
    np.maximum.at(last, where, np.where(np.isnan(finish[keep]), np.inf, finish[keep]))  # unfinished: no time
    spans = last - first
    spans = spans[np.isfinite(spans)]
    return {"num_sessions": int(len(ids)), "session_s_mean": float(spans.mean()) if len(spans) else float("nan"),
            "session_s_p50": _percentile(spans, 50), "session_s_p99": _percentile(spans, 99)}
