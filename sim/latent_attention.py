"""Roofline tables of multi-head latent attention (DeepSeek-V2/V3, Kimi K2; arXiv 2405.04434),
as vLLM runs it: every token's keys and values cached as one latent (kv_lora_rank) plus a RoPE
key (qk_rope_head_dim) that all heads share, replicated on every GPU of a tensor-parallel group.

- Projections, per token: queries (through a low-rank q_lora_rank where the model has one), the
  latent and RoPE key, and the up-projection ``kv_b`` of the latent to each head's key and value
  parts (a decode multiplies the same weights into its query and output instead: same FLOPs,
  same weights read).
- Decode: each query attends over the latents directly (the up-projection absorbed): scores
  over kv_lora_rank + rope dimensions, outputs over kv_lora_rank, reading each context token's
  latent once for all heads.
- Prefill: ordinary attention with head_dim + rope query/key and v_head_dim values; a chunk
  after cached tokens first up-projects their latents (vLLM's chunked-context prefill), so a
  prefix hit saves its attention FLOPs but not that projection.
"""
from __future__ import annotations

import numpy as np

from scheduler.model_spec import ModelSpec

from .profile import Table


def latent_attention_tables(model: ModelSpec, heads: int, roof, gemm, T, axes, allreduce) -> tuple[dict, np.ndarray]:
    """(tables, KV-store and latent-norm bytes a token) for one GPU holding ``heads`` heads;
    ``axes``: (QUERIES, CONTEXTS) of the two-dimensional tables."""
    h, act = model.hidden_size, model.activation_bytes
    L, R, dn, dv, Q = model.kv_lora_rank, model.qk_rope_head_dim, model.head_dim, model.v_head_dim, model.q_lora_rank
    query = heads * (dn + R)
    queries = gemm(T, h, Q) + gemm(T, Q, query) if Q else gemm(T, h, query)
    tables = {
        "linear_qkv": Table(("tokens",), (T,), queries + gemm(T, h, L + R) + gemm(T, L, heads * (dn + dv))),
        "linear_o": Table(("tokens",), (T,), gemm(T, heads * dv, h) + allreduce(T * h * act)),
    }
    queries_axis, contexts_axis = axes
    q, c = np.meshgrid(queries_axis, contexts_axis, indexing="ij")
    past = np.maximum(c - q, 0)
    pairs = q * past + q * (q + 1) / 2
    up = 2 * past * L * heads * (dn + dv)  # the cached context's latents, up-projected
    tables["attn_prefill"] = Table(("query_tokens", "context"), axes, roof(
        2 * heads * (dn + R + dv) * pairs + up,
        (c * (L + R) + 2 * past * heads * (dn + dv) + 2 * q * heads * (dn + R + dv)) * act))
    absorbed = 2 * L + R  # scores over latent + RoPE dimensions, outputs over the latent
    tables["attn_decode"] = Table(("batch", "mean_context"), axes, roof(
        2 * heads * absorbed * q * c, (q * c * (L + R) + 2 * q * heads * absorbed) * act))
    tables["attn_shared_prefix"] = Table(("queries", "prefix_len"), axes, roof(
        2 * heads * absorbed * q * c, (c * (L + R) + 2 * q * heads * absorbed) * act, launches=0)
        + roof(0, 4 * q * heads * L * 4, launches=0))
    return tables, 2 * (L + R) + 2 * (Q + L)
