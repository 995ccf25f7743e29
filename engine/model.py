"""A Llama-family decoder over one packed varlen batch (no padding), with a paged KV cache.

Conventions follow Hugging Face's ``LlamaForCausalLM``: RMSNorm in fp32, rotate-half RoPE with
``inv_freq = theta ** (-2i/d)``, grouped-query attention, SwiGLU MLP, optional tied embeddings.
"""
from __future__ import annotations

import time
from contextlib import contextmanager

import torch

from scheduler.errors import ConfigError
from scheduler.model_spec import ModelSpec

from .attention import AttentionBackend, AttentionMetadata
from .kv_cache import PagedKVCache
from .weights import Weights

ENGINE_KERNELS = ("linear_qkv", "rope_kv_store", "attention", "linear_o", "mlp", "norms", "lm_head_sampling")


class KernelTimer:
    """Time per kernel category. On CPU, wall time around each region. On a GPU, CUDA events
    recorded on the stream around each region, read once the step is done (``times`` after a
    synchronize): synchronising around every region instead (7 categories x layers, twice
    each) would stall the launch queue hundreds of times a step and time the stalls."""

    def __init__(self, device: torch.device, enabled: bool = True) -> None:
        self.cuda = device.type == "cuda"
        self.enabled = enabled
        self._times: dict[str, float] = dict.fromkeys(ENGINE_KERNELS, 0.0)
        self._events: list[tuple[str, object, object]] = []

    @contextmanager
    def __call__(self, name: str):
        if not self.enabled:
            yield
            return
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self._events.append((name, start, end))
            return
        started = time.perf_counter()
        yield
        self._times[name] += time.perf_counter() - started

    @property
    def times(self) -> dict[str, float]:
        """Seconds per category; on a GPU, read after the step's work has finished."""
        for name, start, end in self._events:
            self._times[name] += start.elapsed_time(end) / 1000.0  # milliseconds
        self._events.clear()
        return self._times


def rope_tables(spec: ModelSpec, positions: torch.Tensor, dtype: torch.dtype):
    d = spec.head_dim
    inv_freq = 1.0 / (spec.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64, device=positions.device).float() / d))
    freqs = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype)[:, None, :], emb.sin().to(dtype)[:, None, :]


class LlamaModel:
    def __init__(self, spec: ModelSpec, weights: Weights, backend: AttentionBackend) -> None:
        if spec.head_dim % 2:
            raise ConfigError(f"model {spec.name!r}: head_dim must be even for RoPE")
        self.spec = spec
        self.weights = weights
        self.backend = backend

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor, cache: PagedKVCache,
                meta: AttentionMetadata, logit_rows: torch.Tensor, timer: KernelTimer) -> torch.Tensor:
        """Logits of the rows ``logit_rows`` of the packed batch."""
        spec, w, backend = self.spec, self.weights, self.backend
        eps = spec.rms_norm_eps
        count = tokens.shape[0]
        x = w.embed[tokens]
        cos, sin = rope_tables(spec, positions, x.dtype)
        meta.scale = spec.head_dim ** -0.5
        for index, layer in enumerate(w.layers):
            with timer("norms"):
                h = backend.rms_norm(x, layer.input_norm, eps)
            with timer("linear_qkv"):
                q = (h @ layer.q.T).view(count, spec.num_heads, spec.head_dim)
                k = (h @ layer.k.T).view(count, spec.num_kv_heads, spec.head_dim)
                v = (h @ layer.v.T).view(count, spec.num_kv_heads, spec.head_dim)
            with timer("rope_kv_store"):
                q, k = backend.rope(q, k, positions, cos, sin, spec.rope_theta)
                backend.store_kv(cache, index, slots, k, v)
            with timer("attention"):
                attn = self.backend.forward(index, q, cache, meta)
            with timer("linear_o"):
                x = x + attn.reshape(count, -1) @ layer.o.T
            with timer("norms"):
                h = backend.rms_norm(x, layer.post_norm, eps)
            with timer("mlp"):
                x = x + (torch.nn.functional.silu(h @ layer.gate.T) * (h @ layer.up.T)) @ layer.down.T
        with timer("lm_head_sampling"):
            final = backend.rms_norm(x[logit_rows].contiguous(), w.norm, eps)
            return final @ w.lm_head.T
