"""One decode step of Gated DeltaNet (Qwen3-Next, Qwen3.5) for a batch, fused: each request's
recurrent state is read once and written once. Per value head, S (key dim x value dim, fp32):

    S <- exp(g) S;  delta = beta (v - S^T k);  S <- S + k delta^T;  out = S^T q

The torch reference (``engine.delta_net.delta_rule_step``) makes four passes over S for this
(the decay, the read, the update, the output), each a kernel writing a full-size temporary; a
decode-heavy step of a linear-attention model is those passes (a Qwen3.5-27B request's states:
151 MB a step). A program owns one head of one request and a block of value columns: its
[key dim, BLOCK_V] tile of S stays in registers between the four steps.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _delta_step_kernel(q_ptr, k_ptr, v_ptr, g_ptr, beta_ptr, state_ptr, out_ptr,
                       KEY_DIM: tl.constexpr, VALUE_DIM: tl.constexpr, BLOCK_K: tl.constexpr,
                       BLOCK_V: tl.constexpr):
    head = tl.program_id(0).to(tl.int64)  # request x value heads, flattened
    rows = tl.arange(0, BLOCK_K)
    cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    row_ok, col_ok = rows < KEY_DIM, cols < VALUE_DIM
    q = tl.load(q_ptr + head * KEY_DIM + rows, mask=row_ok, other=0.0)
    k = tl.load(k_ptr + head * KEY_DIM + rows, mask=row_ok, other=0.0)
    v = tl.load(v_ptr + head * VALUE_DIM + cols, mask=col_ok, other=0.0)
    decay = tl.exp(tl.load(g_ptr + head))
    beta = tl.load(beta_ptr + head)
    tile = state_ptr + head * KEY_DIM * VALUE_DIM + rows[:, None] * VALUE_DIM + cols[None, :]
    tile_ok = row_ok[:, None] & col_ok[None, :]
    state = tl.load(tile, mask=tile_ok, other=0.0) * decay
    delta = (v - tl.sum(state * k[:, None], 0)) * beta
    state = state + k[:, None] * delta[None, :]
    tl.store(tile, state, mask=tile_ok)
    tl.store(out_ptr + head * VALUE_DIM + cols, tl.sum(state * q[:, None], 0), mask=col_ok)


def delta_rule_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                    state: torch.Tensor, out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``q``, ``k`` [batch, heads, key dim] (normalised, q scaled), ``v`` [batch, heads, value dim],
    ``g`` (log decay) and ``beta`` [batch, heads], ``state`` [batch, heads, key dim, value dim]:
    all fp32 and contiguous. Returns the outputs [batch, heads, value dim] (into ``out`` where
    given) and ``state``, updated in place (the reference's signature)."""
    batch, heads, key_dim = q.shape
    value_dim = v.shape[-1]
    shapes = {"q": (q, (batch, heads, key_dim)), "k": (k, (batch, heads, key_dim)), "v": (v, (batch, heads, value_dim)),
              "g": (g, (batch, heads)), "beta": (beta, (batch, heads)), "state": (state, (batch, heads, key_dim, value_dim))}
    if out is not None:
        shapes["out"] = (out, (batch, heads, value_dim))
    for name, (tensor, shape) in shapes.items():
        if tuple(tensor.shape) != shape or tensor.dtype != torch.float32 or not tensor.is_contiguous():
            raise ValueError(f"delta_rule_step: {name} is {tuple(tensor.shape)} {tensor.dtype}"
                             f"{'' if tensor.is_contiguous() else ' (not contiguous)'}; expected {shape} float32, "
                             "contiguous")
    if out is None:
        out = torch.empty(batch, heads, value_dim, dtype=torch.float32, device=q.device)
    if batch:
        block_v = min(triton.next_power_of_2(value_dim), 32)
        _delta_step_kernel[(batch * heads, triton.cdiv(value_dim, block_v))](
            q, k, v, g, beta, state, out, KEY_DIM=key_dim, VALUE_DIM=value_dim,
            BLOCK_K=triton.next_power_of_2(key_dim), BLOCK_V=block_v)
    return out, state
