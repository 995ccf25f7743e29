"""A mixture of SwiGLU experts in torch: the router's choice, and the experts' work as the
engine's reference path (the oracle of kernels/fused_moe.py)."""
from __future__ import annotations

import torch


def route(h: torch.Tensor, router: torch.Tensor, top_k: int, renormalise: bool,
          bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights [tokens, k] in h's dtype, expert ids [tokens, k]): each token's top ``top_k``
    experts by the router's softmax in fp32, their probabilities renormalised over the chosen
    ones where the model does (Mixtral, Qwen3-MoE; gpt-oss's softmax over the top k logits is the
    same), not where it does not. ``bias``: the router's (gpt-oss)."""
    logits = h @ router.T
    probs = torch.softmax((logits if bias is None else logits + bias).float(), dim=-1)
    weights, chosen = torch.topk(probs, top_k, dim=-1)
    if renormalise:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights.to(h.dtype), chosen


def glu(gate: torch.Tensor, up: torch.Tensor, limit: float = 0.0, alpha: float = 1.0,
        gelu: bool = False) -> torch.Tensor:
    """SwiGLU, silu(gate) x up; with a ``limit``, gpt-oss's clamped variant: the gate clamped
    above at limit, up to +-limit, and (up + 1) x gate x sigmoid(alpha x gate); ``gelu``: GeGLU,
    gelu(gate) x up with GELU's tanh approximation (Gemma 4's experts)."""
    if gelu:
        return torch.nn.functional.gelu(gate, approximate="tanh") * up
    if not limit:
        return torch.nn.functional.silu(gate) * up
    gate, up = gate.clamp(max=limit), up.clamp(-limit, limit)
    return (up + 1) * gate * torch.sigmoid(alpha * gate)


def experts_reference(h: torch.Tensor, weights: torch.Tensor, chosen: torch.Tensor, gate_up: torch.Tensor,
                      down: torch.Tensor, gate_up_bias: torch.Tensor | None = None,
                      down_bias: torch.Tensor | None = None, limit: float = 0.0, alpha: float = 1.0,
                      gelu: bool = False) -> torch.Tensor:
    """Each (token, expert) pair's SwiGLU output times its routing weight, summed per token; the
    pairs sorted by expert, so that each expert multiplies all its tokens at once.
    ``gate_up`` [experts, 2 x width, hidden] (gate rows, then up rows), ``down`` [experts,
    hidden, width]; the biases [experts, 2 x width] and [experts, hidden] and the clamped
    SwiGLU (``limit``, ``alpha``) where the model has them (gpt-oss); ``gelu``: GeGLU experts (Gemma 4)."""
    top_k, width = chosen.shape[1], down.shape[2]
    weights, chosen = weights.flatten(), chosen.flatten()
    order = torch.argsort(chosen, stable=True)
    rows = order // top_k  # each pair's token
    counts = torch.bincount(chosen, minlength=gate_up.shape[0]).tolist()
    out = torch.zeros_like(h)
    start = 0
    for expert, taken in enumerate(counts):
        if not taken:
            continue
        pairs = order[start:start + taken]
        tokens = rows[start:start + taken]
        start += taken
        products = h[tokens] @ gate_up[expert].T
        if gate_up_bias is not None:
            products = products + gate_up_bias[expert]
        hidden = glu(products[:, :width], products[:, width:], limit, alpha, gelu) @ down[expert].T
        if down_bias is not None:
            hidden = hidden + down_bias[expert]
        out.index_add_(0, tokens, hidden * weights[pairs, None])
    return out
