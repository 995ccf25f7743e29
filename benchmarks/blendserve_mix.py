"""Sorting a batch by prefix against its mix of request shapes, beside BlendServe's finding.

BlendServe (Zhao et al., ASPLOS'26, arXiv 2411.16102, §3.2-3.3 and §6) observes that ordering
an offline batch depth first over its prefix tree (what sorting it does) keeps the prefix
sharing but clusters requests of one shape together, compute-heavy prefills in one stretch and
memory-heavy decodes in another, where a random order mixes them into the same batches; with
their traces, random order beat DFS at 5 % prefix sharing and DFS won at 35 %.

Run: python benchmarks/blendserve_mix.py [--hardware h100-sxm] [--model llama-3.1-8b] [--overlap]

Here: ``workload=mixed_batch`` (3,000 prompts of 3,000 tokens with 30-token outputs and 3,000
of 300 with 600, shuffled; each class with its own 16-token template; ``shared`` of every
prompt shared by 8 requests of its class), one GPU's roofline, fcfs (the shuffled order),
sorted (depth first), blend (BlendServe's order: depth first with the denser subtrees first,
taken from both ends in turns; scheduler/blend.py) and batchllm. Printed per ``shared``: the
prompt tokens sorted saves (the batch's sharing, what an unbounded cache would save, to within
a block), each schedule's makespan, sorted and blend over fcfs; then where sorting starts to
pay. BlendServe does not publish its per-trace shape mixes, so this compares directions and the
crossover's existence, not its exact place; and its gains over depth first (19-23 % on
NanoFlow, which overlaps compute- and memory-bound kernels within a step) need that overlap,
which the roofline here, a sum of kernel times, does not model. ``--overlap`` bounds what that
overlap could give: the same plans (an offline batch's plans do not depend on step times) costed
as perfect overlap, each step the larger of its kernels' compute time and their memory time
(two rooflines: one without bandwidth limits, one without FLOP limits; launches and host work in
both), BlendServe's "practical optimum" assumption. The simulator's own option for it,
``hardware.overrides.step_overlap=true`` (sim/overlap.py), gives the same figures to the bit
(tests/test_overlap.py): this costing of a summed-kernel run's plans with that option's two
rooflines checks that the option composes them step by step and stretch by stretch alike.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scheduler import schedule_config  # noqa: E402
from scheduler.model_spec import model_spec  # noqa: E402
from sim.cost_model import CostModel  # noqa: E402
from sim.hardware import hardware_spec, kv_capacity_blocks  # noqa: E402
from sim.overlap import OverlapCostModel  # noqa: E402
from sim.roofline import build_roofline_profile  # noqa: E402
from sim.simulator import simulate  # noqa: E402
from traces.synthetic import mixed_batch  # noqa: E402

SHARED = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.35, 0.5)
SCHEDULES = ("fcfs", "sorted", "blend", "batchllm")


def sweep(hardware_name: str, model_name: str, shared_values=SHARED, **mix) -> list[dict]:
    model, hardware = model_spec(model_name), hardware_spec(hardware_name)
    cost = CostModel(build_roofline_profile(model, hardware), model)
    blocks = kv_capacity_blocks(model, hardware, 16)
    rows = []
    for shared in shared_values:
        workload = mixed_batch(shared=shared, **mix)
        row = {"shared": shared}
        for name in SCHEDULES:
            outcome = simulate(workload, schedule_config(name), cost, blocks, 16)
            row[name] = outcome.makespan_s
            if name == "sorted":
                row["sharing"] = outcome.scheduler.stats.prefill_token_saving
        rows.append(row)
    return rows


def overlapped(hardware_name: str, model_name: str, shared_values=(0.05, 0.35), **mix) -> list[dict]:
    """Makespans as simulated and under perfect compute/memory overlap, same plans."""
    model, hardware = model_spec(model_name), hardware_spec(hardware_name)
    cost = CostModel(build_roofline_profile(model, hardware), model)
    sides = OverlapCostModel(model, hardware)  # its two rooflines, applied here to another run's plans
    compute, memory = sides.compute, sides.memory
    blocks = kv_capacity_blocks(model, hardware, 16)
    rows = []
    for shared in shared_values:
        workload = mixed_batch(shared=shared, **mix)
        row = {"shared": shared}
        for name in ("fcfs", "sorted", "blend"):
            bound = [0.0]
            on_plan = lambda plan: bound.__setitem__(0, bound[0] + max(compute.step(plan)[0], memory.step(plan)[0]))
            outcome = simulate(workload, schedule_config(name), cost, blocks, 16, fast_forward=False, on_plan=on_plan)
            row[name] = (outcome.makespan_s, bound[0])
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hardware", default="h100-sxm")
    parser.add_argument("--model", default="llama-3.1-8b")
    parser.add_argument("--overlap", action="store_true",
                        help="also the makespans under perfect compute/memory overlap (NanoFlow's bound)")
    args = parser.parse_args()
    started = time.perf_counter()
    rows = sweep(args.hardware, args.model)
    print(f"mixed batch (3,000 x 3000/30 + 3,000 x 300/600 tokens, shuffled), {args.model} on {args.hardware}")
    print(f"{'shared':>6} {'sharing':>8} {'fcfs s':>8} {'sorted s':>9} {'blend s':>8} {'batchllm s':>11} "
          f"{'sorted/fcfs':>12} {'blend/fcfs':>11} {'blend/sorted':>13}")
    for row in rows:
        print(f"{row['shared']:>6.2f} {row['sharing']:>8.3f} {row['fcfs']:>8.1f} {row['sorted']:>9.1f} "
              f"{row['blend']:>8.1f} {row['batchllm']:>11.1f} {row['fcfs'] / row['sorted']:>11.2f}x "
              f"{row['fcfs'] / row['blend']:>10.2f}x {row['sorted'] / row['blend']:>12.3f}x")
    pays = [row for row in rows if row["sorted"] < row["fcfs"]]
    loses = [row for row in rows if row["sorted"] > row["fcfs"]]
    if pays and loses:
        print(f"sorting loses up to {max(r['sharing'] for r in loses):.3f} of the prompt tokens shared and pays from "
              f"{min(r['sharing'] for r in pays):.3f} (BlendServe's traces: random order ahead at 5 %, DFS at 35 %)")
    else:
        print("no crossover: sorting " + ("always pays" if pays else "never pays") + " on this mix")
    if args.overlap:
        print("the same plans under perfect compute/memory overlap in each step (s; simulated -> overlapped):")
        for row in overlapped(args.hardware, args.model):
            spans = {name: row[name] for name in ("fcfs", "sorted", "blend")}
            print(f"  shared {row['shared']:.2f}: " + ", ".join(
                f"{name} {a:.1f} -> {b:.1f}" for name, (a, b) in spans.items())
                + f"; blend over sorted {spans['sorted'][0] / spans['blend'][0]:.3f}x -> "
                  f"{spans['sorted'][1] / spans['blend'][1]:.3f}x, over fcfs {spans['fcfs'][0] / spans['blend'][0]:.3f}x"
                  f" -> {spans['fcfs'][1] / spans['blend'][1]:.3f}x")
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
