"""Paged prefill attention for packed varlen chunks: chunk i has ``query_lens[i]`` queries at
positions ``[context_lens[i] - query_lens[i], context_lens[i])`` and attends, causally, to its
whole context through its block table (earlier chunks, prefix-cache hits, shared prefixes)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import LOG2E, attend_blocks, check_sinks, dot_precision, window_of


@triton.jit
def _paged_prefill_kernel(q_ptr, k_ptr, v_ptr, out_ptr, tables_ptr, query_start_ptr, query_len_ptr, context_ptr,
                          stride_qt, stride_kb, stride_ks, stride_kh, stride_t, scale, window, sinks_ptr,
                          GROUP: tl.constexpr, BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr,
                          BLOCK_SIZE: tl.constexpr, DOT_PRECISION: tl.constexpr, WINDOW: tl.constexpr,
                          SINKS: tl.constexpr):
    chunk = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    tile = tl.program_id(2)
    q_len = tl.load(query_len_ptr + chunk)
    if tile * BLOCK_M < q_len:
        q_start = tl.load(query_start_ptr + chunk).to(tl.int64)
        context = tl.load(context_ptr + chunk)
        kv_head = head // GROUP
        rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        live = rows < q_len
        positions = context - q_len + rows
        dims = tl.arange(0, HEAD_DIM)
        q = tl.load(q_ptr + (q_start + rows)[:, None] * stride_qt + head * HEAD_DIM + dims[None, :],
                    mask=live[:, None], other=0.0).to(tl.float32) * (scale * LOG2E)
        last = tl.minimum(context, context - q_len + (tile + 1) * BLOCK_M)  # causal: no later keys
        first = 0
        if WINDOW:  # no key before the tile's first query's window
            first = tl.maximum(context - q_len + tile * BLOCK_M - window + 1, 0) // BLOCK_SIZE
        acc, m_i, l_i = attend_blocks(q, k_ptr + kv_head * stride_kh, v_ptr + kv_head * stride_kh,
                                      tables_ptr + chunk * stride_t, first, last, positions, stride_kb, stride_ks,
                                      BLOCK_SIZE, HEAD_DIM, BLOCK_M, DOT_PRECISION, True, window, WINDOW)
        if SINKS:  # the head's sink joins the denominator (m_i is finite: a query sees itself)
            l_i += tl.exp2(tl.load(sinks_ptr + head).to(tl.float32) * LOG2E - tl.where(live, m_i, 0.0))
        out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        tl.store(out_ptr + (q_start + rows)[:, None] * stride_qt + head * HEAD_DIM + dims[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=live[:, None])


def paged_prefill_attention(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                            block_tables: torch.Tensor, query_starts: torch.Tensor, query_lens: torch.Tensor,
                            context_lens: torch.Tensor, scale: float, block_m: int = 16,
                            out: torch.Tensor | None = None, max_query_len: int | None = None,
                            window: int | None = None, sinks: torch.Tensor | None = None) -> torch.Tensor:
    """``query`` [tokens, heads, d] packed; per chunk int32 ``query_starts``, ``query_lens``,
    ``context_lens`` and a row of int32 ``block_tables`` -> output [tokens, heads, d].
    ``max_query_len``: the longest chunk, from a caller that has checked every chunk's queries
    against its context on the host (both are read from the device otherwise, which waits).
    ``window``: each query sees its last ``window`` positions only; ``sinks`` [heads]: a logit
    per head in the softmax's denominator (gpt-oss)."""
    tokens, heads, head_dim = query.shape
    _, block_size, kv_heads, _ = key_cache.shape
    chunks = query_lens.shape[0]
    if heads % kv_heads or key_cache.shape[-1] != head_dim or value_cache.shape != key_cache.shape:
        raise ValueError("query, key and value shapes do not agree")
    for name, tensor in (("block_tables", block_tables), ("query_starts", query_starts),
                         ("query_lens", query_lens), ("context_lens", context_lens)):
        if tensor.dtype != torch.int32 or not tensor.is_contiguous() or tensor.shape[0] != chunks:
            raise ValueError(f"{name} must be contiguous int32 with one row per chunk")
    if max_query_len is None:
        if bool((query_lens > context_lens).any()):
            raise ValueError("a chunk has more queries than context")
        max_query_len = int(query_lens.max()) if chunks else 0
    if out is None:
        out = torch.empty_like(query)
    if out.shape != query.shape or out.dtype != query.dtype or not out.is_contiguous():
        raise ValueError("out must be a contiguous tensor shaped and typed like query")
    window = window_of(window)
    if sinks is not None:
        check_sinks(sinks, heads)
    if chunks == 0:
        return out
    tiles = triton.cdiv(max_query_len, block_m)
    _paged_prefill_kernel[(chunks, heads, tiles)](
        query, key_cache, value_cache, out, block_tables, query_starts, query_lens, context_lens,
        query.stride(0), key_cache.stride(0), key_cache.stride(1), key_cache.stride(2), block_tables.stride(0),
        scale, window, query if sinks is None else sinks, GROUP=heads // kv_heads, BLOCK_M=block_m,
        HEAD_DIM=head_dim, BLOCK_SIZE=block_size, DOT_PRECISION=dot_precision(query.dtype), WINDOW=window > 0,
        SINKS=sinks is not None)
    return out
