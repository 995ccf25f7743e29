"""gpt-oss's MXFP4 expert weights (OCP Microscaling: 4-bit E2M1 values, one power-of-two scale
a block of 32), dequantized when a checkpoint is loaded: the engine computes in bf16 or fp32."""
from __future__ import annotations

import torch

E2M1 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)  # the magnitudes of codes 0-7; bit 3 is the sign


def dequantize_mxfp4(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``blocks`` [..., groups, 16] uint8 (two codes a byte, the low nibble first), ``scales``
    [..., groups] uint8 (the exponent biased by 127) -> [..., groups x 32] in ``dtype``. Every
    value is exact in bf16 (a 2-bit mantissa times a power of two)."""
    codes = torch.stack((blocks & 0x0F, blocks >> 4), dim=-1).flatten(-2).long()
    magnitude = torch.tensor(E2M1, device=blocks.device)[codes & 7]
    values = torch.where(codes >= 8, -magnitude, magnitude)
    return torch.ldexp(values, scales.long()[..., None] - 127).flatten(-2).to(dtype)
