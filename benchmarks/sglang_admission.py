"""SGLang's admission (``schedule.overrides.new_token_ratio``, scheduler/reserve.py) and its
retraction (``schedule.overrides.preemption=sglang``, scheduler/retract.py) against vLLM's
preemption on the README's cases: makespan, preemptions and the slowest times to the first token
and between tokens of each schedule, as vLLM schedules it, with the room SGLang keeps for the
answers still to come, and with SGLang's retraction besides.

Run: python benchmarks/sglang_admission.py [--ratio 0.7] [--cases default,long_answers,rollouts,
                                            rollouts_lru,mooncake]

Each case is three ``batchlab simulate`` runs (Llama-3.1-8B on an H100, roofline profile): as
given, with ``schedule.overrides.new_token_ratio=RATIO``, and with that and
``schedule.overrides.preemption=sglang``; the figures are read back from the runs' summary.json.
Mooncake's trace is read from ../shared/traces (skipped, and said so, where it is absent).
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
    print("| workload | schedule | makespan s vLLM / reserve / + retraction | preemptions | TTFT p99 s | "
          "TPOT p99 ms |")
    print("|---|---|---|---|---|---|")
    variants = {"vllm": (), "reserve": (f"schedule.overrides.new_token_ratio={options.ratio}",)}
    variants["retract"] = variants["reserve"] + ("schedule.overrides.preemption=sglang",)
    with tempfile.TemporaryDirectory() as tmp:
        for key in options.cases.split(","):
            title, args = CASES[key]
            if key == "mooncake" and not (ROOT.parent / "shared" / "traces" / "mooncake").exists():
                print(f"| {title} | skipped: ../shared/traces/mooncake is absent | | | | |")
                continue
            runs = [run(args + extra, Path(tmp) / f"{key}-{name}") for name, extra in variants.items()]
            for name in runs[0]:
                rows = [r[name] for r in runs]
                cell = lambda field, fmt: " / ".join(format(r[field], fmt) for r in rows)  # noqa: E731
                tpot = " / ".join(f"{r['tpot_s_p99'] * 1e3:,.1f}" for r in rows)
                print(f"| {title} | {name} | {cell('makespan_s', ',.1f')} | {cell('num_preemptions', ',')} | "
                      f"{cell('ttft_s_p99', ',.1f')} | {tpot} |", flush=True)

if __name__ == "__main__":
    main()
