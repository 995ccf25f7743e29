"""Random soak of the scheduler's invariants, over workloads, schedules, their options and KV
cache sizes drawn at random (each case reproducible from its seed and index):

  tokens     the engine's greedy tokens (a tiny model, seeded random weights, on this CPU) under
             the drawn schedule, options and KV cache equal those of fcfs with room for all,
             chunks of 512 tokens: scheduling, chunking, sharing and preemption never change
             what the model computes;
  stretches  the simulator with decode stretches (fast_forward) gives the same request and step
             records, to the bit, and the same statistics as step by step.

A case that fails, raises, or takes longer than --limit seconds (a livelock) is printed with
what reproduces it; the exit status is 1 if any did.

    python benchmarks/soak.py tokens --cases 300 [--seed 1] [--model tiny-gpt-oss]
    python benchmarks/soak.py tokens --backend triton --cases 40   # the Triton kernels (interpreter on a CPU)
    python benchmarks/soak.py stretches --cases 500 [--seed 1] [--model llama-3.1-8b] [--replicas 3]
    python benchmarks/soak.py stretches --case 2:77 -v      # one case again, its workload shown
    python benchmarks/soak.py stretches --scale medium --cases 300 --model tiny-gemma3  # 100-400 requests a case

On 2026-12-04 it found four bugs (each now a test): a group prefix being computed that ran short
of blocks dropped an older group's finished prefix whose members waited, and the prefixes took
turns forever; the fix's first version let SGLang-style steps apart drop a group whose members
fit, forever; a decode stretch starting where blocks were due to the host tier moved the copy's
time past the stretch; and with a linear-attention model, admissions loaded from the host tier
blocks their own step had just written there, before anything computed them. Later that day,
five more: with a hybrid model a stretch's decodes evicted the block a waiting request's hit
ended at, which let it in sooner; a group's prefix loading from the tier asynchronously never
started its group; blocks so loaded were cached too late where a step's blocks are cached after
it; a stretch began where the next step would rank new arrivals (blend); and a dropped group,
regrouped with new arrivals, took its finished members along and never finished (a livelock;
found by --scale medium).
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import soak_draws as draws  # noqa: E402
from scheduler import WorkloadError, schedule_config  # noqa: E402
from scheduler.errors import ConfigError  # noqa: E402


class Hang(Exception):
    """A case ran past its time limit."""


def tokens_case(model, weights, workload, schedule: str, options: dict, blocks: int, block_size: int,
                backend: str = "torch", kernel_options: dict | None = None) -> str | None:
    """None where the engine's tokens (with ``backend``'s kernels) equal the roomy fcfs
    baseline's on the torch backend, else what differed."""
    from engine.loop import run_engine
    from engine.runner import ModelRunner

    def tokens(name, num_blocks, backend="torch", kernel_options=None, **overrides):
        runner = ModelRunner(model, num_blocks, block_size, weights=weights, backend=backend,
                             kernel_options=kernel_options, device=weights.embed.device)
        outcome = run_engine(workload, schedule_config(name, **overrides), runner, num_blocks, block_size)
        return {r: tuple(t) for r, t in runner.outputs.items()}, outcome

    baseline, _ = tokens("fcfs", 4096, max_num_batched_tokens=512)
    got, outcome = tokens(schedule, blocks, backend, kernel_options, **options)
    differ = sorted(r for r in baseline if got.get(r) != baseline[r])
    if differ:
        return f"tokens differ for {len(differ)} of {len(baseline)} requests (first: {differ[:5]})"
    return None


def stretches_case(cost, workload, schedule: str, options: dict, blocks: int, block_size: int,
                   cluster: tuple | None = None) -> str | None:
    """None where fast-forward's records and statistics equal step by step's, else the first
    difference. ``cluster``: (replicas, router policy, a host tier the replicas share), the
    requests routed over that many engines (sim/cluster.py)."""
    import pandas as pd

    from batchlab.records import requests_frame
    from sim.cluster import RouterConfig, simulate_cluster
    from sim.simulator import simulate

    config = schedule_config(schedule, **options)
    if cluster is None:
        runs = [[simulate(workload, config, cost, blocks, block_size, fast_forward=ff)] for ff in (False, True)]
    else:
        replicas, policy, shared = cluster
        runs = [simulate_cluster(workload, config, cost, blocks, block_size, replicas, RouterConfig(policy),
                                 fast_forward=ff, shared_host=shared) for ff in (False, True)]
    for replica, (slow, fast) in enumerate(zip(*runs)):
        try:
            pd.testing.assert_frame_equal(requests_frame(slow.scheduler, schedule),
                                          requests_frame(fast.scheduler, schedule), check_exact=True)
            pd.testing.assert_frame_equal(slow.steps.all_steps(), fast.steps.all_steps(), check_exact=True)
        except AssertionError as error:
            return f"replica {replica}: " + " ".join(str(error).split())[:300]
        if slow.scheduler.stats != fast.scheduler.stats:
            return f"replica {replica}: statistics differ: {slow.scheduler.stats} against {fast.scheduler.stats}"
    return None


def on_alarm(signum, frame):
    raise Hang()


def run(mode: str, model_name: str, cases: list[tuple[int, int]], limit: float, verbose: bool,
        replicas: int = 1, scale: str = "small", backend: str = "torch") -> dict:
    """Runs ``cases`` ((seed, index) each); returns counts of ok, refused (the draw asked for
    what the scheduler refuses up front, as it should), failed and hung."""
    from scheduler.model_spec import model_spec

    model = model_spec(model_name)
    if mode == "tokens":
        import torch

        from engine.weights import random_weights

        torch.set_num_threads(1)
        device = "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"
        weights = random_weights(model, seed=2, device=device)
    else:
        from sim.cost_model import CostModel
        from sim.hardware import hardware_spec
        from sim.roofline import build_roofline_profile

        cost = CostModel(build_roofline_profile(model, hardware_spec("a100-80gb")), model)
    counts = dict.fromkeys(("ok", "refused", "failed", "hung", "shared-prefix kernel"), 0)
    shared = [0]  # triton: shared-prefix kernel calls (a soak that never ran it would say nothing of it)
    if backend == "triton":
        import kernels.backend as kernel_backend

        kernel = kernel_backend.shared_prefix_decode_attention

        def counted(*args, **kwargs):
            shared[0] += 1
            return kernel(*args, **kwargs)

        kernel_backend.shared_prefix_decode_attention = counted
    signal.signal(signal.SIGALRM, on_alarm)
    try:
        for seed, index in cases:
            try:
                kind, workload, schedule, options, blocks, size = draws.draw_case(
                    seed, index, mode == "stretches", model, scale, grouped=backend == "triton")
            except (ConfigError, WorkloadError):  # a generator's parameters that do not go together
                continue
            cluster = None
            if replicas > 1:  # a router, and a shared host tier where there is one, drawn from the case's own seed
                draw = random.Random(f"{seed}:{index}:cluster")
                cluster = (replicas, draw.choice(("least_loaded", "cache_aware")), draw.random() < 0.5)
            kernel_options = draws.draw_kernel_options(seed, index) if backend == "triton" else None
            label = f"[{seed}:{index}] {kind} ({len(workload.requests)} requests) {schedule} {options} blocks={blocks} " \
                    f"block_size={size}" + (f" replicas, router, shared tier={cluster}" if cluster else "") + \
                    (f" kernels={kernel_options}" if kernel_options else "")
            if verbose:
                print(label, [(r.prompt, r.output_len, round(r.arrival_s, 3)) for r in workload.requests])
            started, calls = time.perf_counter(), shared[0]
            signal.setitimer(signal.ITIMER_REAL, limit)
            try:
                if mode == "tokens":
                    problem = tokens_case(model, weights, workload, schedule, options, blocks, size, backend, kernel_options)
                else:
                    problem = stretches_case(cost, workload, schedule, options, blocks, size, cluster)
            except (ConfigError, WorkloadError) as error:
                counts["refused"] += 1
                if verbose:
                    print(f"  refused: {error}")
                continue
            except Hang:
                counts["hung"] += 1
                print(f"HUNG (over {limit:g} s) {label}", flush=True)
                continue
            except Exception:  # noqa: BLE001 (a soak reports every failure and goes on)
                counts["failed"] += 1
                print(f"RAISED {label}\n{traceback.format_exc()}", flush=True)
                continue
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            if problem is None:
                counts["ok"] += 1
                counts["shared-prefix kernel"] += shared[0] > calls  # (of the cases ok)
                if verbose:
                    print(f"  ok in {time.perf_counter() - started:.2f} s" +
                          (f" ({shared[0] - calls} shared-prefix kernel calls)" if backend == "triton" else ""))
            else:
                counts["failed"] += 1
                print(f"FAILED {label}: {problem}", flush=True)
    finally:  # (the kernel as it was, for whoever imported the module: the tests)
        if backend == "triton":
            kernel_backend.shared_prefix_decode_attention = kernel
    return counts


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="benchmarks/soak.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("tokens", "stretches"))
    parser.add_argument("--cases", type=int, default=100, help="cases to draw (default 100)")
    parser.add_argument("--seed", type=int, default=1, help="the draw's seed (default 1)")
    parser.add_argument("--case", help="one case again, as SEED:INDEX (from a report)")
    parser.add_argument("--model", help="the model preset (default: tiny for tokens, llama-3.1-8b for stretches)")
    parser.add_argument("--limit", type=float, default=60.0, help="seconds a case may take (default 60)")
    parser.add_argument("--replicas", type=int, default=1,
                        help="stretches: engines the requests are routed over (sim/cluster.py; default 1)")
    parser.add_argument("--scale", choices=("small", "medium"), default="small",
                        help="stretches: small workloads (default: 5-60 requests of tens of tokens) or medium "
                             "(100-400 requests of a few hundred tokens; about 0.2 s a case)")
    parser.add_argument("--backend", choices=("torch", "triton"), default="torch",
                        help="tokens: the engine's attention backend for the drawn schedule (the baseline stays on "
                             "torch); triton draws the shared-prefix kernel's options too and, without a GPU, "
                             "runs in Triton's interpreter (seconds a case)")
    parser.add_argument("-v", "--verbose", action="store_true", help="every case, its workload and outcome")
    args = parser.parse_args(argv)
    if args.case is not None:
        try:
            seed, index = (int(part) for part in args.case.split(":"))
        except ValueError:
            parser.error(f"--case {args.case!r}: expected SEED:INDEX, e.g. 2:77")
        args.cases_list = [(seed, index)]
    else:
        if args.cases < 1:
            parser.error(f"--cases {args.cases}: expected at least 1")
        args.cases_list = [(args.seed, index) for index in range(args.cases)]
    if args.replicas < 1 or (args.replicas > 1 and args.mode != "stretches"):
        parser.error(f"--replicas {args.replicas}: expected at least 1, and more only with stretches")
    if args.backend != "torch" and args.mode != "tokens":
        parser.error(f"--backend {args.backend}: only with tokens (stretches run the simulator, no kernels)")
    if args.scale == "medium" and args.mode != "stretches":
        parser.error("--scale medium: only with stretches (the engine would take minutes a case on a CPU)")
    args.model = args.model or ("tiny" if args.mode == "tokens" else "llama-3.1-8b")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    started = time.perf_counter()
    if args.backend == "triton":  # read when triton is first imported: its interpreter unless there is a GPU
        import torch

        if not torch.cuda.is_available():
            os.environ.setdefault("TRITON_INTERPRET", "1")
    counts = run(args.mode, args.model, args.cases_list, args.limit, args.verbose, args.replicas, args.scale,
                 args.backend)
    kernel = f" ({counts['shared-prefix kernel']} of them ran the shared-prefix kernel)" if args.backend == "triton" else ""
    print(f"{args.mode} ({args.model}{', ' + args.backend if args.backend != 'torch' else ''}): {counts['ok']} ok"
          f"{kernel}, {counts['refused']} refused up front, {counts['failed']} failed, {counts['hung']} hung, in "
          f"{time.perf_counter() - started:.0f} s")
    return 1 if counts["failed"] or counts["hung"] else 0


if __name__ == "__main__":
    sys.exit(main())
