"""Pieces shared by the attention kernels: the online-softmax loop over paged KV blocks, and the
exact log-sum-exp merge of partial attentions (kept in fp32)."""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


@triton.jit
def dot(a, b, DOT_PRECISION: tl.constexpr):
    """``tl.dot``; under Triton's interpreter with bf16/fp16 operands, in fp32 instead (Triton
    3.9's interpreter returns garbage for low-precision dots; on a GPU they run as written)."""
    if DOT_PRECISION == "interpreter":
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision=DOT_PRECISION)


@triton.jit
def attend_blocks(q, k_base, v_base, table_ptr, first_block, end_token, positions, stride_kb, stride_ks,
                  BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                  DOT_PRECISION: tl.constexpr, CAUSAL: tl.constexpr, window=0, WINDOW: tl.constexpr = False):
    """Attention of the rows ``q`` [BLOCK_M, HEAD_DIM] (fp32, pre-scaled by log2(e)/sqrt(d))
    over tokens [first_block * BLOCK_SIZE, end_token) of one kv head, read through a block
    table; with ``CAUSAL``, row r sees only tokens at or before ``positions[r]``; with
    ``WINDOW``, only tokens after ``positions[r] - window`` (a sliding window of ``window``
    positions, its own included). Returns (unnormalised output, running max, running sum) of a
    base-2 softmax."""
    offs = tl.arange(0, BLOCK_SIZE)
    dims = tl.arange(0, HEAD_DIM)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    last_block = tl.cdiv(end_token, BLOCK_SIZE)
    for block in range(first_block, last_block):
        physical = tl.load(table_ptr + block).to(tl.int64)
        tokens = block * BLOCK_SIZE + offs
        valid = tokens < end_token
        address = physical * stride_kb + offs[:, None] * stride_ks + dims[None, :]
        k = tl.load(k_base + address, mask=valid[:, None], other=0.0)
        v = tl.load(v_base + address, mask=valid[:, None], other=0.0)
        s = dot(q.to(k.dtype), tl.trans(k), DOT_PRECISION)
        keep = valid[None, :]
        if CAUSAL:
            keep = keep & (tokens[None, :] <= positions[:, None])
        if WINDOW:
            keep = keep & (tokens[None, :] > positions[:, None] - window)
        acc, m_i, l_i = online_softmax_step(tl.where(keep, s, float("-inf")), v, acc, m_i, l_i, DOT_PRECISION)
    return acc, m_i, l_i


@triton.jit
def online_softmax_step(s, v, acc, m_i, l_i, DOT_PRECISION: tl.constexpr):
    """One tile of scores ``s`` (base 2, masked to -inf) and its values folded into the running
    (unnormalised output, max, sum): the online softmax both attention loops share."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp2(s - m_safe[:, None])
    alpha = tl.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + dot(p.to(v.dtype), v, DOT_PRECISION)
    return acc, m_new, l_i


@triton.jit
def attend_pages(q, k_base, v_base, table_ptr, first_block, end_token, stride_kb, stride_ks,
                 BLOCK_SIZE: tl.constexpr, PAGES: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                 DOT_PRECISION: tl.constexpr):
    """``attend_blocks`` for decodes (every row sees every token), ``PAGES`` blocks of the table
    a step: tiles of PAGES x BLOCK_SIZE tokens, so that the matrix units get wider products
    and fewer, larger loads are in flight per iteration than a 16-token block gives."""
    offs = tl.arange(0, PAGES * BLOCK_SIZE)
    dims = tl.arange(0, HEAD_DIM)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for start in range(first_block * BLOCK_SIZE, end_token, PAGES * BLOCK_SIZE):
        tokens = start + offs
        valid = tokens < end_token
        physical = tl.load(table_ptr + tokens // BLOCK_SIZE, mask=valid, other=0).to(tl.int64)
        address = physical[:, None] * stride_kb + (tokens % BLOCK_SIZE)[:, None] * stride_ks + dims[None, :]
        k = tl.load(k_base + address, mask=valid[:, None], other=0.0)
        v = tl.load(v_base + address, mask=valid[:, None], other=0.0)
        s = tl.where(valid[None, :], dot(q.to(k.dtype), tl.trans(k), DOT_PRECISION), float("-inf"))
        acc, m_i, l_i = online_softmax_step(s, v, acc, m_i, l_i, DOT_PRECISION)
    return acc, m_i, l_i


@triton.jit
def _merge_rows_kernel(parts_ptr, lse_ptr, out_ptr, sinks_ptr, num_rows, num_parts, heads,
                       HEAD_DIM: tl.constexpr, BLOCK_P: tl.constexpr, SINKS: tl.constexpr, ROWS: tl.constexpr,
                       EAGER: tl.constexpr = False):
    """Row r: out[r] = sum_p w_p * parts[r, p] / sum_p w_p with w_p = 2^(lse[r, p] - max_p lse[r, p])
    (with ``SINKS``, the denominator also takes e^sink of the row's head, r mod ``heads``), ``ROWS``
    rows a program. On an H200 one row a program (4,096 programs of 4.6 KB for 128 requests x 32
    heads) read the partials at 35 % of the copy bandwidth (0.014 ms; 0.013 ms with a third of the
    bytes). At most 2,048 partial elements (16 slots of 128) are loaded at once: all of 8 rows' 16
    slots took 198 registers a thread on sm_90 (2 programs a multiprocessor), 2 slots at a time 71 (7).
    ``EAGER``: merge_rows's one-round-trip form."""
    row = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    merge_rows(parts_ptr, lse_ptr, out_ptr, sinks_ptr, row, row < num_rows, num_parts, heads, HEAD_DIM, BLOCK_P,
               SINKS, "", min(BLOCK_P, max(2048 // (ROWS * HEAD_DIM), 1)), EAGER)  # 2,048 fp32 in flight at most


@triton.jit
def merge_rows(parts_ptr, lse_ptr, out_ptr, sinks_ptr, row, live, num_parts, heads, HEAD_DIM: tl.constexpr,
               BLOCK_P: tl.constexpr, SINKS: tl.constexpr, CACHE: tl.constexpr, CHUNK: tl.constexpr,
               EAGER: tl.constexpr = False):
    """The merge of the rows ``row`` (where ``live``), their partials (fp32, or bf16/fp16: merged
    in fp32 either way) read ``CHUNK`` slots at a time (all at once with ``CHUNK`` = ``BLOCK_P``;
    fewer hold fewer registers) with the cache modifier ``CACHE`` ("": the default; ".cg": from
    L2, past a multiprocessor's L1, for partials that other programs of the same launch wrote).
    By default the log-sum-exps are read first, then only the partials of weight > 0: two trips
    to memory one after the other, the fewest bytes. ``EAGER``: each chunk's partials and
    log-sum-exps read together and merged by a running maximum (an online softmax over the
    slots): one trip a chunk; a slot of weight 0 is read too (unwritten memory: anything, NaN
    included) and dropped by a select, never multiplied."""
    dims = tl.arange(0, HEAD_DIM)
    merged = tl.zeros([row.shape[0], HEAD_DIM], tl.float32)
    if EAGER:
        top = tl.full([row.shape[0]], float("-inf"), tl.float32)
        total = tl.zeros([row.shape[0]], tl.float32)
        for start in range(0, num_parts, CHUNK):
            slot = start + tl.arange(0, CHUNK)
            slots = live[:, None] & (slot[None, :] < num_parts)
            address = (row[:, None, None] * num_parts + slot[None, :, None]) * HEAD_DIM + dims[None, None, :]
            parts = tl.load(parts_ptr + address, mask=slots[:, :, None], other=0.0, cache_modifier=CACHE)
            lse = tl.load(lse_ptr + row[:, None] * num_parts + slot[None, :], mask=slots, other=float("-inf"),
                          cache_modifier=CACHE)
            new_top = tl.maximum(top, tl.max(lse, 1))
            safe = tl.where(new_top == float("-inf"), 0.0, new_top)
            rescale = tl.exp2(top - safe)
            weight = tl.exp2(lse - safe[:, None])
            kept = tl.where((weight > 0.0)[:, :, None], parts.to(tl.float32), 0.0)
            total = total * rescale + tl.sum(weight, 1)
            merged = merged * rescale[:, None] + tl.sum(kept * weight[:, :, None], 1)
            top = new_top
        if SINKS:
            sink = tl.load(sinks_ptr + row % heads, mask=live, other=0.0).to(tl.float32) * LOG2E
            new_top = tl.maximum(top, sink)
            rescale = tl.exp2(top - new_top)  # top -inf (no partial): 0
            total = total * rescale + tl.exp2(sink - new_top)
            merged = merged * rescale[:, None]
    else:
        p = tl.arange(0, BLOCK_P)
        lse = tl.load(lse_ptr + row[:, None] * num_parts + p[None, :],
                      mask=live[:, None] & (p[None, :] < num_parts), other=float("-inf"), cache_modifier=CACHE)
        top = tl.max(lse, 1)
        if SINKS:
            sink = tl.load(sinks_ptr + row % heads, mask=live, other=0.0).to(tl.float32) * LOG2E
            top = tl.maximum(top, sink)
        top = tl.where(top == float("-inf"), 0.0, top)
        total = tl.sum(tl.exp2(lse - top[:, None]), 1)
        if SINKS:
            total += tl.exp2(sink - top)
        for start in range(0, num_parts, CHUNK):
            slot = start + tl.arange(0, CHUNK)
            slots = live[:, None] & (slot[None, :] < num_parts)
            weight = tl.exp2(tl.load(lse_ptr + row[:, None] * num_parts + slot[None, :], mask=slots,
                                     other=float("-inf"), cache_modifier=CACHE) - top[:, None])
            address = (row[:, None, None] * num_parts + slot[None, :, None]) * HEAD_DIM + dims[None, None, :]
            parts = tl.load(parts_ptr + address, mask=(slots & (weight > 0.0))[:, :, None], other=0.0,
                            cache_modifier=CACHE)  # none read at weight 0
            merged += tl.sum(parts.to(tl.float32) * weight[:, :, None], 1)
    merged = merged / tl.where(total == 0.0, 1.0, total)[:, None]
    tl.store(out_ptr + row[:, None] * HEAD_DIM + dims[None, :], merged.to(out_ptr.dtype.element_ty),
             mask=live[:, None])


def merge_partials(parts: torch.Tensor, lse: torch.Tensor, out: torch.Tensor,
                   sinks: torch.Tensor | None = None, rows_per_program: int = 1,
                   num_warps: int | None = None, eager: bool = False) -> torch.Tensor:
    """``parts`` [rows, P, D] (fp32, or bf16/fp16: merged in fp32 either way), ``lse`` [rows, P]
    fp32 (base 2) -> ``out`` [rows, D]; ``sinks`` [heads] (natural-log logits; rows are sequence x
    heads + head): each head's sink joins the softmax's denominator (gpt-oss).
    ``rows_per_program`` (a power of two) rows a program; ``num_warps``: Triton's launch option;
    ``eager``: partials and log-sum-exps read in one trip to memory (merge_rows)."""
    rows, num_parts, head_dim = parts.shape
    assert lse.shape == (rows, num_parts) and lse.dtype == torch.float32
    assert parts.dtype in (torch.float32, torch.bfloat16, torch.float16), parts.dtype
    assert parts.is_contiguous() and lse.is_contiguous() and out.is_contiguous() and out.shape == (rows, head_dim)
    if rows_per_program < 1 or rows_per_program & (rows_per_program - 1):
        raise ValueError(f"rows_per_program is {rows_per_program}; expected a power of two")
    heads = 1 if sinks is None else check_sinks(sinks, rows)
    _merge_rows_kernel[(triton.cdiv(rows, rows_per_program),)](
        parts, lse, out, lse if sinks is None else sinks, rows, num_parts, heads, HEAD_DIM=head_dim,
        BLOCK_P=max(triton.next_power_of_2(num_parts), 2), SINKS=sinks is not None, ROWS=rows_per_program,
        EAGER=eager, **launch_options(num_warps, None))
    return out


def check_sinks(sinks: torch.Tensor, rows: int) -> int:
    """The number of heads of a contiguous 1-D ``sinks`` that divides ``rows`` (a ValueError otherwise)."""
    if sinks.dim() != 1 or not sinks.is_contiguous() or rows % max(sinks.numel(), 1):
        raise ValueError(f"sinks must be a contiguous [heads] tensor, got {tuple(sinks.shape)}")
    return sinks.numel()


def window_of(window: int | None) -> int:
    """A sliding window's length (0: none), checked."""
    if window is None:
        return 0
    if not isinstance(window, int) or window < 0:
        raise ValueError(f"window is {window!r}; expected an integer >= 1, or 0 / None for none")
    return window


def launch_options(num_warps: int | None, num_stages: int | None) -> dict:
    """Triton launch options, only those given (Triton's defaults otherwise)."""
    options = {"num_warps": num_warps, "num_stages": num_stages}
    return {name: value for name, value in options.items() if value is not None}


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 in, fp32 products (no TF32 shortcuts): the fp32 tests hold kernels to 1e-5."""
    if dtype == torch.float32:
        return "ieee"
    return "interpreter" if os.environ.get("TRITON_INTERPRET") == "1" else "tf32"


LOG2E = tl.constexpr(1.4426950408889634)  # a Triton constexpr: globals in kernels must be
