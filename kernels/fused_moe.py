"""A mixture-of-experts layer as two grouped GEMMs (the design of vLLM's fused MoE: tokens
sorted by expert, each expert's rows padded to whole blocks, every block one expert's).

1. ``align_by_expert``: the (token, slot) pairs of the top-k routing sorted by expert, each
   expert's run padded to a multiple of BLOCK_M with an invalid pair id, and the expert of each
   block of BLOCK_M rows (-1 past the last), all on the device without a host sync (the number
   of blocks is bounded by pairs + experts x (BLOCK_M - 1)).
2. ``_gate_up_kernel``: per block and tile of the expert's width, the block's token rows times
   the expert's gate and up rows, SiLU(gate) x up written per pair (in fp32, rounded once to
   the activation dtype when stored; the torch path rounds the products too, which bf16 tests
   allow for).
3. ``_down_kernel``: per block and tile of the hidden size, those rows times the expert's down
   matrix, scaled by the pair's routing weight, written per pair.
4. The k pairs of each token summed (torch).

The torch reference is the engine's ``experts_mlp`` (engine/model.py).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import dot, dot_precision

ROUND = tl.constexpr("rtne")  # round to nearest even on every downcast, as torch does


def align_by_expert(chosen: torch.Tensor, num_experts: int, block_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(pair ids [blocks x BLOCK_M], padded with ``pairs``; expert of each block, -1 if none).
    ``chosen`` [tokens, k]: each token's experts; pair p is token p // k's slot p % k."""
    flat = chosen.reshape(-1)
    pairs = flat.numel()
    counts = torch.bincount(flat, minlength=num_experts)
    padded = (counts + block_m - 1) // block_m * block_m
    padded_end = torch.cumsum(padded, 0)
    order = torch.argsort(flat, stable=True)
    expert_of = flat[order]
    rank = torch.arange(pairs, device=flat.device) - (torch.cumsum(counts, 0) - counts)[expert_of]
    blocks = -(-(pairs + num_experts * (block_m - 1)) // block_m)
    sorted_ids = torch.full((blocks * block_m,), pairs, dtype=torch.int32, device=flat.device)
    sorted_ids[(padded_end - padded)[expert_of] + rank] = order.to(torch.int32)
    starts = torch.arange(blocks, device=flat.device) * block_m
    block_expert = torch.searchsorted(padded_end, starts, right=True)
    block_expert = torch.where(block_expert < num_experts, block_expert, -1).to(torch.int32)
    return sorted_ids, block_expert


@triton.jit
def _block_pairs(sorted_ptr, block, pairs, BLOCK_M: tl.constexpr):
    """The pair ids of a block's rows, and which are pairs rather than padding."""
    pair = tl.load(sorted_ptr + block * BLOCK_M + tl.arange(0, BLOCK_M))
    return pair, pair < pairs


@triton.jit
def _gate_up_kernel(x_ptr, w_ptr, out_ptr, sorted_ptr, block_expert_ptr, bias_ptr, pairs, top_k, hidden, width,
                    limit, alpha, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    DOT_PRECISION: tl.constexpr, BIAS: tl.constexpr, CLAMP: tl.constexpr,
                    GELU: tl.constexpr = False):
    block = tl.program_id(0)
    expert = tl.load(block_expert_ptr + block)
    if expert < 0:  # past the last expert's blocks
        return
    pair, valid = _block_pairs(sorted_ptr, block, pairs, BLOCK_M)
    token = (pair // top_k).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < width
    w_expert = w_ptr + expert.to(tl.int64) * (2 * width * hidden)
    gate = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    up = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for start in range(0, hidden, BLOCK_K):
        ks = start + tl.arange(0, BLOCK_K)
        k_ok = ks < hidden
        a = tl.load(x_ptr + token[:, None] * hidden + ks[None, :], mask=valid[:, None] & k_ok[None, :], other=0.0)
        # the expert's weights are [2 x width, hidden]: gate rows, then up rows; read as [K, N]
        g = tl.load(w_expert + cols[None, :] * hidden + ks[:, None], mask=col_ok[None, :] & k_ok[:, None], other=0.0)
        u = tl.load(w_expert + (width + cols[None, :]) * hidden + ks[:, None], mask=col_ok[None, :] & k_ok[:, None],
                    other=0.0)
        gate += dot(a, g, DOT_PRECISION)
        up += dot(a, u, DOT_PRECISION)
    dtype = out_ptr.dtype.element_ty
    if BIAS:  # [experts, 2 x width]: gate, then up
        bias = bias_ptr + expert.to(tl.int64) * (2 * width)
        gate += tl.load(bias + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        up += tl.load(bias + width + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if CLAMP:  # gpt-oss: (up + 1) g sigmoid(alpha g), g clamped above, up both ways
        gate = tl.minimum(gate, limit)
        up = tl.minimum(tl.maximum(up, -limit), limit)
        act = (up + 1.0) * gate / (1.0 + tl.exp(-alpha * gate))
    elif GELU:  # Gemma 4: GELU's tanh approximation, 0.5 g (1 + tanh(sqrt(2 / pi) (g + 0.044715 g^3))), times up
        inner = 0.7978845608028654 * (gate + 0.044715 * gate * gate * gate)
        act = gate * (1.0 - 1.0 / (1.0 + tl.exp(2.0 * inner))) * up  # 0.5 (1 + tanh y) = 1 - 1 / (1 + e^2y)
    else:
        act = gate / (1.0 + tl.exp(-gate)) * up  # in fp32, rounded once when stored
    out = out_ptr + pair.to(tl.int64)[:, None] * width + cols[None, :]
    tl.store(out, act.to(dtype, fp_downcast_rounding=ROUND), mask=valid[:, None] & col_ok[None, :])


@triton.jit
def _down_kernel(act_ptr, w_ptr, weights_ptr, out_ptr, sorted_ptr, block_expert_ptr, bias_ptr, pairs, hidden, width,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr,
                 BIAS: tl.constexpr):
    block = tl.program_id(0)
    expert = tl.load(block_expert_ptr + block)
    if expert < 0:  # past the last expert's blocks
        return
    pair, valid = _block_pairs(sorted_ptr, block, pairs, BLOCK_M)
    pair64 = pair.to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < hidden
    w_expert = w_ptr + expert.to(tl.int64) * (hidden * width)
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for start in range(0, width, BLOCK_K):
        ks = start + tl.arange(0, BLOCK_K)
        k_ok = ks < width
        a = tl.load(act_ptr + pair64[:, None] * width + ks[None, :], mask=valid[:, None] & k_ok[None, :], other=0.0)
        # the expert's down matrix is [hidden, width]: read as [K, N]
        w = tl.load(w_expert + cols[None, :] * width + ks[:, None], mask=col_ok[None, :] & k_ok[:, None], other=0.0)
        acc += dot(a, w, DOT_PRECISION)
    dtype = out_ptr.dtype.element_ty
    if BIAS:  # [experts, hidden], before the routing weight (gpt-oss)
        acc += tl.load(bias_ptr + expert.to(tl.int64) * hidden + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    scale = tl.load(weights_ptr + pair64, mask=valid, other=0.0)  # fp32: one 4-byte load a row
    product = acc * scale[:, None]
    tl.store(out_ptr + pair64[:, None] * hidden + cols[None, :], product.to(dtype, fp_downcast_rounding=ROUND),
             mask=valid[:, None] & col_ok[None, :])


def fused_experts(x: torch.Tensor, weights: torch.Tensor, chosen: torch.Tensor, gate_up: torch.Tensor,
                  down: torch.Tensor, block_m: int = 16, block_n: int = 64, block_k: int = 64,
                  poison: bool = False, gate_up_bias: torch.Tensor | None = None,
                  down_bias: torch.Tensor | None = None, limit: float = 0.0, alpha: float = 1.0,
                  gelu: bool = False) -> torch.Tensor:
    """``x`` [tokens, hidden]; ``weights``, ``chosen`` [tokens, k] (routing weights in x's
    dtype, expert ids); ``gate_up`` [experts, 2 x width, hidden]; ``down`` [experts, hidden,
    width]. Returns [tokens, hidden]. ``poison``: the per-pair buffers start as NaN (tests).
    gpt-oss's experts: ``gate_up_bias`` [experts, 2 x width], ``down_bias`` [experts, hidden]
    and its clamped SwiGLU (``limit`` > 0, ``alpha``), as engine/experts.py computes them; ``gelu``:
    GeGLU experts (Gemma 4)."""
    if gelu and limit > 0:
        raise ValueError("gelu and a clamp (limit) exclude each other")
    if x.dim() != 2 or not x.is_contiguous():
        raise ValueError(f"expected contiguous x [tokens, hidden], got {tuple(x.shape)}")
    tokens, hidden = x.shape
    if gate_up.dim() != 3 or gate_up.shape[2] != hidden or gate_up.shape[1] % 2 or not gate_up.is_contiguous():
        raise ValueError(f"expected contiguous gate_up [experts, 2 x width, {hidden}], got {tuple(gate_up.shape)}")
    experts, width = gate_up.shape[0], gate_up.shape[1] // 2
    if tuple(down.shape) != (experts, hidden, width) or not down.is_contiguous():
        raise ValueError(f"expected contiguous down [{experts}, {hidden}, {width}], got {tuple(down.shape)}")
    if chosen.shape != weights.shape or chosen.dim() != 2 or chosen.shape[0] != tokens:
        raise ValueError(f"expected weights and chosen [{tokens}, k], got {tuple(weights.shape)}, {tuple(chosen.shape)}")
    if not (x.dtype == gate_up.dtype == down.dtype == weights.dtype):
        raise ValueError(f"x, gate_up, down and weights must share a dtype, got {x.dtype}, {gate_up.dtype}, "
                         f"{down.dtype}, {weights.dtype}")
    for name, bias, shape in (("gate_up_bias", gate_up_bias, (experts, 2 * width)),
                              ("down_bias", down_bias, (experts, hidden))):
        if bias is not None and (tuple(bias.shape) != shape or not bias.is_contiguous() or bias.dtype != x.dtype):
            raise ValueError(f"expected contiguous {name} {list(shape)} in {x.dtype}, got {tuple(bias.shape)} {bias.dtype}")
    top_k = chosen.shape[1]
    pairs = tokens * top_k
    fill = torch.full if poison else (lambda shape, value, **kw: torch.empty(shape, **kw))
    act = fill((pairs, width), float("nan"), dtype=x.dtype, device=x.device)
    products = fill((pairs, hidden), float("nan"), dtype=x.dtype, device=x.device)
    if tokens:
        sorted_ids, block_expert = align_by_expert(chosen, experts, block_m)
        precision = dot_precision(x.dtype)
        blocks = block_expert.numel()
        _gate_up_kernel[(blocks, triton.cdiv(width, block_n))](
            x, gate_up, act, sorted_ids, block_expert, x if gate_up_bias is None else gate_up_bias, pairs, top_k,
            hidden, width, float(limit), float(alpha), BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
            DOT_PRECISION=precision, BIAS=gate_up_bias is not None, CLAMP=limit > 0, GELU=gelu)
        _down_kernel[(blocks, triton.cdiv(hidden, block_n))](
            act, down, weights.reshape(-1).float(), products, sorted_ids, block_expert,
            x if down_bias is None else down_bias, pairs, hidden, width,
            BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, DOT_PRECISION=precision, BIAS=down_bias is not None)
    return products.view(tokens, top_k, hidden).sum(dim=1)
