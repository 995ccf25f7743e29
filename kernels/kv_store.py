"""Writes a step's new keys and values into the paged KV cache at flat slot indices."""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _kv_store_kernel(k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slots_ptr, ROW: tl.constexpr, BLOCK: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slots_ptr + token).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < ROW
    tl.store(k_cache_ptr + slot * ROW + cols, tl.load(k_ptr + token * ROW + cols, mask=mask), mask=mask)
    tl.store(v_cache_ptr + slot * ROW + cols, tl.load(v_ptr + token * ROW + cols, mask=mask), mask=mask)


def store_kv(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
             slots: torch.Tensor) -> None:
    """``key``/``value`` [tokens, kv_heads, d]; caches [blocks, block_size, kv_heads, d] (one layer)."""
    tokens = key.shape[0]
    if key.shape != value.shape or key.shape[1:] != key_cache.shape[2:] or key_cache.shape != value_cache.shape:
        raise ValueError(f"keys {tuple(key.shape)} do not fit the cache {tuple(key_cache.shape)}")
    if not (key.is_contiguous() and value.is_contiguous() and key_cache.is_contiguous()):
        raise ValueError("keys, values and caches must be contiguous")
    if slots.shape != (tokens,):
        raise ValueError("one slot per token")
    row = key.shape[1] * key.shape[2]
    if tokens:
        _kv_store_kernel[(tokens,)](key, value, key_cache, value_cache, slots, ROW=row,
                                    BLOCK=triton.next_power_of_2(row))
