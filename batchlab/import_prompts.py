"""``batchlab import``: a user's own prompts (token ids, text or chat, JSON lines) as a batchlab
workload file, with how much of it shares prefixes.

Each prompt becomes a segment chain of its radix tree over all prompts
(traces/token_chains.py): two prompts share exactly their common token prefix, and the file
keeps no token ids. The output is written whole or not at all (a temporary file renamed at the
end), so an interrupted import leaves nothing half-written.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path

from scheduler.errors import WorkloadError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batchlab import",
        description="Turn a JSON-lines file of prompts (token ids, text or chat messages; OpenAI Batch API "
                    "lines too) into a batchlab workload file (.jsonl or .parquet) for "
                    "`batchlab simulate workload=file workload.path=OUTPUT`.")
    parser.add_argument("input", help="JSON lines, one prompt per line (see traces/prompt_records.py)")
    parser.add_argument("output", help="the workload file to write: .jsonl or .parquet")
    parser.add_argument("--tokenizer", default=None,
                        help="a local Hugging Face tokenizer directory, for text and chat prompts")
    parser.add_argument("--output-len", type=int, default=None,
                        help="output tokens for lines that give no output length or limit")
    parser.add_argument("--limit", type=int, default=None, help="read only the first N prompts")
    parser.add_argument("--block-size", type=int, default=16, help="KV block size for the grouping summary")
    return parser


def _write(workload, output: Path) -> None:
    from traces.native import save_jsonl, save_parquet

    writer = {".jsonl": save_jsonl, ".parquet": save_parquet}[output.suffix]
    partial = output.with_name(f".{output.name}.partial")
    try:
        writer(workload, partial)
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)


def _summary(records, workload, distinct: int, block_size: int) -> list[str]:
    from scheduler import group_requests

    prompt_tokens = workload.prompt_tokens
    longest = max(r.prompt_len for r in workload.requests)
    grouping = group_requests(workload.requests, block_size)
    sources = lambda key: ", ".join(f"{n:,} {what}" for what, n in Counter(getattr(r, key) for r in records).most_common())
    samples = sum(r.samples for r in records)
    completions = ([f"completions: {samples:,} requests from {len(records):,} prompts (their lines' n), each a "
                    f"request with its prompt"] if samples > len(records) else [])
    return [
        f"prompts: {sources('prompt_from')}", *completions,
        f"output lengths: {sources('output_from')}",
        f"{workload.describe()}",
        f"prompt tokens: mean {prompt_tokens / len(workload.requests):,.0f}, longest {longest:,}",
        f"prefix sharing: {distinct:,} distinct prompt tokens of {prompt_tokens:,}: an unbounded prefix cache "
        f"would reuse {1 - distinct / prompt_tokens:.1%} of prompt tokens",
        f"global prefix groups (BatchLLM, {block_size}-token blocks): {len(grouping.groups):,} groups, "
        f"{len(grouping.plain_ids):,} requests alone, prefill token saving {grouping.saving:.3f}",
    ]


def import_main(argv: list[str]) -> int:
    from traces.prompt_records import load_prompts
    from traces.token_chains import distinct_tokens

    args = _parser().parse_args(argv)
    output = Path(args.output)
    error = lambda message: print(f"batchlab import: error: {message}", file=sys.stderr) or 2
    if output.suffix not in (".jsonl", ".parquet"):
        return error(f"{output}: expected a .jsonl or .parquet output file")
    if args.output_len is not None and args.output_len < 1:
        return error(f"--output-len is {args.output_len}; expected an integer >= 1")
    if args.block_size < 1:
        return error(f"--block-size is {args.block_size}; expected an integer >= 1")
    started = time.perf_counter()
    progress = lambda message: print(message, file=sys.stderr, flush=True)
    try:
        workload, records = load_prompts(args.input, args.tokenizer, args.output_len, args.limit, progress)
    except WorkloadError as failure:
        return error(str(failure))
    _write(workload, output)
    chains = [r.prompt for r in workload.requests]
    for text in _summary(records, workload, distinct_tokens(chains), args.block_size):
        print(text)
    print(f"wrote {output} in {time.perf_counter() - started:.1f} s; simulate it with\n"
          f"  batchlab simulate workload=file workload.path={output}")
    return 0
