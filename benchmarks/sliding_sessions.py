"""Chat sessions re-sent round-robin to a sliding-window model: how much of each prompt the
prefix cache still holds, against what vLLM's users report.

Run: python benchmarks/sliding_sessions.py [--model gemma-3-27b] [--pool-tokens 153600]
                                           [--seat-tokens 4096] [--seats 1,2,4,6,8,12,16,24,32]

vLLM issue #48435 (Gemma-4-31B: 50 sliding-window layers of 1,024 tokens, 10 full; vLLM 0.24 and
0.25, a 153,374-token pool): N sessions ("seats") with distinct prompts, each re-sent round-robin
with its prefix unchanged and a short new suffix; past a working set of about 34-38k tokens,
about a quarter of the pool, reuse falls to zero for every request at once, never partly. The
reporter's fix was vLLM's retention interval (PR #43447; 0 by default from vLLM 0.29), which
keeps cached only the window tails a hit can start from.

Here the scheduler alone (no timing): each seat's prompt is ``--seat-tokens`` of its own and a
64-token suffix a round, one request at a time, one output token; round 0 is cold, the prompt
tokens found cached in rounds 1-3 are counted. Three caches of the same number of blocks
(``--pool-tokens`` / 16): the model's hybrid one caching every sliding page (vLLM 0.28),
with vLLM 0.29's retention interval, and, for reference, one with no sliding pages at all (a
full-attention model's, or a cache that kept the windows for free). Printed: the working set
(seats x seat tokens, and as a share of the pool) and the reused fraction under each.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scheduler import Request, Scheduler, StepResult, schedule_config  # noqa: E402
from scheduler.model_spec import model_spec  # noqa: E402

ROUNDS, SUFFIX, BLOCK = 4, 64, 16


def reused(window, retention, blocks: int, seats: int, seat_tokens: int) -> float:
    """The fraction of the warm rounds' prompt tokens found in the cache."""
    config = schedule_config("fcfs", retention_interval=retention)
    scheduler = Scheduler(config, blocks, BLOCK, emit_block_ids=False, window_blocks=window)
    found = asked = 0
    now = 0.0
    for turn in range(ROUNDS):
        for seat in range(seats):
            prompt = ((1_000_000 + seat, seat_tokens),) + tuple((2_000_000 + 100 * seat + r, SUFFIX)
                                                               for r in range(turn + 1))
            req_id = turn * seats + seat
            scheduler.add(Request(req_id, now, prompt, 1))
            while scheduler.has_unfinished:
                plan = scheduler.schedule(now)
                now += 1.0
                scheduler.update(plan, StepResult(plan.step, 1.0), now)
            if turn:
                state = scheduler.states[req_id]
                found += state.num_cached_tokens
                asked += state.prompt_len
    return found / asked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma-3-27b")
    parser.add_argument("--pool-tokens", type=int, default=153_600)
    parser.add_argument("--seat-tokens", type=int, default=4096)
    parser.add_argument("--seats", default="1,2,4,6,8,12,16,24,32")
    args = parser.parse_args(argv)
    spec = model_spec(args.model)
    window = spec.window_blocks(BLOCK)
    if not window:
        parser.error(f"{args.model} has no sliding-window layers in vLLM's hybrid KV cache")
    blocks = args.pool_tokens // BLOCK
    print(f"{args.model}: a {spec.sliding_window:,}-token window, pages of {window.held(1)} blocks a block "
          f"in its sliding groups; {blocks:,} blocks ({args.pool_tokens:,} tokens of the full layers); "
          f"seats of {args.seat_tokens:,} tokens + {SUFFIX} a round, rounds 1-{ROUNDS - 1} counted")
    print("seats  working set  of pool  every page (vLLM 0.28)  retention 0 (vLLM 0.29)  no sliding pages")
    start = time.perf_counter()
    for seats in (int(n) for n in args.seats.split(",")):
        cached = [reused(window, None, blocks, seats, args.seat_tokens),
                  reused(window, 0, blocks, seats, args.seat_tokens),
                  reused(0, None, blocks, seats, args.seat_tokens)]
        working = seats * args.seat_tokens
        print(f"{seats:>5}  {working:>11,}  {working / args.pool_tokens:>7.0%}  {cached[0]:>22.3f}  "
              f"{cached[1]:>23.3f}  {cached[2]:>16.3f}")
    print(f"({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
