"""Shared-prefix decode attention (Hydragen, BatchLLM §5), fused into one launch.

For a group of requests whose first ``prefix_len`` tokens are the same KV blocks, the
prefix attention is computed once with all the group's queries stacked (rows = members x
query heads of one kv head: a matrix product instead of many matrix-vector products), each
request's own tokens separately, and the two partials merged exactly through log-sum-exp in
fp32. As in BatchLLM, one launch does both: the first programs take the prefixes, the rest the
distinct parts (horizontal fusion). A long prefix is split over several programs (split-KV, as
in paged decode), each a partial merged by the same log-sum-exp: a few groups would otherwise
leave most of a GPU's multiprocessors idle while one program per group and kv head streams the
whole prefix (8 groups x 8 kv heads are 64 programs on an H100's 132 multiprocessors).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .common import LOG2E, attend_blocks, attend_pages, dot_precision, launch_options, merge_partials


@triton.jit
def _store_partial(acc, m_i, l_i, out_rows, live, slot, num_slots, parts_ptr, lse_ptr, HEAD_DIM: tl.constexpr):
    dims = tl.arange(0, HEAD_DIM)
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    lse = tl.where(l_i == 0.0, float("-inf"), m_i + tl.log2(tl.where(l_i == 0.0, 1.0, l_i)))
    tl.store(parts_ptr + (out_rows[:, None] * num_slots + slot) * HEAD_DIM + dims[None, :], out, mask=live[:, None])
    tl.store(lse_ptr + out_rows * num_slots + slot, lse, mask=live)


@triton.jit
def _shared_prefix_kernel(q_ptr, k_ptr, v_ptr, tables_ptr, context_ptr, skip_ptr,
                          group_rows_ptr, group_size_ptr, group_prefix_ptr, group_seq_ptr,
                          parts_ptr, lse_ptr, num_groups, prefix_splits, split_blocks, kv_heads, heads,
                          stride_qs, stride_kb, stride_ks, stride_kh, stride_t, stride_g, scale,
                          GROUP: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_M: tl.constexpr,
                          HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr, DOT_PRECISION: tl.constexpr,
                          PAGES: tl.constexpr = 1):
    program = tl.program_id(0)
    kv_head = tl.program_id(1)
    dims = tl.arange(0, HEAD_DIM)
    num_slots = prefix_splits + 1  # per query row: its own tokens' partial, then one per prefix split
    if program < num_groups * prefix_splits:
        # a split of a prefix: every member's query heads of this kv head, stacked (_p: this branch's names)
        group_p = program // prefix_splits
        split_p = program % prefix_splits
        size_p = tl.load(group_size_ptr + group_p)
        rows_p = tl.arange(0, BLOCK_M)
        member_p = rows_p // GROUP
        live_p = member_p < size_p
        seq_p = tl.load(group_rows_ptr + group_p * stride_g + member_p, mask=live_p, other=0).to(tl.int64)
        head_p = kv_head * GROUP + rows_p % GROUP
        q_p = tl.load(q_ptr + seq_p[:, None] * stride_qs + head_p[:, None] * HEAD_DIM + dims[None, :],
                    mask=live_p[:, None], other=0.0).to(tl.float32) * (scale * LOG2E)
        prefix_p = tl.load(group_prefix_ptr + group_p)
        first_seq_p = tl.load(group_seq_ptr + group_p).to(tl.int64)  # its table holds the prefix blocks
        first_p = split_p * split_blocks  # a split past a short prefix is empty: its partial weighs 0
        end_p = tl.minimum(prefix_p, (first_p + split_blocks) * BLOCK_SIZE)
        if PAGES == 1:
            acc_p, m_i_p, l_i_p = attend_blocks(q_p, k_ptr + kv_head * stride_kh, v_ptr + kv_head * stride_kh,
                                                tables_ptr + first_seq_p * stride_t, first_p, end_p, rows_p,
                                                stride_kb, stride_ks, BLOCK_SIZE, HEAD_DIM, BLOCK_M, DOT_PRECISION,
                                                False)
        else:
            acc_p, m_i_p, l_i_p = attend_pages(q_p, k_ptr + kv_head * stride_kh, v_ptr + kv_head * stride_kh,
                                               tables_ptr + first_seq_p * stride_t, first_p, end_p, stride_kb,
                                               stride_ks, BLOCK_SIZE, PAGES, HEAD_DIM, BLOCK_M, DOT_PRECISION)
        # each branch stores its own partial: the two tiles have different row counts
        _store_partial(acc_p, m_i_p, l_i_p, seq_p * heads + head_p, live_p, 1 + split_p, num_slots, parts_ptr,
                       lse_ptr, HEAD_DIM)
    else:
        # distinct part: one sequence's own tokens after its shared prefix
        seq = (program - num_groups * prefix_splits).to(tl.int64)
        rows = tl.arange(0, BLOCK_G)
        live = rows < GROUP
        head = kv_head * GROUP + rows
        q = tl.load(q_ptr + seq * stride_qs + head[:, None] * HEAD_DIM + dims[None, :],
                    mask=live[:, None], other=0.0).to(tl.float32) * (scale * LOG2E)
        context = tl.load(context_ptr + seq)
        skip = tl.load(skip_ptr + seq)
        if PAGES == 1:
            acc, m_i, l_i = attend_blocks(q, k_ptr + kv_head * stride_kh, v_ptr + kv_head * stride_kh,
                                          tables_ptr + seq * stride_t, skip // BLOCK_SIZE, context, rows, stride_kb,
                                          stride_ks, BLOCK_SIZE, HEAD_DIM, BLOCK_G, DOT_PRECISION, False)
        else:
            acc, m_i, l_i = attend_pages(q, k_ptr + kv_head * stride_kh, v_ptr + kv_head * stride_kh,
                                         tables_ptr + seq * stride_t, skip // BLOCK_SIZE, context, stride_kb,
                                         stride_ks, BLOCK_SIZE, PAGES, HEAD_DIM, BLOCK_G, DOT_PRECISION)
        _store_partial(acc, m_i, l_i, seq * heads + head, live, 0, num_slots, parts_ptr, lse_ptr, HEAD_DIM)
        if skip == 0:  # in no group: its prefix slots weigh nothing (the buffers come uncleared)
            nothing = tl.full([BLOCK_G], float("-inf"), tl.float32)
            for split in range(prefix_splits):
                tl.store(lse_ptr + (seq * heads + head) * num_slots + 1 + split, nothing, mask=live)


def scratch(shape: tuple, device) -> torch.Tensor:
    """fp32 working memory that the kernel writes before the merge reads it (tests poison it)."""
    return torch.empty(shape, device=device, dtype=torch.float32)


@dataclass(frozen=True)
class SharedPrefixLayout:
    """The groups of one step as the kernel reads them (the same for every layer)."""
    num_groups: int
    max_members: int
    max_prefix: int          # tokens of the longest prefix
    skip: torch.Tensor       # [seqs] int32: tokens of a sequence read through its group's prefix
    rows: torch.Tensor       # [groups, max members] int32: the members' sequence indices
    sizes: torch.Tensor      # [groups] int32
    prefixes: torch.Tensor   # [groups] int32: prefix tokens
    first_seq: torch.Tensor  # [groups] int32: a member whose table holds the prefix blocks


def shared_prefix_layout(block_tables, context_lens, groups: list[tuple[int, list[int]]], block_size: int,
                         device) -> SharedPrefixLayout:
    """Checks that every member's table starts with its group's prefix blocks and that its
    context goes past the prefix, and builds the kernel's group tensors. ``block_tables`` and
    ``context_lens`` are host-side (a sequence of block-id sequences, one of ints): built once
    per step from the plan, without waiting for the device, not once per layer."""
    skip = [0] * len(context_lens)
    max_members = max((len(m) for _, m in groups), default=1)
    rows = [[0] * max_members for _ in range(max(len(groups), 1))]
    sizes, prefixes, first_seq = ([0] * max(len(groups), 1) for _ in range(3))
    for index, (prefix, members) in enumerate(groups):
        if prefix % block_size or prefix <= 0:
            raise ValueError(f"a shared prefix of {prefix} tokens is not a positive whole number of blocks")
        first = list(block_tables[members[0]][: prefix // block_size])
        for member in members:
            if context_lens[member] <= prefix or list(block_tables[member][: prefix // block_size]) != first:
                raise ValueError(f"sequence {member} does not start with its group's prefix blocks")
            skip[member] = prefix
        rows[index][: len(members)] = members
        sizes[index], prefixes[index], first_seq[index] = len(members), prefix, members[0]
    as_device = lambda values: torch.tensor(values, dtype=torch.int32).to(device)
    return SharedPrefixLayout(len(groups), max_members, max(prefixes), as_device(skip), as_device(rows), as_device(sizes),
                              as_device(prefixes), as_device(first_seq))


def shared_prefix_decode_attention(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                                   block_tables: torch.Tensor, context_lens: torch.Tensor,
                                   groups: list[tuple[int, list[int]]], scale: float,
                                   out: torch.Tensor | None = None,
                                   layout: SharedPrefixLayout | None = None, prefix_blocks_per_split: int = 32,
                                   num_warps: int | None = None, num_stages: int | None = None,
                                   sinks: torch.Tensor | None = None, pages: int = 1) -> torch.Tensor:
    """Decode attention where ``groups`` lists (prefix length, sequence indices) of requests
    whose block tables start with the same ``prefix length / block size`` blocks. Sequences in
    no group attend normally (their "distinct" part is their whole context). ``layout``: the
    step's ``shared_prefix_layout``, built once for all layers (built here otherwise).
    ``prefix_blocks_per_split``: KV blocks of a prefix one program reads.
    ``num_warps``, ``num_stages``: Triton's launch options (its defaults where None).
    ``pages``: KV blocks a program reads per loop iteration (a power of two; 1: block by block).
    ``sinks`` [heads]: a logit per head in the softmax's denominator (gpt-oss; no sliding window
    here: the backend sends a windowed layer's decodes to paged decode)."""
    seqs, heads, head_dim = query.shape
    _, block_size, kv_heads, _ = key_cache.shape
    if heads % kv_heads or key_cache.shape[-1] != head_dim or value_cache.shape != key_cache.shape:
        raise ValueError("query, key and value shapes do not agree")
    if block_tables.dtype != torch.int32 or context_lens.dtype != torch.int32 or not block_tables.is_contiguous():
        raise ValueError("block_tables and context_lens must be contiguous int32")
    if layout is None:
        layout = shared_prefix_layout(block_tables.tolist(), context_lens.tolist(), groups, block_size, query.device)
    if prefix_blocks_per_split < 1:
        raise ValueError(f"prefix_blocks_per_split is {prefix_blocks_per_split}; expected >= 1")
    if pages < 1 or pages & (pages - 1):
        raise ValueError(f"pages is {pages}; expected a power of two")
    group = heads // kv_heads
    splits = max(1, triton.cdiv(triton.cdiv(layout.max_prefix, block_size), prefix_blocks_per_split))
    # every slot written by the kernel (a partial, or -inf where a row has no prefix): no fill
    # kernels (two launches, and 19 MB cleared at 128 requests x 32 heads x 9 slots x 128 dims)
    parts = scratch((seqs * heads, 1 + splits, head_dim), query.device)
    lse = scratch((seqs * heads, 1 + splits), query.device)
    _shared_prefix_kernel[(layout.num_groups * splits + seqs, kv_heads)](
        query, key_cache, value_cache, block_tables, context_lens, layout.skip, layout.rows, layout.sizes,
        layout.prefixes, layout.first_seq, parts, lse, layout.num_groups, splits, prefix_blocks_per_split,
        kv_heads, heads, query.stride(0),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2), block_tables.stride(0), layout.rows.stride(0),
        scale, GROUP=group, BLOCK_G=max(16, triton.next_power_of_2(group)),
        BLOCK_M=max(16, triton.next_power_of_2(layout.max_members * group)), HEAD_DIM=head_dim,
        BLOCK_SIZE=block_size, DOT_PRECISION=dot_precision(query.dtype), PAGES=pages,
        **launch_options(num_warps, num_stages))
    if out is None:
        out = torch.empty_like(query)
    if out.shape != query.shape or out.dtype != query.dtype or not out.is_contiguous():
        raise ValueError("out must be a contiguous tensor shaped and typed like query")
    merge_partials(parts, lse, out.view(seqs * heads, head_dim), sinks)
    return out
