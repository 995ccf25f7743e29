"""vLLM's scheduling (``fcfs``) against SGLang's (``sglang``), one difference at a time, on the
README's cases: each row adds one of SGLang's defaults to the one above, from ``fcfs`` to the
``sglang`` schedule, and the last line checks that the ladder's top is that schedule.

Run: python benchmarks/vllm_vs_sglang.py [--cases default,long_answers,rollouts,mooncake]

Each row is a ``batchlab simulate`` run of ``fcfs`` with the overrides so far (Llama-3.1-8B on
an H100, roofline profile); the figures are read back from the runs' summary.json. Mooncake's
trace is read from ../shared/traces (skipped, and said so, where it is absent).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.sglang_admission import CASES, ROLLOUTS  # noqa: E402
from benchmarks.simulate_cli import run_simulate  # noqa: E402

LADDER = (  # (what the row adds, its override), cumulative
    ("fcfs (vLLM: 2,048 tokens and 256 requests a step, decodes and prompt chunks together)", None),
    ("+ room for 0.7 of the answers to come", "new_token_ratio=0.7"),
    ("+ SGLang's retraction", "preemption=sglang"),
    ("+ prompt chunks and decodes in separate steps", "mixed_batches=false"),
    ("+ 8,192 prompt tokens a step", "max_num_batched_tokens=8192"),
    ("+ blocks cached after their step", "cache_in_step=false"),
    ("+ up to 2,048 running (= sglang)", "max_num_seqs=2048"),
)
LADDER_CASES = {
    "default": CASES["default"][0],
    "long_answers": CASES["long_answers"][0],
    "rollouts": CASES["rollouts"][0],
    "mooncake": CASES["mooncake"][0],
}
ARGS = {"default": (), "long_answers": ("workload.params.output_len=1000",), "rollouts": ROLLOUTS,
        "mooncake": ("+experiment=mooncake_replay",)}


def summary(args: tuple, out: Path, schedule: str) -> dict:
    run_dir = run_simulate(args + (f"schedule.names=[{schedule}]",), out)
    return json.loads((run_dir / "summary.json").read_text())["schedules"][schedule]


def row(title: str, s: dict) -> str:
    return (f"| {title} | {s['makespan_s']:,.1f} | {s['num_preemptions']:,} | {s['prefill_token_saving']:.3f} | "
            f"{s['ttft_s_p50']:,.1f} / {s['ttft_s_p99']:,.1f} | {s['tpot_s_p50'] * 1e3:,.1f} / "
            f"{s['tpot_s_p99'] * 1e3:,.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(LADDER_CASES))
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for key in options.cases.split(","):
            print(f"\n{LADDER_CASES[key]}\n")
            if key == "mooncake" and not (ROOT.parent / "shared" / "traces" / "mooncake").exists():
                print("skipped: ../shared/traces/mooncake is absent")
                continue
            print("| schedule | makespan s | preemptions | prefill saved | TTFT p50 / p99 s | TPOT p50 / p99 ms |")
            print("|---|---|---|---|---|---|")
            overrides: tuple = ()
            for index, (title, override) in enumerate(LADDER):
                if override:
                    overrides += (f"schedule.overrides.{override}",)
                top = summary(ARGS[key] + overrides, Path(tmp) / f"{key}-{index}", "fcfs")
                print(row(title, top), flush=True)
            preset = summary(ARGS[key], Path(tmp) / f"{key}-sglang", "sglang")
            same = all(top[k] == preset[k] for k in ("makespan_s", "num_preemptions", "num_steps"))
            print(f"\nthe ladder's top {'equals' if same else 'DIFFERS FROM'} the sglang schedule "
                  f"(makespan {top['makespan_s']:,.1f} / {preset['makespan_s']:,.1f} s)")


if __name__ == "__main__":
    main()
