"""Roofline costs of linear-attention layers (Gated DeltaNet: Qwen3-Next, Qwen3.5), blended into
the attention tables, which hold the mean layer, by the share of layers that are linear.

A Gated DeltaNet layer (Yang et al., arXiv 2412.06464) keeps a state S of value heads x key dim
x value dim per request instead of KV: a decode reads and writes it once (with the short
convolution's last inputs) and does a few multiply-adds per state entry; a prefill chunk of q
tokens runs the chunkwise algorithm (chunks of C = 64: the intra-chunk products, C x (dk + dv)
a token and head, and the state's update and read-out, about 4 dk dv), reading and writing the
state once. Its cost does not grow with the context: that is the point of these layers. The
projections in and out (q, k, v, the output gate z, beta and the decay) replace the attention's.
"""
from __future__ import annotations

import numpy as np

from scheduler.model_spec import ModelSpec

from .profile import Table

CHUNK = 64  # the chunkwise algorithm's chunk (flash-linear-attention's default)


def blend_linear_attention(model: ModelSpec, tables: dict, tensor_parallel: int, roof, gemm, T: np.ndarray,
                           grid: tuple[np.ndarray, np.ndarray]) -> None:
    """Blends the linear layers' share into ``tables`` (one GPU's: heads split over
    ``tensor_parallel``), in place; no-op for a model without linear layers."""
    if not model.linear_layers:
        return
    share = len(model.linear_layers) / model.num_layers
    h, act, state = model.hidden_size, model.activation_bytes, model.state_bytes
    dk, dv = model.linear_key_dim, model.linear_value_dim
    nk, nv = -(-model.linear_key_heads // tensor_parallel), -(-model.linear_value_heads // tensor_parallel)
    keys, values = nk * dk, nv * dv
    conv = (2 * keys + values) * (model.linear_conv_kernel - 1) * act  # the short convolution's last inputs
    state_rw = 2 * nv * dk * dv * state + 2 * conv  # a request's state, read and written back

    def blend(name, linear):
        old = tables[name]
        tables[name] = Table(old.axes, old.grids, (1 - share) * old.values + share * linear)
    blend("linear_qkv", gemm(T, h, 2 * keys + 2 * values + 2 * nv))
    # the output projection from the value heads instead of the attention heads; the all-reduce after it stays
    full_o = gemm(T, model.num_heads // tensor_parallel * model.head_dim, h)
    blend("linear_o", tables["linear_o"].values - full_o + gemm(T, values, h))
    q, _ = np.meshgrid(*grid, indexing="ij")
    per_token = nv * (4 * dk * dv + 2 * CHUNK * (dk + dv))
    blend("attn_prefill", roof(2 * q * per_token, state_rw + q * (2 * keys + 2 * values) * act, launches=3))
    blend("attn_decode", roof(2 * q * nv * 3 * dk * dv, q * (state_rw + (2 * keys + 2 * values) * act), launches=2))
    blend("attn_shared_prefix", np.zeros_like(tables["attn_shared_prefix"].values))  # a state is no prefix to share
