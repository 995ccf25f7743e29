"""SGLang's admission (``schedule.overrides.new_token_ratio``, scheduler/reserve.py) against
vLLM's on the README's cases: makespan, preemptions and the slowest times between tokens of each
schedule, without and with the room SGLang keeps for the answers still to come.

Run: python benchmarks/sglang_admission.py [--ratio 0.7] [--cases default,long_answers,rollouts,
                                            rollouts_lru,mooncake]

Each case is a ``batchlab simulate`` run (Llama-3.1-8B on an H100, roofline profile) twice, the
second with ``schedule.overrides.new_token_ratio=RATIO``; the figures are read back from the
runs' summary.json. Mooncake's trace is read from ../shared/traces (skipped, and said so, where
it is absent).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.simulate_cli import run_simulate  # noqa: E402

ROLLOUTS = ("workload=system_prompts", "workload.params.num_system_prompts=1", "workload.params.system_len=200",
            "workload.params.user_len_min=100", "workload.params.user_len_max=500",
            "workload.params.output_len_min=500", "workload.params.output_len_max=4000",
            "workload.params.num_requests=512", "samples.n=16")
CASES = {
    "default": ("the default batch", ()),
    "long_answers": ("the default batch, answers of 1,000 tokens", ("workload.params.output_len=1000",
                                                                     "schedule.names=[fcfs,batchllm]")),
    "rollouts": ("rollouts: 512 prompts x 16 completions, answers 500-4,000",
                 ROLLOUTS + ("schedule.names=[fcfs,batchllm]",)),
    "rollouts_lru": ("the rollouts, batchllm with caching=lru", ROLLOUTS + ("schedule.names=[batchllm]",
                                                                         "schedule.overrides.caching=lru")),
    "mooncake": ("Mooncake's conversation trace replayed",
                 ("+experiment=mooncake_replay", "schedule.names=[fcfs,lpm]")),
}


def run(args: tuple, out: Path) -> dict:
    return json.loads((run_simulate(args, out) / "summary.json").read_text())["schedules"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.7)
    parser.add_argument("--cases", default=",".join(CASES))
    options = parser.parse_args()
    print("| workload | schedule | makespan s without / with | preemptions without / with "
          "| TPOT p99 ms without / with |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for key in options.cases.split(","):
            title, args = CASES[key]
            if key == "mooncake" and not (ROOT.parent / "shared" / "traces" / "mooncake").exists():
                print(f"| {title} | skipped: ../shared/traces/mooncake is absent | | | |")
                continue
            plain = run(args, Path(tmp) / f"{key}-plain")
            kept = run(args + (f"schedule.overrides.new_token_ratio={options.ratio}",), Path(tmp) / f"{key}-kept")
            for name, a in plain.items():
                b = kept[name]
                print(f"| {title} | {name} | {a['makespan_s']:,.1f} / {b['makespan_s']:,.1f} | "
                      f"{a['num_preemptions']:,} / {b['num_preemptions']:,} | "
                      f"{a['tpot_s_p99'] * 1e3:.1f} / {b['tpot_s_p99'] * 1e3:.1f} |", flush=True)


if __name__ == "__main__":
    main()
