"""Shared-prefix decode attention (Hydragen, BatchLLM §5), fused into one launch.

For a group of requests whose first ``prefix_len`` tokens are the same KV blocks, the
prefix attention is computed once with all the group's queries stacked (rows = members x
query heads of one kv head: a matrix product instead of many matrix-vector products), each
request's own tokens separately, and the two partials merged exactly through log-sum-exp in
fp32. As in BatchLLM, one launch does both: the first programs take the prefixes, the rest the
distinct parts (horizontal fusion).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import LOG2E, attend_blocks, dot_precision, merge_partials


@triton.jit
def _store_partial(acc, m_i, l_i, out_rows, live, slot, parts_ptr, lse_ptr, HEAD_DIM: tl.constexpr):
    dims = tl.arange(0, HEAD_DIM)
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    lse = tl.where(l_i == 0.0, float("-inf"), m_i + tl.log2(tl.where(l_i == 0.0, 1.0, l_i)))
    tl.store(parts_ptr + (out_rows[:, None] * 2 + slot) * HEAD_DIM + dims[None, :], out, mask=live[:, None])
    tl.store(lse_ptr + out_rows * 2 + slot, lse, mask=live)


@triton.jit
def _shared_prefix_kernel(q_ptr, k_ptr, v_ptr, tables_ptr, context_ptr, skip_ptr,
                          group_rows_ptr, group_size_ptr, group_prefix_ptr, group_seq_ptr,
                          parts_ptr, lse_ptr, num_groups, kv_heads, heads,
                          stride_qs, stride_kb, stride_ks, stride_kh, stride_t, stride_g, scale,
                          GROUP: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_M: tl.constexpr,
                          HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr, DOT_PRECISION: tl.constexpr):
    program = tl.program_id(0)
    kv_head = tl.program_id(1)
    dims = tl.arange(0, HEAD_DIM)
    if program < num_groups:
        # prefix part: every member's query heads of this kv head, stacked (_p: this branch's names)
        group_p = program
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
        acc_p, m_i_p, l_i_p = attend_blocks(q_p, k_ptr + kv_head * stride_kh, v_ptr + kv_head * stride_kh,
                                      tables_ptr + first_seq_p * stride_t, 0, prefix_p, rows_p, stride_kb,
                                      stride_ks, BLOCK_SIZE, HEAD_DIM, BLOCK_M, DOT_PRECISION, False)
        # each branch stores its own partial: the two tiles have different row counts
        _store_partial(acc_p, m_i_p, l_i_p, seq_p * heads + head_p, live_p, 0, parts_ptr, lse_ptr, HEAD_DIM)
    else:
        # distinct part: one sequence's own tokens after its shared prefix
        seq = (program - num_groups).to(tl.int64)
        rows = tl.arange(0, BLOCK_G)
        live = rows < GROUP
        head = kv_head * GROUP + rows
        q = tl.load(q_ptr + seq * stride_qs + head[:, None] * HEAD_DIM + dims[None, :],
                    mask=live[:, None], other=0.0).to(tl.float32) * (scale * LOG2E)
        context = tl.load(context_ptr + seq)
        skip = tl.load(skip_ptr + seq)
        acc, m_i, l_i = attend_blocks(q, k_ptr + kv_head * stride_kh, v_ptr + kv_head * stride_kh,
                                      tables_ptr + seq * stride_t, skip // BLOCK_SIZE, context, rows, stride_kb,
                                      stride_ks, BLOCK_SIZE, HEAD_DIM, BLOCK_G, DOT_PRECISION, False)
        _store_partial(acc, m_i, l_i, seq * heads + head, live, 1, parts_ptr, lse_ptr, HEAD_DIM)


def shared_prefix_decode_attention(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                                   block_tables: torch.Tensor, context_lens: torch.Tensor,
                                   groups: list[tuple[int, list[int]]], scale: float,
                                   out: torch.Tensor | None = None) -> torch.Tensor:
    """Decode attention where ``groups`` lists (prefix length, sequence indices) of requests
    whose block tables start with the same ``prefix length / block size`` blocks. Sequences in
    no group attend normally (their "distinct" part is their whole context)."""
    seqs, heads, head_dim = query.shape
    _, block_size, kv_heads, _ = key_cache.shape
    if heads % kv_heads or key_cache.shape[-1] != head_dim or value_cache.shape != key_cache.shape:
        raise ValueError("query, key and value shapes do not agree")
    if block_tables.dtype != torch.int32 or context_lens.dtype != torch.int32 or not block_tables.is_contiguous():
        raise ValueError("block_tables and context_lens must be contiguous int32")
    skip = torch.zeros(seqs, dtype=torch.int32, device=query.device)
    for prefix, members in groups:
        if prefix % block_size or prefix <= 0:
            raise ValueError(f"a shared prefix of {prefix} tokens is not a positive whole number of blocks")
        first = block_tables[members[0], : prefix // block_size]
        for member in members:
            if int(context_lens[member]) <= prefix or not torch.equal(block_tables[member, : prefix // block_size], first):
                raise ValueError(f"sequence {member} does not start with its group's prefix blocks")
            skip[member] = prefix
    group = heads // kv_heads
    max_members = max((len(m) for _, m in groups), default=1)
    rows = torch.zeros((max(len(groups), 1), max_members), dtype=torch.int32, device=query.device)
    sizes = torch.zeros(max(len(groups), 1), dtype=torch.int32, device=query.device)
    prefixes = torch.zeros_like(sizes)
    first_seq = torch.zeros_like(sizes)
    for index, (prefix, members) in enumerate(groups):
        rows[index, : len(members)] = torch.tensor(members, dtype=torch.int32)
        sizes[index], prefixes[index], first_seq[index] = len(members), prefix, members[0]
    parts = torch.zeros((seqs * heads, 2, head_dim), device=query.device, dtype=torch.float32)
    lse = torch.full((seqs * heads, 2), float("-inf"), device=query.device, dtype=torch.float32)
    _shared_prefix_kernel[(len(groups) + seqs, kv_heads)](
        query, key_cache, value_cache, block_tables, context_lens, skip, rows, sizes, prefixes, first_seq,
        parts, lse, len(groups), kv_heads, heads, query.stride(0), key_cache.stride(0), key_cache.stride(1),
        key_cache.stride(2), block_tables.stride(0), rows.stride(0), scale, GROUP=group,
        BLOCK_G=max(16, triton.next_power_of_2(group)),
        BLOCK_M=max(16, triton.next_power_of_2(max_members * group)), HEAD_DIM=head_dim, BLOCK_SIZE=block_size,
        DOT_PRECISION=dot_precision(query.dtype))
    if out is None:
        out = torch.empty_like(query)
    if out.shape != query.shape or out.dtype != query.dtype or not out.is_contiguous():
        raise ValueError("out must be a contiguous tensor shaped and typed like query")
    merge_partials(parts, lse, out.view(seqs * heads, head_dim))
    return out
