"""Metrics from run records (requests and steps tables), the same for simulated and measured runs."""
from __future__ import annotations

import numpy as np
import pandas as pd

SUMMARY_KEYS = ("makespan_s", "throughput_tokens_per_s", "output_tokens_per_s", "prefill_tokens_logical",
                "prefill_tokens_computed", "prefill_token_saving", "ttft_s_p50", "ttft_s_p99", "tpot_s_p50",
                "tpot_s_p99", "e2e_s_p50", "e2e_s_p99", "peak_kv_blocks", "num_steps", "num_preemptions",
                "num_requests")


def request_latencies(requests: pd.DataFrame) -> pd.DataFrame:
    """TTFT, TPOT (per output token after the first) and end-to-end latency per request."""
    out = pd.DataFrame({"req_id": requests["req_id"]})
    out["ttft_s"] = requests["first_token_s"] - requests["arrival_s"]
    decode_tokens = (requests["output_len"] - 1).where(requests["output_len"] > 1)
    out["tpot_s"] = (requests["finish_s"] - requests["first_token_s"]) / decode_tokens
    out["e2e_s"] = requests["finish_s"] - requests["arrival_s"]
    return out


def _percentile(values: pd.Series, q: float) -> float:
    values = values.dropna().to_numpy()
    return float(np.percentile(values, q)) if len(values) else float("nan")


def summarize(requests: pd.DataFrame, steps: pd.DataFrame) -> dict:
    """One schedule's summary from its records. Makespan runs from the first arrival to the
    last finish; throughput counts prompt and output tokens over it."""
    latencies = request_latencies(requests)
    start = float(requests["arrival_s"].min()) if len(requests) else 0.0
    makespan = float(requests["finish_s"].max()) - start if len(requests) else 0.0
    prompt = int(requests["prompt_len"].sum())
    output = int(requests["output_len"].sum())
    # every token of a prefill chunk: group prefixes and recomputation after preemption included
    computed = int(steps["num_prefill_tokens"].sum()) if len(steps) else 0
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
        "peak_kv_blocks": int(steps["kv_blocks_used"].max()) if len(steps) else 0,
        "num_steps": int(len(steps)),
        "num_preemptions": int(requests["num_preemptions"].sum()),
        "num_requests": int(len(requests)),
    }
