"""Paged decode attention: one query token per sequence, GQA, block tables, ragged context
lengths, split-KV for long contexts (each split a partial attention, merged exactly by LSE)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.attention import softmax_with_sinks

from .common import LOG2E, attend_blocks, dot_precision, launch_options, merge_partials, window_of


@triton.jit
def _paged_decode_kernel(q_ptr, k_ptr, v_ptr, tables_ptr, context_ptr, parts_ptr, lse_ptr,
                         stride_qs, stride_kb, stride_ks, stride_kh, stride_t, blocks_per_split, num_splits,
                         scale, window, GROUP: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr,
                         BLOCK_SIZE: tl.constexpr, DOT_PRECISION: tl.constexpr, WINDOW: tl.constexpr):
    seq = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    context = tl.load(context_ptr + seq)
    rows = tl.arange(0, BLOCK_G)
    dims = tl.arange(0, HEAD_DIM)
    heads = kv_head * GROUP + rows
    q = tl.load(q_ptr + seq * stride_qs + heads[:, None] * HEAD_DIM + dims[None, :],
                mask=rows[:, None] < GROUP, other=0.0).to(tl.float32) * (scale * LOG2E)
    first = split * blocks_per_split
    if WINDOW:  # the splits cover the window's blocks only
        first += tl.maximum(context - window, 0) // BLOCK_SIZE
    end = tl.minimum(context, (first + blocks_per_split) * BLOCK_SIZE)
    positions = tl.zeros([BLOCK_G], tl.int32) + context - 1
    acc, m_i, l_i = attend_blocks(q, k_ptr + kv_head * stride_kh, v_ptr + kv_head * stride_kh,
                                  tables_ptr + seq * stride_t, first, end, positions, stride_kb, stride_ks,
                                  BLOCK_SIZE, HEAD_DIM, BLOCK_G, DOT_PRECISION, False, window, WINDOW)
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    lse = tl.where(l_i == 0.0, float("-inf"), m_i + tl.log2(tl.where(l_i == 0.0, 1.0, l_i)))
    out_rows = (seq * (tl.num_programs(1) * GROUP) + heads).to(tl.int64)
    tl.store(parts_ptr + (out_rows[:, None] * num_splits + split) * HEAD_DIM + dims[None, :], out,
             mask=rows[:, None] < GROUP)
    tl.store(lse_ptr + out_rows * num_splits + split, lse, mask=rows < GROUP)


def paged_decode_attention(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                           block_tables: torch.Tensor, context_lens: torch.Tensor, scale: float,
                           blocks_per_split: int = 32, out: torch.Tensor | None = None,
                           max_context: int | None = None, num_warps: int | None = None,
                           num_stages: int | None = None, window: int | None = None,
                           sinks: torch.Tensor | None = None) -> torch.Tensor:
    """``query`` [seqs, heads, d]; caches [blocks, block_size, kv_heads, d] (one layer);
    ``block_tables`` [seqs, max_blocks] int32; ``context_lens`` [seqs] int32 -> [seqs, heads, d].
    ``max_context``: the largest context, if the caller knows it (read from ``context_lens``
    otherwise, which waits for the device). ``num_warps``, ``num_stages``: Triton's launch
    options (its defaults where None; benchmarks/bench_kernels.py sweeps them on a GPU).
    ``window``: each sequence sees its last ``window`` tokens only; ``sinks`` [heads]: a logit
    per head in the softmax's denominator (gpt-oss)."""
    seqs, heads, head_dim = query.shape
    _, block_size, kv_heads, cache_dim = key_cache.shape
    if cache_dim != head_dim or value_cache.shape != key_cache.shape:
        raise ValueError(f"cache shape {tuple(key_cache.shape)} does not fit queries {tuple(query.shape)}")
    if heads % kv_heads:
        raise ValueError(f"{heads} query heads are not a multiple of {kv_heads} kv heads")
    if block_tables.shape[0] != seqs or context_lens.shape != (seqs,):
        raise ValueError("block_tables and context_lens need one row per sequence")
    if block_tables.dtype != torch.int32 or context_lens.dtype != torch.int32:
        raise ValueError("block_tables and context_lens must be int32")
    if not (query.is_contiguous() and key_cache.is_contiguous() and value_cache.is_contiguous()
            and block_tables.is_contiguous()):
        raise ValueError("query, caches and block tables must be contiguous")
    if query.dtype != key_cache.dtype:
        raise ValueError(f"query dtype {query.dtype} differs from the cache's {key_cache.dtype}")
    if max_context is None:
        max_context = int(context_lens.max()) if seqs else 0
    window = window_of(window)
    if window:  # the blocks a window can touch
        max_context = min(max_context, window + block_size - 1)
    num_splits = max(1, triton.cdiv(triton.cdiv(max_context, block_size), blocks_per_split))
    group = heads // kv_heads
    parts = torch.empty((seqs * heads, num_splits, head_dim), device=query.device, dtype=torch.float32)
    lse = torch.empty((seqs * heads, num_splits), device=query.device, dtype=torch.float32)
    if seqs:
        _paged_decode_kernel[(seqs, kv_heads, num_splits)](
            query, key_cache, value_cache, block_tables, context_lens, parts, lse,
            query.stride(0), key_cache.stride(0), key_cache.stride(1), key_cache.stride(2), block_tables.stride(0),
            blocks_per_split, num_splits, scale, window, GROUP=group, BLOCK_G=max(16, triton.next_power_of_2(group)),
            HEAD_DIM=head_dim, BLOCK_SIZE=block_size, DOT_PRECISION=dot_precision(query.dtype), WINDOW=window > 0,
            **launch_options(num_warps, num_stages))
    if out is None:
        out = torch.empty_like(query)
    if out.shape != query.shape or out.dtype != query.dtype or not out.is_contiguous():
        raise ValueError("out must be a contiguous tensor shaped and typed like query")
    if seqs:
        merge_partials(parts, lse, out.view(seqs * heads, head_dim), sinks)
    return out


def paged_decode_reference(query, key_cache, value_cache, block_tables, context_lens, scale, window=0, sinks=None):
    """Torch reference: gather each sequence's context, fp32 softmax attention (over its last
    ``window`` tokens where given, ``sinks`` joining each head's denominator)."""
    seqs, heads, _ = query.shape
    block_size, kv_heads = key_cache.shape[1], key_cache.shape[2]
    out = torch.empty_like(query)
    for s in range(seqs):
        ctx = int(context_lens[s])
        blocks = block_tables[s, : triton.cdiv(ctx, block_size)].long()
        k = key_cache[blocks].flatten(0, 1)[:ctx].float().repeat_interleave(heads // kv_heads, dim=1)
        v = value_cache[blocks].flatten(0, 1)[:ctx].float().repeat_interleave(heads // kv_heads, dim=1)
        scores = torch.einsum("hd,khd->hk", query[s].float(), k) * scale
        if window:
            scores[:, : max(ctx - window, 0)] = float("-inf")
        out[s] = torch.einsum("hk,khd->hd", softmax_with_sinks(scores, sinks), v).to(query.dtype)
    return out

