"""The comparison table printed by ``batchlab simulate``."""
from __future__ import annotations


def _fmt(value, digits=2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:
            return "-"
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def comparison_table(summaries: dict[str, dict]) -> str:
    baseline = summaries.get("fcfs", {}).get("throughput_tokens_per_s")
    # several GPUs (tensor parallel, replicas): what each GPU does too, the figure to compare setups by
    per_gpu = any(s.get("num_gpus", 1) > 1 for s in summaries.values())
    # a host-memory KV tier: the share of prompt tokens loaded from it (within "prefill saved")
    host = any(s.get("host_loaded_tokens") for s in summaries.values())
    # sessions (agents' jobs): the mean time from a session's first arrival to its last answer
    jobs = any("session_s_mean" in s for s in summaries.values())
    header = ("schedule", "makespan s", "tokens/s") + (("tokens/s/GPU",) if per_gpu else ()) + (
        "vs fcfs", "prefill saved") + (("from host",) if host else ()) + (("session s",) if jobs else ()) + (
        "TTFT p50", "TTFT p99", "TPOT p50 ms", "TPOT p99 ms", "peak KV blocks", "steps", "preempt")
    rows = [header]
    for name, s in summaries.items():
        speedup = s["throughput_tokens_per_s"] / baseline if baseline else None
        gpu = (_fmt(s["throughput_tokens_per_s"] / s.get("num_gpus", 1), 0),) if per_gpu else ()
        loaded = ((f"{s['host_loaded_tokens'] / s['prefill_tokens_logical']:.3f}" if s.get("host_loaded_tokens")
                   and s["prefill_tokens_logical"] else "-"),) if host else ()
        session = (_fmt(s.get("session_s_mean"), 2),) if jobs else ()
        rows.append((name, _fmt(s["makespan_s"], 1), _fmt(s["throughput_tokens_per_s"], 0)) + gpu + (
                     f"{speedup:.2f}x" if speedup else "-", f"{s['prefill_token_saving']:.3f}") + loaded + session + (
                     _fmt(s["ttft_s_p50"]), _fmt(s["ttft_s_p99"]),
                     _fmt(s["tpot_s_p50"] * 1000 if s["tpot_s_p50"] == s["tpot_s_p50"] else None, 1),
                     _fmt(s["tpot_s_p99"] * 1000 if s["tpot_s_p99"] == s["tpot_s_p99"] else None, 1),
                     _fmt(s["peak_kv_blocks"]), _fmt(s["num_steps"]), _fmt(s["num_preemptions"])))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    lines = []
    for index, row in enumerate(rows):
        cells = [str(cell).ljust(widths[i]) if i == 0 else str(cell).rjust(widths[i]) for i, cell in enumerate(row)]
        lines.append("  ".join(cells))
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
