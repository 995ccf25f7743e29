"""Gated DeltaNet (Yang, Kautz and Hatamizadeh, arXiv 2412.06464), the linear attention of
Qwen3-Next and Qwen3.5, in torch: the reference the engine runs on any device.

Per value head, a state S (key dim x value dim) replaces the KV cache. Token t decays it by
a_t = exp(g_t), reads what it holds for its key, writes back beta_t of the difference:
``S_t = a_t S_{t-1} + k_t delta_t^T`` with ``delta_t = beta_t (v_t - a_t S_{t-1}^T k_t)``, and
outputs ``S_t^T q_t``. ``delta_rule_chunk`` computes a request's chunk of tokens a block of up
to ``SUB`` tokens at a time, in matrices: unrolled over a block from its starting state S_0,
with gamma_t the decay since the block's start,

    delta_t = beta_t (v_t - gamma_t S_0^T k_t - sum_{i<t} (gamma_t / gamma_i) (k_t . k_i) delta_i)

is one unit lower-triangular solve for the block's deltas, and the outputs and the block's end
state follow from them in two matrix products. Everything in fp32. ``delta_rule_step`` is the
one-token recurrence for a batch of decodes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

SUB = 64  # tokens solved together (the triangular system's size)


def delta_rule_chunk(q, k, v, g, beta, state, cuts=()):
    """One request's tokens: ``q``, ``k`` [n, heads, key dim] (normalised, q scaled), ``v`` [n,
    heads, value dim], ``g`` (log decay) and ``beta`` [n, heads], ``state`` [heads, key dim, value
    dim], all fp32. Returns the outputs [n, heads, value dim], the state after the last token, and
    the states after each token count in ``cuts`` (ascending, within 1..n-1)."""
    n = q.shape[0]
    outputs, saved = [], []
    for begin in range(0, n, SUB):
        end = min(begin + SUB, n)
        inner = [c - begin for c in cuts if begin < c <= end]
        out, state, states = _block(q[begin:end], k[begin:end], v[begin:end], g[begin:end], beta[begin:end], state,
                                    inner)
        outputs.append(out)
        saved += states
    return torch.cat(outputs), state, saved


def _block(q, k, v, g, beta, state, cuts=()):
    """One block's outputs, end state, and the states after each of ``cuts`` tokens into it:
    gamma_c S_0 + sum_{i<c} (gamma_c / gamma_i) k_i delta_i^T, from the block's deltas."""
    q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)  # [heads, m, dim]
    decay = g.transpose(0, 1).cumsum(-1)  # log gamma_t [heads, m]
    beta = beta.transpose(0, 1)
    m = q.shape[1]
    below = torch.ones(m, m, dtype=torch.bool, device=q.device).tril()
    # gamma_t / gamma_i for i <= t (0 above the diagonal: masked before exp, which would overflow there)
    ratio = (decay[:, :, None] - decay[:, None, :]).masked_fill(~below, float("-inf")).exp()
    gamma = decay.exp()[..., None]
    strict = (beta[..., None] * ratio * (k @ k.transpose(1, 2))).tril(-1)
    eye = torch.eye(m, dtype=q.dtype, device=q.device)
    right = beta[..., None] * (v - gamma * (k @ state))
    deltas = torch.linalg.solve_triangular(eye + strict, right, upper=False, unitriangular=True)
    out = gamma * (q @ state) + ((q @ k.transpose(1, 2)) * ratio) @ deltas

    def after(c):  # the state after the block's first c tokens
        last = decay[:, c - 1:c]  # log gamma of its c-th token
        return last.exp()[..., None] * state + k[:, :c].transpose(1, 2) @ ((last - decay[:, :c]).exp()[..., None]
                                                                            * deltas[:, :c])
    return out.transpose(0, 1), after(m), [after(c) for c in cuts]


def delta_rule_step(q, k, v, g, beta, state):
    """One token for each of a batch: ``q``, ``k`` [batch, heads, key dim], ``v`` [batch, heads,
    value dim], ``g``, ``beta`` [batch, heads], ``state`` [batch, heads, key dim, value dim], fp32.
    Returns the outputs [batch, heads, value dim] and the new states."""
    state = state * g.exp()[..., None, None]
    read = torch.einsum("bhk,bhkv->bhv", k, state)
    state = state + k[..., None] * ((v - read) * beta[..., None])[..., None, :]
    return torch.einsum("bhk,bhkv->bhv", q, state), state


def causal_conv(x, history, weight):
    """The short causal depthwise convolution then SiLU, in fp32: ``x`` [n, channels] after
    ``history`` [kernel - 1, channels] (the inputs before them, zeros at a sequence's start),
    ``weight`` [channels, kernel]. Returns the outputs [n, channels] and the inputs it read
    [kernel - 1 + n, channels] (the history at any point is a window of them)."""
    inputs = torch.cat((history.float(), x.float()))
    out = F.conv1d(inputs.T[None], weight.float()[:, None, :], groups=weight.shape[0])[0].T
    return F.silu(out), inputs


def l2_normalise(x, eps: float = 1e-6):
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)


def gated_rms_norm(x, gate, weight, eps: float):
    """The output norm: RMSNorm of ``x`` (fp32, rounded to its dtype, times the weight), times
    SiLU of ``gate`` in fp32, rounded once more."""
    x32 = x.float()
    normed = weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return (normed * F.silu(gate.float())).to(x.dtype)
