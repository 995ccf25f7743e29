"""RMSNorm, optionally fused with the residual add before it (``x + residual`` is both normed
and returned as the new residual), computed in fp32 like Hugging Face's ``LlamaRMSNorm`` (the
normed value rounded, then times the weight), or with ``gemma`` like ``Gemma3RMSNorm`` (times
1 + weight in fp32, rounded once; ``offset`` 0: ``Gemma4RMSNorm``'s times weight in fp32)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rmsnorm_kernel(x_ptr, residual_ptr, weight_ptr, out_ptr, new_residual_ptr, hidden, eps,
                    HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr, GEMMA: tl.constexpr = False,
                    OFFSET: tl.constexpr = 1.0):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    x = tl.load(x_ptr + row * hidden + cols, mask=mask, other=0.0)
    dtype = x.dtype
    # arithmetic in fp32, rounded once per stored value: what torch's bf16/fp16 ops give too
    if HAS_RESIDUAL:
        x = (x.to(tl.float32) + tl.load(residual_ptr + row * hidden + cols, mask=mask, other=0.0).to(tl.float32)
             ).to(dtype)
        tl.store(new_residual_ptr + row * hidden + cols, x, mask=mask)
    x32 = x.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x32 * x32, 0) / hidden + eps)
    weight = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    if GEMMA:  # Gemma: x / rms(x) (1 + w) in fp32, one rounding (Gemma 4: offset 0)
        out = x32 * rstd * (OFFSET + weight)
    else:
        out = weight * (x32 * rstd).to(dtype, fp_downcast_rounding="rtne").to(tl.float32)  # HF rounds here too
    tl.store(out_ptr + row * hidden + cols, out.to(dtype, fp_downcast_rounding="rtne"), mask=mask)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None,
             gemma: bool = False, offset: float = 1.0):
    """``x`` [tokens, hidden] -> normed, or (normed, x + residual) when ``residual`` is given;
    ``gemma``: Gemma's convention (times ``offset`` + weight in fp32)."""
    if x.dim() != 2 or weight.shape != (x.shape[1],) or not x.is_contiguous():
        raise ValueError(f"expected contiguous x [tokens, hidden] and weight [hidden], got {tuple(x.shape)}, "
                         f"{tuple(weight.shape)}")
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype or not residual.is_contiguous()):
        raise ValueError("residual must be contiguous and shaped and typed like x")
    out = torch.empty_like(x)
    new_residual = torch.empty_like(x) if residual is not None else out
    if x.shape[0]:
        _rmsnorm_kernel[(x.shape[0],)](x, residual if residual is not None else x, weight, out, new_residual,
                                       x.shape[1], eps, HAS_RESIDUAL=residual is not None,
                                       BLOCK=triton.next_power_of_2(x.shape[1]), GEMMA=gemma,
                                       OFFSET=float(offset))
    return (out, new_residual) if residual is not None else out


def rms_norm_reference(x, weight, eps, residual=None, gemma=False, offset=1.0):
    if residual is not None:
        x = x + residual
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    normed = (normed * (offset + weight.float())).to(x.dtype) if gemma else weight * normed.to(x.dtype)
    return (normed, x) if residual is not None else normed
