"""Rotate-half RoPE (Hugging Face Llama convention) applied in place to queries and keys, with
the angles computed in the kernel from positions and the model's frequencies (the engine's
``rope_inv_freq``: plain ``theta ** (-2i/d)``, or Llama 3.1's scaled ones)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rope_kernel(x_ptr, positions_ptr, inv_freq_ptr, heads, HEAD_DIM: tl.constexpr, HALF: tl.constexpr,
                 BLOCK_H: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    half = HALF
    h = tl.arange(0, BLOCK_H)
    i = tl.arange(0, HALF)
    position = tl.load(positions_ptr + token).to(tl.float32)
    inv_freq = tl.load(inv_freq_ptr + i)
    angle = position * inv_freq
    cos, sin = tl.cos(angle), tl.sin(angle)
    base = x_ptr + token * heads * HEAD_DIM + h[:, None] * HEAD_DIM + i[None, :]
    mask = h[:, None] < heads
    first = tl.load(base, mask=mask, other=0.0)
    second = tl.load(base + half, mask=mask, other=0.0)
    dtype = first.dtype
    first, second = first.to(tl.float32), second.to(tl.float32)  # fp32 math, one rounding per store
    tl.store(base, (first * cos[None, :] - second * sin[None, :]).to(dtype), mask=mask)
    tl.store(base + half, (second * cos[None, :] + first * sin[None, :]).to(dtype), mask=mask)


def apply_rope_(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """In place on ``x`` [tokens, heads, head_dim] (contiguous); ``positions`` [tokens];
    ``inv_freq`` [head_dim / 2], fp32."""
    tokens, heads, head_dim = x.shape
    if head_dim % 2 or triton.next_power_of_2(head_dim) != head_dim or not x.is_contiguous():
        raise ValueError(f"x must be contiguous with a power-of-two head_dim, got {tuple(x.shape)}")
    if positions.shape != (tokens,):
        raise ValueError("one position per token")
    if inv_freq.shape != (head_dim // 2,) or inv_freq.dtype != torch.float32 or not inv_freq.is_contiguous():
        raise ValueError(f"inv_freq must be contiguous fp32 of shape ({head_dim // 2},), got "
                         f"{tuple(inv_freq.shape)} {inv_freq.dtype}")
    if tokens:
        _rope_kernel[(tokens,)](x, positions, inv_freq, heads, HEAD_DIM=head_dim, HALF=head_dim // 2,
                                BLOCK_H=triton.next_power_of_2(heads))
    return x
