"""Issue 6's shared-prefix benchmark case, shared by bench_kernels.py, shared_prefix_parts.py and
precompile.py: its inputs (prefix 2048, suffix 128, 16 requests a prefix, 8 prefixes, scattered
block tables), the two kernels' calls on them, and the settings bench_kernels.py sweeps."""
from __future__ import annotations

from itertools import product

import torch


def relative_error(out: torch.Tensor, reference: torch.Tensor) -> float:
    """The largest difference of ``out`` from ``reference`` over the largest value of the latter
    (best_shared_prefix.TOLERANCE bounds it for a sweep row)."""
    return ((out.float() - reference.float()).abs().max() / reference.float().abs().max()).item()


def shared_sweep(dry: bool) -> list[dict]:
    """The shared-prefix settings timed, the likeliest first (a stage cut short keeps the rows
    timed): warps x stages x split length x KV blocks a loop iteration (``pages``) x where the
    merge runs (a second launch; fused, prefixes' programs first; fused, sequences' first) x
    members a prefix program stacks (None: a whole group). 2026-12-04's H200 sweep (4/8 warps,
    2/3 stages, splits 8/16/32, 1/2/4 pages): best 4 warps, 2 stages, split 16, 2 pages; 8 warps
    all behind. Registers (sm_90, Triton 3.6 as on the GPU; README): a whole group of 16 at 4 warps
    158-162 (3 programs a multiprocessor; fused merge too), at 2 warps spilled (not swept); 8
    members 99-216, 4 members 94-168."""
    merges = ((False, True), (True, True), (True, False))
    if dry:
        grids = [((4,), (3,), (1, 2), (1, 2), merges, (None, 1))]
    else:
        # fewer members a program: parallelism that costs no partials (splits do), so 64 blocks a split too
        grids = [((4,), (2,), (16, 32), (2, 4), merges, (None, 8, 4)),  # 2026-12-04's best region
                 ((4,), (2, 3), (64,), (2, 4), merges, (8, 4)),
                 ((4,), (3,), (16, 32), (2, 4), merges, (8, 4)),
                 ((2,), (2,), (16, 32, 64), (2, 4), merges, (4,)),
                 ((4,), (3,), (16, 32), (2, 4), merges[1:], (None,))]  # the fused merge's registers at 3 stages
    return [dict(num_warps=warps, num_stages=stages, prefix_blocks_per_split=split, pages=pages,
                 fused_merge=fused_merge, prefix_first=prefix_first, members_per_program=members)
            for grid in grids
            for warps, stages, split, pages, (fused_merge, prefix_first), members in product(*grid)]


# the merge's options at their defaults: a merge sweep row with these is the kernel sweep's own
MERGE_DEFAULTS = {"fp32_partials": True, "merge_eager": False, "merge_rows": 1, "merge_warps": None}


def merge_options(dry: bool) -> list[dict]:
    """The merge's settings: partials in fp32 or the query's dtype x read in one trip to memory
    (``merge_eager``) or two x rows a merge program and its warps (Triton's default 4 where
    None). 2026-12-04's H200 parts: the launched merge took 0.013-0.014 ms of the best call's
    0.070 whether it read 9 slots a row or 3, a latency and not a bandwidth (35 % of the copy's)."""
    launches = ((1, None), (2, 2)) if dry else ((1, 1), (1, 2), (1, None), (4, 1), (4, 2), (4, 4), (8, 2), (8, 4),
                                                 (16, 4))
    return [{"fp32_partials": fp32, "merge_eager": eager, "merge_rows": rows, "merge_warps": warps}
            for fp32, eager in product((True, False), (False, True)) for rows, warps in launches]


def merge_sweep(rows: list[dict], dry: bool) -> list[dict]:
    """Whole-call settings that time the merge's options after the kernel sweep (``rows``, best
    first): its fastest launched-merge setting with each merge option but the defaults (which it
    was timed with), and its fastest fused-merge setting with each partials' dtype and way of
    reading (rows and warps are a launched merge's)."""
    from best_shared_prefix import TOLERANCE  # only settings whose output was right

    settings = []
    for fused in (False, True):
        best = next((row for row in rows if row["fused_merge"] is fused and row["relative_error"] <= TOLERANCE), None)
        if best is None:
            continue
        kernel = {name: best[name] for name in shared_sweep(dry)[0]}
        settings += [{**kernel, **merge} for merge in merge_options(dry) if merge != MERGE_DEFAULTS
                     and not (fused and (merge["merge_rows"], merge["merge_warps"]) != (1, None))]
    return settings


def merge_warmups(dry: bool) -> list[dict]:
    """merge_sweep's likely settings, for precompile.py, before the kernel sweep says which are
    best: the merge's variants differ by the slots a row (the split length), so merge_sweep on the
    first launched-merge setting of each split length and on the first fused one."""
    firsts = {}
    for options in shared_sweep(dry):
        firsts.setdefault((options["fused_merge"], None if options["fused_merge"] else options["prefix_blocks_per_split"]),
                          options)
    return [setting for options in firsts.values() for setting in merge_sweep([{**options, "relative_error": 0.0}], dry)]


def per_request_sweep(dry: bool) -> list[dict]:
    """The per-request kernel's settings timed at the shared-prefix shape (its own best)."""
    return [dict(num_warps=warps, num_stages=2, blocks_per_split=split)
            for warps, split in (((4, 1),) if dry else product((2, 4), (16, 32, 64)))]


def sweep_calls(case: dict, head_dim: int, layout) -> tuple:
    """The per-request kernel over every request's whole context and the shared-prefix kernel
    with the step's ``layout``, on ``case`` (shared_prefix_case), each taking its options."""
    from kernels.paged_decode import paged_decode_attention
    from kernels.shared_prefix import shared_prefix_decode_attention

    query, key, value, tables, contexts = (case[k] for k in ("query", "key", "value", "tables", "contexts"))

    def per_request(**options):
        return paged_decode_attention(query, key, value, tables, contexts, head_dim ** -0.5,
                                      max_context=case["prefix"] + case["suffix"], **options)

    def shared(**options):
        return shared_prefix_decode_attention(query, key, value, tables, contexts, case["group_list"],
                                              head_dim ** -0.5, layout=layout, **options)

    return per_request, shared


def shared_prefix_case(shape: tuple, dtype, device: str, dry: bool, groups: int | None = None) -> dict:
    """Issue 6's shared-prefix shape (prefix 2048, suffix 128, 16 requests a prefix, 8 prefixes
    unless ``groups`` says; tiny in a dry run): caches, block tables (each group's prefix blocks,
    then each member's own, all scattered), contexts, queries and the groups."""
    heads, kv_heads, head_dim, block_size = shape
    prefix, suffix, per_group, default_groups = (32, 16, 2, 2) if dry else (2048, 128, 16, 8)
    groups = groups or default_groups
    seqs = per_group * groups
    prefix_blocks, suffix_blocks = prefix // block_size, suffix // block_size
    num_blocks = groups * prefix_blocks + seqs * suffix_blocks
    key = torch.randn((num_blocks, block_size, kv_heads, head_dim), device=device, dtype=dtype)
    order = torch.randperm(num_blocks, device=device).to(torch.int32)
    tables = torch.empty((seqs, prefix_blocks + suffix_blocks), dtype=torch.int32, device=device)
    for g in range(groups):
        for m in range(per_group):
            own = groups * prefix_blocks + (g * per_group + m) * suffix_blocks
            tables[g * per_group + m] = torch.cat([order[g * prefix_blocks:(g + 1) * prefix_blocks],
                                                   order[own:own + suffix_blocks]])
    return {"prefix": prefix, "suffix": suffix, "per_group": per_group, "groups": groups, "key": key,
            "value": torch.randn_like(key), "tables": tables,
            "contexts": torch.full((seqs,), prefix + suffix, dtype=torch.int32, device=device),
            "query": torch.randn((seqs, heads, head_dim), device=device, dtype=dtype),
            "group_list": [(prefix, list(range(g * per_group, (g + 1) * per_group))) for g in range(groups)]}
