"""Prints the CPU engine's throughput (tokens/s) for the tiny model under each schedule (issue 5).
Run: OMP_NUM_THREADS=1 python benchmarks/bench_engine.py. One warm-up run first, then each
schedule twice in alternation; the best of the two is printed (the machine is shared)."""
from __future__ import annotations

import torch

from engine.loop import run_engine
from engine.runner import ModelRunner
from engine.weights import random_weights
from scheduler import schedule_config
from scheduler.model_spec import model_spec
from traces.synthetic import batchllm_microbenchmark

SCHEDULES = ("fcfs", "prefix_grouped", "decode_first", "batchllm", "lpm")


def main() -> None:
    torch.set_num_threads(1)
    spec = model_spec("tiny")
    weights = random_weights(spec, 0)
    workload = batchllm_microbenchmark(256, 32, 16, 8, 64, seed=0)
    tokens = workload.prompt_tokens + workload.output_tokens

    def once(name):
        runner = ModelRunner(spec, 1024, 16, weights=weights, time_kernels=False)
        out = run_engine(workload, schedule_config(name), runner, 1024, 16)
        return out.makespan_s, out.steps.num_steps

    once("fcfs")  # warm-up
    best = {}
    for _ in range(2):
        for name in SCHEDULES:
            makespan, steps = once(name)
            if name not in best or makespan < best[name][0]:
                best[name] = (makespan, steps)
    print(f"workload: {workload.describe()}; model tiny ({spec.num_params / 1e6:.2f}M params), CPU, fp32")
    base = tokens / best["fcfs"][0]
    for name in SCHEDULES:
        makespan, steps = best[name]
        print(f"{name:>15}: {tokens / makespan:>9,.0f} tokens/s ({steps} steps, {makespan:.3f} s; "
              f"{tokens / makespan / base:.2f}x fcfs)")


if __name__ == "__main__":
    main()
