"""A mixture of SwiGLU experts in torch: the router's choice, and the experts' work as the
engine's reference path (the oracle of kernels/fused_moe.py)."""
from __future__ import annotations

import torch


def route(h: torch.Tensor, router: torch.Tensor, top_k: int, renormalise: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights [tokens, k] in h's dtype, expert ids [tokens, k]): each token's top ``top_k``
    experts by the router's softmax in fp32, their probabilities renormalised over the chosen
    ones where the model does (Mixtral, Qwen3-MoE), not where it does not."""
    probs = torch.softmax((h @ router.T).float(), dim=-1)
    weights, chosen = torch.topk(probs, top_k, dim=-1)
    if renormalise:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights.to(h.dtype), chosen


def experts_reference(h: torch.Tensor, weights: torch.Tensor, chosen: torch.Tensor, gate_up: torch.Tensor,
                      down: torch.Tensor) -> torch.Tensor:
    """Each (token, expert) pair's SwiGLU output times its routing weight, summed per token; the
    pairs sorted by expert, so that each expert multiplies all its tokens at once.
    ``gate_up`` [experts, 2 x width, hidden] (gate rows, then up rows), ``down`` [experts,
    hidden, width]."""
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
        hidden = torch.nn.functional.silu(products[:, :width]) * products[:, width:]
        out.index_add_(0, tokens, (hidden @ down[expert].T) * weights[pairs, None])
    return out
