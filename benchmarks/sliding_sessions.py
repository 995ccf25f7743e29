"""Chat sessions re-sent round-robin to a sliding-window model: how much of each prompt the
prefix cache still holds, against what vLLM's users report.

Run: python benchmarks/sliding_sessions.py [--model gemma-3-27b] [--pool-tokens 153600]
                                           [--seat-tokens 4096] [--seats 1,2,4,6,8,12,16,24,32]
                                           [--max-model-len 65536 --max-num-batched-tokens 2048]

vLLM issue #48435 (Gemma-4-31B: 50 sliding-window layers of 1,024 tokens, 10 full; vLLM 0.24 and
0.25, a 153,374-token pool): N sessions ("seats") with distinct prompts, each re-sent round-robin
with its prefix unchanged and a short new suffix; past a working set of about 34-38k tokens,
about a quarter of the pool, reuse falls to zero for every request at once, never partly. The
reporter's fix was vLLM's retention interval (PR #43447; 0 by default from vLLM 0.29), which
keeps cached only the window tails a hit can start from.

Here the scheduler alone (no timing): each seat's prompt is ``--seat-tokens`` of its own and a
64-token suffix a round, one request at a time, one output token; round 0 is cold, the prompt
tokens found cached in rounds 1-3 are counted. Three caches of the same number of blocks
(``--pool-tokens`` over the block size, the tokens of the full layers; or, with
``--max-model-len``, the pool as vLLM logs it, "GPU KV cache size: N tokens", which is its
pages over those one request of max-model-len tokens takes, times max-model-len: ``pool_blocks``):
the model's hybrid one caching every sliding page (vLLM 0.28),
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


def pool_blocks(spec, block: int, tokens: int, max_model_len: int = 0, batched: int = 2048) -> int:
    """The KV blocks (of ``block`` tokens) of a pool: ``tokens`` of the full layers, or where
    ``max_model_len`` is given ``tokens`` as vLLM logs it: its pages over the pages a request of
    max_model_len tokens takes, times max_model_len (vLLM's ``get_max_concurrency_for_kv_cache_config``,
    whose figure the log line prints). Such a request takes every full page, and in each sliding
    group cdiv(min(window - 1 + ``batched``, max_model_len), page tokens) + 1 pages
    (``SlidingWindowSpec.max_memory_usage_bytes``; ``batched``: max_num_batched_tokens)."""
    if not max_model_len:
        return tokens // block
    window = spec.window_blocks(block)
    _, full_groups, sliding_groups = spec.kv_groups
    full_page = block * full_groups // window.full_groups  # tokens a page holds, of each kind
    sliding_page = block * sliding_groups // window.sliding_groups
    held = min(spec.sliding_window - 1 + batched, max_model_len)
    per_request = full_groups * -(-max_model_len // full_page) + sliding_groups * (-(-held // sliding_page) + 1)
    return -(-tokens * per_request // max_model_len) // window.full_groups


def reused(window, retention, blocks: int, seats: int, seat_tokens: int, block: int = BLOCK) -> float:
    """The fraction of the warm rounds' prompt tokens found in the cache."""
    config = schedule_config("fcfs", retention_interval=retention)
    scheduler = Scheduler(config, blocks, block, emit_block_ids=False, window_blocks=window)
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
    parser.add_argument("--max-model-len", type=int, default=0,
                        help="read --pool-tokens as vLLM logs its pool for this max_model_len (0: full-layer tokens)")
    parser.add_argument("--max-num-batched-tokens", type=int, default=2048,
                        help="vLLM's (2048: vllm serve's default on a GPU under 70 GB)")
    args = parser.parse_args(argv)
    spec = model_spec(args.model)
    block = spec.vllm_block_size(BLOCK)
    window = spec.window_blocks(block)
    if not window or spec.linear_layers:
        parser.error(f"{args.model} has no sliding-window layers in vLLM's hybrid KV cache")
    blocks = pool_blocks(spec, block, args.pool_tokens, args.max_model_len, args.max_num_batched_tokens)
    pool = (f"vLLM's log for max_model_len {args.max_model_len:,} and max_num_batched_tokens "
            f"{args.max_num_batched_tokens:,}" if args.max_model_len else "tokens of the full layers")
    print(f"{args.model}: a {spec.sliding_window:,}-token window, blocks of {block} tokens, pages of {window.held(1)} "
          f"blocks a block in its sliding groups; {blocks:,} blocks ({args.pool_tokens:,} tokens, {pool}); "
          f"seats of {args.seat_tokens:,} tokens + {SUFFIX} a round, rounds 1-{ROUNDS - 1} counted")
    print("seats  working set  of pool  every page (vLLM 0.28)  retention 0 (vLLM 0.29)  no sliding pages")
    start = time.perf_counter()
    for seats in (int(n) for n in args.seats.split(",")):
        cached = [reused(window, None, blocks, seats, args.seat_tokens, block),
                  reused(window, 0, blocks, seats, args.seat_tokens, block),
                  reused(0, None, blocks, seats, args.seat_tokens, block)]
        working = seats * args.seat_tokens
        print(f"{seats:>5}  {working:>11,}  {working / args.pool_tokens:>7.0%}  {cached[0]:>22.3f}  "
              f"{cached[1]:>23.3f}  {cached[2]:>16.3f}")
    print(f"({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
