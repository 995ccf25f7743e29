"""The attention backend interface and its torch reference implementation.

A backend receives one packed varlen batch: the queries of every chunk, back to back, and for
each chunk its query range, its context length after the step and its block table. The new
keys and values are already in the paged cache (the runner stores them first), so a chunk can
read blocks written in the same step by another chunk (same-step prefix hits).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from scheduler.errors import ConfigError

from .delta_net import delta_rule_step
from .experts import experts_reference


@dataclass
class AttentionMetadata:
    query_starts: list[int]        # offset of each chunk's first query in the packed batch
    query_lens: list[int]
    context_lens: list[int]        # tokens of context after this step, the chunk's own included
    # each chunk's block ids, on the host: a backend builds the device tensors it needs once
    # per step (one packed copy for the Triton kernels, not one small copy per chunk)
    block_tables: list
    shared_prefix_groups: tuple = ()  # (prefix_len, prefix_block_ids, chunk indices)
    scale: float = 1.0
    linear_states: object = None  # the step's DeltaNet states (engine/linear_state.py's StepStates)
    # what a backend derives from the metadata once per step and reuses in every layer
    backend_state: dict = field(default_factory=dict)


class AttentionBackend:
    """Attention plus the elementwise work around it; the torch versions here serve any device."""

    name = "abstract"
    # does forward() read a group's shared prefix once for all its members (plan.shared_prefix_groups)?
    prefix_aware = False
    # does forward() take a sliding window and attention sinks (gpt-oss, Mistral 7B v0.1)?
    windows_and_sinks = False
    # does experts() take gpt-oss's biases and clamped SwiGLU, and Gemma 4's GeGLU (the reference here does)?
    gpt_oss_experts = True
    gelu_experts = True
    options: dict = {}  # its kernels' options as it runs them, every one (a profile records them)

    def forward(self, layer: int, query: torch.Tensor, cache, meta: AttentionMetadata, window: int | None = None,
                sinks: torch.Tensor | None = None) -> torch.Tensor:
        """``query`` [tokens, heads, head_dim] -> output [tokens, heads, head_dim]. ``window``:
        each query sees its last ``window`` positions only (itself included); ``sinks`` [heads]:
        a logit per head that joins the softmax's denominator and nothing else."""
        raise NotImplementedError

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float, gemma: bool = False,
                 offset: float = 1.0) -> torch.Tensor:
        """Llama's RMSNorm (x / rms(x) in fp32, rounded, times w), or ``gemma``'s (times
        ``offset`` + w in fp32, rounded once: Gemma 3's 1 + w, Gemma 4's w with offset 0)."""
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
        if gemma:
            return (normed * (offset + weight.float())).to(x.dtype)
        return weight * normed.to(x.dtype)

    def rope(self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor,
             sin: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        def rotate(x):
            half = x.shape[-1] // 2
            return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin
        return rotate(q), rotate(k)

    def store_kv(self, cache, layer: int, slots: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> None:
        cache.store(layer, slots, key, value)

    def delta_step(self, q, k, v, g, beta, state):
        """A batch's Gated DeltaNet decode step (engine/delta_net.py's signature): outputs and new states."""
        return delta_rule_step(q, k, v, g, beta, state)

    def experts(self, h: torch.Tensor, weights: torch.Tensor, chosen: torch.Tensor, gate_up: torch.Tensor,
                down: torch.Tensor, **gpt_oss) -> torch.Tensor:
        """A mixture-of-experts layer's experts (engine/experts.py), after the router's choice;
        ``gpt_oss``: its biases and clamped SwiGLU (or ``gelu``: Gemma 4's GeGLU), for a backend
        that takes them."""
        return experts_reference(h, weights, chosen, gate_up, down, **gpt_oss)


def softmax_with_sinks(scores: torch.Tensor, sinks: torch.Tensor | None) -> torch.Tensor:
    """Softmax over the last dimension of ``scores`` [heads, ..., keys]; ``sinks`` [heads]: a
    column per head that joins the softmax and is dropped (gpt-oss)."""
    if sinks is None:
        return torch.softmax(scores, -1)
    sink = sinks.float().view(-1, *([1] * (scores.dim() - 1))).expand(*scores.shape[:-1], 1)
    return torch.softmax(torch.cat((scores, sink), -1), -1)[..., :-1]


class TorchAttentionBackend(AttentionBackend):
    """Reference: gathers each chunk's context from the paged cache and runs causal softmax
    attention in fp32. Works on CPU and GPU; the oracle for the Triton kernels."""

    name = "torch"
    windows_and_sinks = True

    def forward(self, layer, query, cache, meta, window=None, sinks=None):
        output = torch.empty_like(query)
        block_size = cache.block_size
        heads = query.shape[1]
        tables = meta.backend_state.get("torch")
        if tables is None:  # the same for every layer
            tables = meta.backend_state["torch"] = [torch.as_tensor(t, dtype=torch.long, device=query.device)
                                                    for t in meta.block_tables]
        for start, q_len, ctx_len, table in zip(meta.query_starts, meta.query_lens, meta.context_lens, tables):
            blocks = table[: (ctx_len + block_size - 1) // block_size]
            keys = cache.key[layer][blocks].flatten(0, 1)[:ctx_len]     # [ctx, kv heads, d]
            values = cache.value[layer][blocks].flatten(0, 1)[:ctx_len]
            group = heads // keys.shape[1]
            keys = keys.repeat_interleave(group, dim=1).float()
            values = values.repeat_interleave(group, dim=1).float()
            q = query[start:start + q_len].float()
            scores = torch.einsum("qhd,khd->hqk", q, keys) * meta.scale
            positions = torch.arange(ctx_len - q_len, ctx_len, device=query.device)
            keys_at = torch.arange(ctx_len, device=query.device)[None, :]
            mask = keys_at > positions[:, None]
            if window:
                mask |= keys_at <= positions[:, None] - window
            scores.masked_fill_(mask[None], float("-inf"))
            probs = softmax_with_sinks(scores, sinks)
            output[start:start + q_len] = torch.einsum("hqk,khd->qhd", probs, values).to(query.dtype)
        return output


BACKENDS: dict[str, type[AttentionBackend]] = {"torch": TorchAttentionBackend}


def _kernels_shadowed() -> str:
    """Where another package named ``kernels`` is found first (Hugging Face's, which
    transformers 5.25 requires), the words that say so; else nothing."""
    import sys
    from pathlib import Path

    found = sys.modules.get("kernels")
    where = getattr(found, "__file__", None)
    ours = Path(__file__).resolve().parents[1] / "kernels"
    if where is None or Path(where).resolve().parent == ours:
        return ""
    return (f" (the package named 'kernels' found is {where}, not batchlab's {ours}: Hugging Face's `kernels`, "
            f"which transformers >= 5.25 installs, shadows it; run batchlab in an environment without it)")


def make_backend(name: str, options: dict | None = None) -> AttentionBackend:
    """The backend ``name``; ``options``: its kernels' options by kernel (the Triton backend's:
    ``{"shared_prefix": {"pages": 2, ...}}``), refused by a backend that has none."""
    if name == "triton" and "triton" not in BACKENDS:
        try:
            import kernels.backend  # noqa: F401  (registers "triton")
        except ImportError as error:
            raise ConfigError(f"attention backend 'triton' is not available: {error}{_kernels_shadowed()}") from None
    if name not in BACKENDS:
        raise ConfigError(f"unknown attention backend {name!r}; expected one of {sorted(BACKENDS)}")
    if options and name == "torch":
        raise ConfigError(f"kernel options {options} are the Triton kernels'; backend=torch has none (backend=triton)")
    return BACKENDS[name](options) if options else BACKENDS[name]()
