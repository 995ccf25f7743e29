"""Many completions of one prompt (parallel sampling), against Hydragen's published figures.

Run: python benchmarks/hydragen_samples.py [--hardware a100-80gb] [--completions 1024]

Hydragen (Juravsky et al., arXiv 2402.05099, ICML 2024) samples many completions of one prompt
with CodeLlama-13b on eight A100s (tensor parallel) and compares its decode throughput with
vLLM's, which stores the prompt's KV once for all completions (``SamplingParams(n=...)``) but
reads it once for each. Its sweep (the repository's docs/sweeps_from_paper.md): prompts of
1,024 to 16,256 tokens, 128 tokens a completion, 32 to 2,048 completions; throughput is the
completions' tokens over the time of generating them less the prompt's prefill. Its claims at
1,024 completions: over 3x vLLM's throughput with a 1K prompt and over 30x with 16K (abstract
of the ICML workshop version); from 1K to 16K its own throughput falls by less than 15 %, the
baselines' by over 90 %.

Here batchlab simulates the same batch (``samples.n`` completions of one prompt) on the
roofline of the chosen A100 with the model's published config
(benchmarks/published/codellama-13b-config.json), vLLM as ``fcfs`` (its prefix cache shares the
prompt, attention reads it per completion) and Hydragen as ``batchllm`` (the completions a group
whose prompt's attention is computed once for all: the shared-prefix attention of BatchLLM §5
and Hydragen alike), both with room for every completion at once (``max_num_seqs``, as
Hydragen's vLLM runs set it). Printed: the decode throughput (tokens of decode-only steps over
their time), its ratio, how each falls from the shortest prompt to the longest, and fcfs
with vLLM's cascade attention on (``schedule.overrides.cascade_attention=true``).
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

CONFIG = ROOT / "benchmarks" / "published" / "codellama-13b-config.json"
BUDGET = 16384  # the token budget of Hydragen's vLLM (0.2.7, its requirements-dev.txt): max(max_model_len, 2048)
CLAIMS = {"speedup_1k": 3.0, "speedup_16k": 30.0, "hydragen_drop": 0.15, "vllm_drop": 0.90}


def decode_throughput(run: Path) -> dict[str, float]:
    """Each schedule's tokens per second over its decode-only steps."""
    import pandas as pd

    steps = pd.read_parquet(run / "steps.parquet")
    decode = steps[(steps.num_prefill_tokens == 0) & (steps.num_decode_tokens > 0)]
    return {name: float(g.num_decode_tokens.sum() / g.duration_s.sum()) for name, g in decode.groupby("schedule")}


def simulate(prompt_len: int, completions: int, output_len: int, hardware: str, workdir: Path,
             cascade: bool = False) -> dict[str, float]:
    prompts = workdir / f"prompt{prompt_len}.jsonl"
    prompts.write_text(json.dumps({"req_id": 0, "arrival_s": 0.0, "prompt": [[7, prompt_len]],
                                   "output_len": output_len}) + "\n")
    run = workdir / f"run{prompt_len}{'-cascade' if cascade else ''}"
    run_simulate(["workload=file", f"workload.path={prompts}", f"samples.n={completions}", "model=hf",
                  f"model.config={CONFIG}", f"hardware={hardware}", "hardware.overrides.tensor_parallel=8",
                  "schedule.names=[fcfs]" if cascade else "schedule.names=[fcfs,batchllm]",
                  f"schedule.overrides.cascade_attention={str(cascade).lower()}",
                  f"schedule.overrides.max_num_seqs={completions}",
                  f"schedule.overrides.max_num_batched_tokens={BUDGET}"], run)
    return decode_throughput(run)


def figures(hardware: str = "a100-80gb", completions: int = 1024, prompts=(1024, 16256), output_len: int = 128):
    with tempfile.TemporaryDirectory() as tmp:
        rates = {p: simulate(p, completions, output_len, hardware, Path(tmp)) for p in prompts}
        for p in prompts:  # vLLM with its cascade attention on (--no-disable-cascade-attn)
            rates[p]["fcfs_cascade"] = simulate(p, completions, output_len, hardware, Path(tmp), cascade=True)["fcfs"]
    short, long = prompts[0], prompts[-1]
    return {"rates": rates,
            "speedup_1k": rates[short]["batchllm"] / rates[short]["fcfs"],
            "speedup_16k": rates[long]["batchllm"] / rates[long]["fcfs"],
            "hydragen_drop": 1 - rates[long]["batchllm"] / rates[short]["batchllm"],
            "vllm_drop": 1 - rates[long]["fcfs"] / rates[short]["fcfs"]}


def sweep(hardware: str = "a100-80gb", completions=(32, 128, 512, 2048), prompts=(1024, 4096, 16256),
          output_len: int = 128) -> dict[tuple[int, int], float]:
    """batchllm's decode throughput over fcfs's across the sweep's completions and prompt lengths
    (Hydragen: its lead grows with both)."""
    with tempfile.TemporaryDirectory() as tmp:
        ratios = {}
        for n in completions:
            (Path(tmp) / f"n{n}").mkdir()
            for p in prompts:
                rate = simulate(p, n, output_len, hardware, Path(tmp) / f"n{n}")
                ratios[n, p] = rate["batchllm"] / rate["fcfs"]
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hardware", default="a100-80gb")
    parser.add_argument("--completions", type=int, default=1024)
    parser.add_argument("--sweep", action="store_true",
                        help="also batchllm's lead over fcfs across 32-2,048 completions and 1K-16K prompts")
    args = parser.parse_args()
    if args.sweep:
        ratios = sweep(args.hardware)
        prompts = sorted({p for _, p in ratios})
        print("batchllm's decode throughput over fcfs's (completions down, prompt tokens across):")
        print(f"{'':>6}" + "".join(f"{p:>9,}" for p in prompts))
        for n in sorted({n for n, _ in ratios}):
            print(f"{n:>6,}" + "".join(f"{ratios[n, p]:>8.2f}x" for p in prompts))
    got = figures(args.hardware, args.completions)
    print(f"CodeLlama-13b on 8x {args.hardware}, {args.completions} completions of 128 tokens from one prompt")
    print(f"{'prompt':>8}  {'vLLM (fcfs) tok/s':>18}  {'Hydragen (batchllm) tok/s':>26}  ratio  "
          f"{'fcfs, cascade attention':>24}")
    for prompt, rate in got["rates"].items():
        print(f"{prompt:>8,}  {rate['fcfs']:>18,.0f}  {rate['batchllm']:>26,.0f}  {rate['batchllm'] / rate['fcfs']:.2f}x  "
              f"{rate['fcfs_cascade']:>24,.0f}")
    print(f"speedup at 1K: {got['speedup_1k']:.2f}x (Hydragen: over {CLAIMS['speedup_1k']:g}x); at 16K: "
          f"{got['speedup_16k']:.1f}x (over {CLAIMS['speedup_16k']:g}x)")
    print(f"throughput lost from 1K to 16K: batchllm {got['hydragen_drop']:.1%} (Hydragen: under "
          f"{CLAIMS['hydragen_drop']:.0%}), fcfs {got['vllm_drop']:.1%} (baselines: over {CLAIMS['vllm_drop']:.0%})")


if __name__ == "__main__":
    main()
