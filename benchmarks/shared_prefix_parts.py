"""Where the shared-prefix kernel's time goes (issue 6): device time (CUDA graphs) of the fused
call, of its prefix programs alone, of its distinct programs alone and of the merge, each with
the bytes it must move as a fraction of the copy bandwidth, over the kernel's tile options
(KV blocks a loop iteration, rows of a distinct program's tile). bench_kernels.py's shape:
prefix 2048, suffix 128, 16 requests a prefix, 8 prefixes, Llama-3.1-8B's heads, bf16.

    python benchmarks/shared_prefix_parts.py            # on a GPU; prints a table, writes
                                                        # benchmarks/results/shared-prefix-parts-<device>-<date>.json
    TRITON_INTERPRET=1 python benchmarks/shared_prefix_parts.py --dry-run   # tiny, on CPU
"""
from __future__ import annotations

import json
import sys
import time
from datetime import date
from itertools import product
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: kernels/


def main(argv: list[str]) -> int:
    dry = "--dry-run" in argv
    if not dry and not torch.cuda.is_available():
        print("shared_prefix_parts: no CUDA device here")
        return 0
    import triton
    import triton.testing

    from kernels.common import merge_partials
    from kernels.paged_decode import paged_decode_attention
    from kernels.shared_prefix import (_shared_prefix_kernel, launch_constants, shared_prefix_decode_attention,
                                       shared_prefix_layout)

    from bench_kernels import copy_bandwidth
    from shared_prefix_case import relative_error, shared_prefix_case  # bench_kernels.py's shape, inputs

    device, dtype = ("cpu", torch.float32) if dry else ("cuda", torch.bfloat16)
    heads, kv_heads, head_dim, block_size = (4, 2, 16, 16) if dry else (32, 8, 128, 16)

    def timed(function) -> float:
        if dry:
            started = time.perf_counter()
            function()
            return (time.perf_counter() - started) * 1e3
        from triton.testing import do_bench_cudagraph
        return do_bench_cudagraph(function, return_mode="median")

    # the copy bandwidth as bench_kernels.py measures it (a plain launch, 2 GiB): the same copy
    # captured in a CUDA graph read only 2,770 GB/s against 4,244 on the H200 (2026-12-04; a
    # graph's memcpy node, it seems, is not the copy kernel), and kernels beat that (paged decode
    # 3,390 GB/s), so the graph figure is no ceiling; the 2026-12-04 parts file is against it
    copy_bw = copy_bandwidth(device, timed if dry else triton.testing.do_bench, 1 << 12 if dry else 1 << 30)
    case = shared_prefix_case((heads, kv_heads, head_dim, block_size), dtype, device, dry)
    prefix, suffix, per_group, groups = case["prefix"], case["suffix"], case["per_group"], case["groups"]
    key, value, tables, contexts, query, group_list = (case[k] for k in ("key", "value", "tables", "contexts", "query",
                                                                         "group_list"))
    seqs, prefix_blocks = per_group * groups, prefix // block_size
    layout = shared_prefix_layout(tables.tolist(), contexts.tolist(), group_list, block_size, device)
    scale, group = head_dim ** -0.5, heads // kv_heads
    kv_row = kv_heads * head_dim * key.element_size() * 2  # a token's keys and values, bytes
    rows = {"device": "dry run" if dry else torch.cuda.get_device_name(), "date": date.today().isoformat(),
            "torch": torch.__version__, "triton": triton.__version__, "copy_bandwidth_gb_s": copy_bw / 1e9,
            "per_request_ms": timed(lambda: paged_decode_attention(query, key, value, tables, contexts, scale,
                                                                   max_context=prefix + suffix)),
            "parts": []}
    reference = paged_decode_attention(query, key, value, tables, contexts, scale)
    path = Path(__file__).resolve().parent / "results" / \
        f"shared-prefix-parts-{rows['device'].replace(' ', '-')}-{rows['date']}.json"

    def save() -> None:
        """Everything so far written (a GPU stage's time may end before the sweeps do)."""
        if not dry:
            path.parent.mkdir(exist_ok=True)
            path.write_text(json.dumps(rows, indent=2))

    def tiles(members: int) -> int:  # a group's prefix programs a split (members_per_program)
        return launch_constants(dtype, group, head_dim, block_size, layout.max_members, 1, members)["MEMBER_TILES"]

    def launch(grid, num_groups, splits, split_blocks, parts, lse, pages, block_g, warps, stages, members):
        # the wrapper's constants (the same compiled kernel), but for the distinct tile's rows
        constants = launch_constants(dtype, group, head_dim, block_size, layout.max_members, splits, members, pages)
        return _shared_prefix_kernel[grid](  # the compiled kernel (None in the interpreter)
            query, key, value, tables, contexts, layout.skip, layout.rows, layout.sizes, layout.prefixes,
            layout.first_seq, parts, lse, parts, lse, lse, seqs, num_groups, splits, split_blocks, kv_heads, heads,
            query.stride(0),
            key.stride(0), key.stride(1), key.stride(2), tables.stride(0), layout.rows.stride(0), scale,
            **{**constants, "BLOCK_G": block_g}, num_warps=warps, num_stages=stages)

    def buffers(split_blocks: int, partials=torch.float32):
        """The prefix's splits and the kernel's partials (fp32 unless said) and their fp32 log-sum-exps."""
        splits = max(1, triton.cdiv(prefix_blocks, split_blocks))
        return (splits, torch.empty((seqs * heads, 1 + splits, head_dim), device=device, dtype=partials),
                torch.empty((seqs * heads, 1 + splits), device=device, dtype=torch.float32))

    def merge_bytes(splits: int, partial_bytes: int = 4) -> int:  # the partials read, the output written
        return seqs * heads * ((1 + splits) * (head_dim * partial_bytes + 4) + head_dim * query.element_size())

    def error_of(out) -> float:
        return relative_error(out, reference)

    # (prefix blocks a split, KV blocks a loop iteration, rows of a distinct tile, warps, stages,
    # members a prefix program stacks). 2026-12-04 (the first six columns' sweep): 8 warps and 8
    # pages slowest, 1 page behind 2; fewer members a program (new) hold fewer registers: on sm_90
    # 160 a thread at 16 members (3 programs a multiprocessor), 101 at 8 (4), 96 at 4 (5)
    options = [(16, 2, 16, 4, 2, 16), (16, 2, 32, 4, 2, 16), (16, 4, 16, 4, 2, 16), (32, 2, 16, 4, 2, 16),
               (16, 2, 16, 2, 2, 16), (16, 2, 16, 4, 2, 8), (16, 2, 16, 4, 2, 4), (32, 2, 16, 4, 2, 4),
               (32, 4, 16, 4, 2, 4), (16, 2, 16, 2, 2, 4), (64, 2, 16, 4, 2, 4), (32, 2, 16, 4, 2, 8)]
    for split_blocks, pages, block_g, warps, stages, members in options[:1] + [(1, 2, 32, 4, 2, 1)] if dry else options:
        splits, parts, lse = buffers(split_blocks)
        settings = (splits, split_blocks, parts, lse, pages, block_g, warps, stages, members)
        prefix_programs = groups * splits * tiles(members)
        both = lambda: launch((prefix_programs + seqs, kv_heads), groups, *settings)  # noqa: E731
        prefix_only = lambda: launch((prefix_programs, kv_heads), groups, *settings)  # noqa: E731
        # every program a distinct one: num_groups 0 (the layout's skips still start them past the prefix)
        distinct_only = lambda: launch((seqs, kv_heads), 0, *settings)  # noqa: E731
        out = torch.empty_like(query)
        merge = lambda: merge_partials(parts, lse, out.view(seqs * heads, head_dim))  # noqa: E731
        compiled = both()
        merge()
        error = error_of(out)
        def fused(fused_merge: bool = False, prefix_first: bool = True):
            return shared_prefix_decode_attention(
                query, key, value, tables, contexts, group_list, scale, layout=layout,
                prefix_blocks_per_split=split_blocks, pages=pages, num_warps=warps, num_stages=stages,
                fused_merge=fused_merge, prefix_first=prefix_first, members_per_program=members)
        prefix_bytes = groups * prefix * kv_row + seqs * heads * splits * (head_dim + 1) * 4
        distinct_bytes = seqs * suffix * kv_row + seqs * heads * (head_dim + 1) * 4
        row = {"split_blocks": split_blocks, "pages": pages, "block_g": block_g, "members": members, "num_warps": warps,
               "num_stages": stages, "relative_error": error,
               # the library call tiles a distinct program's rows in 16 (4 query heads a kv head here)
               "fused_ms": timed(fused) if block_g == 16 else None, "kernel_ms": timed(both),
               "prefix_ms": timed(prefix_only), "distinct_ms": timed(distinct_only), "merge_ms": timed(merge),
               # as the device's compiler gave them (kernels.compile_check counts them without a GPU)
               "registers": getattr(compiled, "n_regs", None), "spills": getattr(compiled, "n_spills", None)}
        if block_g == 16:  # the merge in the kernel's launch, prefixes' programs first or last
            for prefix_first in (True, False):
                name = "fused_merge_ms" if prefix_first else "fused_merge_distinct_first_ms"
                row[name] = timed(lambda: fused(True, prefix_first))
                row[name.replace("_ms", "_error")] = error_of(fused(True, prefix_first))
        for part, moved in (("prefix", prefix_bytes), ("distinct", distinct_bytes), ("merge", merge_bytes(splits))):
            row[f"{part}_of_copy_bandwidth"] = moved / (row[f"{part}_ms"] / 1e3) / copy_bw
        rows["parts"].append(row)
        save()
        print(f"split {split_blocks:>3} pages {pages} rows {block_g:>2} members {members:>2} warps {warps} stages {stages}: fused "
              f"{row['fused_ms'] or float('nan'):.4f} ms = kernel {row['kernel_ms']:.4f} (prefix {row['prefix_ms']:.4f}, "
              f"{row['prefix_of_copy_bandwidth']:.0%} bw; distinct {row['distinct_ms']:.4f}, "
              f"{row['distinct_of_copy_bandwidth']:.0%} bw) + merge {row['merge_ms']:.4f} "
              f"({row['merge_of_copy_bandwidth']:.0%} bw); error {error:.1e}; registers {row['registers']}, "
              f"spills {row['spills']}", flush=True)
        if "fused_merge_ms" in row:
            print(f"split {split_blocks:>3} pages {pages} rows {block_g:>2} members {members:>2} warps {warps} stages {stages}: merge fused "
                  f"{row['fused_merge_ms']:.4f} ms (error {row['fused_merge_error']:.1e}), the sequences' programs "
                  f"first {row['fused_merge_distinct_first_ms']:.4f} ms (error {row['fused_merge_distinct_first_error']:.1e})",
                  flush=True)
    # the merge over several rows a program and warps, reading in two trips or one (eager), of
    # partials in fp32 or the query's dtype (the first option's kernel's partials, so written)
    split_blocks, pages = options[0][:2]
    rows["merge_sweep"] = []
    launches = ((1, 4), (4, 4)) if dry else [(r, w) for r in (1, 2, 4, 8, 16) for w in (1, 2, 4)]
    written = {}  # partials' dtype -> the kernel's splits, partials and log-sum-exps, written once
    for partials, eager, (rows_per_program, warps) in product((torch.float32, dtype), (False, True), launches):
        if partials not in written:
            written[partials] = splits, parts, lse = buffers(split_blocks, partials)
            launch((groups * splits * tiles(16) + seqs, kv_heads), groups, splits, split_blocks, parts, lse, pages, 16,
                   4, 2, 16)
        splits, parts, lse = written[partials]
        out = torch.full_like(query, float("nan"))
        merge = lambda: merge_partials(parts, lse, out.view(seqs * heads, head_dim),  # noqa: E731
                                       rows_per_program=rows_per_program, num_warps=warps, eager=eager)
        merge()
        error = error_of(out)
        ms = timed(merge)
        rows["merge_sweep"].append({"rows_per_program": rows_per_program, "num_warps": warps, "eager": eager,
                                    "partials": str(partials).removeprefix("torch."), "ms": ms,
                                    "of_copy_bandwidth": merge_bytes(splits, parts.element_size()) / (ms / 1e3)
                                    / copy_bw, "relative_error": error})
        print(f"merge, {rows_per_program:>2} rows a program, {warps} warps, {'one trip' if eager else 'two trips'}, "
              f"{rows['merge_sweep'][-1]['partials']} partials: {ms:.4f} ms, "
              f"{rows['merge_sweep'][-1]['of_copy_bandwidth']:.0%} of the copy bandwidth; error {error:.1e}", flush=True)
        save()
    ideal = (groups * prefix + seqs * suffix) * kv_row / copy_bw * 1e3
    rows["ideal_kv_read_ms"] = ideal
    print(f"per request {rows['per_request_ms']:.4f} ms; the KV read once at the copy bandwidth: {ideal:.4f} ms "
          f"({rows['per_request_ms'] / ideal:.1f}x at most)")
    save()
    if not dry:
        print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
