"""The fused MoE kernel (kernels/fused_moe.py) on a GPU, part of bench_kernels.py's run.

At Mixtral-8x7B's experts split over TP 2 (8 experts, hidden 4096, width 7168, top 2; the shape
vLLM published H100 times for, benchmarks/published/h100-fused-moe-vllm-pr24700.csv) and
Qwen3-30B-A3B's (128 experts, hidden 2048, width 768, top 8), bf16, random router logits
(uniform routing, as vLLM's benchmark_moe.py): per batch the kernel's time, the engine's torch
loop over experts, the roofline's charge for the same call on this GPU's preset, and vLLM's
published time where there is one; then the kernel's block sizes swept at two batches.
"""
from __future__ import annotations

import sys
from itertools import product
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

SHAPES = {"mixtral-8x7b": (8, 4096, 7168, 2, 2), "qwen3-30b-a3b": (128, 2048, 768, 8, 1)}  # E, h, W, k, TP


def moe_results(bench, device: str, dry: bool, device_name: str = "") -> dict:
    from engine.experts import experts_reference, route
    from kernels.fused_moe import fused_experts
    from moe_kernel import published_rows, predicted_us

    dtype = torch.float32 if dry else torch.bfloat16
    preset = "h200" if "H200" in device_name else "h100-sxm"
    published = {(row["model"], int(row["batch"])): float(row["kernel_us"]) for row in published_rows()
                 if row["weight_dtype"] == "bf16"}
    out = {"hardware_preset_for_roofline": preset, "rows": [], "sweep": []}
    for model, (experts, hidden, width, top_k, tp) in SHAPES.items():
        if dry:
            experts, hidden, width, top_k = 4, 64, 32, 2
        gate_up = torch.randn((experts, 2 * width, hidden), device=device, dtype=dtype) * 0.02
        down = torch.randn((experts, hidden, width), device=device, dtype=dtype) * 0.02
        router = torch.randn((experts, hidden), device=device, dtype=dtype)
        for batch in ((1, 5) if dry else (1, 8, 64, 256, 1024, 4096)):
            x = torch.randn((batch, hidden), device=device, dtype=dtype)
            weights, chosen = route(x, router, top_k, True)
            if dry:  # the kernel must agree with the engine's torch experts
                torch.testing.assert_close(fused_experts(x, weights, chosen, gate_up, down),
                                           experts_reference(x, weights, chosen, gate_up, down), rtol=1e-4, atol=1e-5)
            kernel_ms = bench(lambda: fused_experts(x, weights, chosen, gate_up, down))
            torch_ms = bench(lambda: experts_reference(x, weights, chosen, gate_up, down))
            roofline_us = predicted_us(model, tp, "bf16", batch, preset)
            out["rows"].append({"model": model, "batch": batch, "kernel_us": kernel_ms * 1e3, "torch_loop_us": torch_ms * 1e3,
                                "roofline_us": roofline_us, "vllm_h100_published_us": published.get((model, batch)),
                                "kernel_over_roofline": kernel_ms * 1e3 / roofline_us})
        for batch in ((5,) if dry else (64, 1024)):
            x = torch.randn((batch, hidden), device=device, dtype=dtype)
            weights, chosen = route(x, router, top_k, True)
            options = ((16,), (32,), (32,)) if dry else ((16, 64), (64, 128), (64,))
            for block_m, block_n, block_k in product(*options):
                ms = bench(lambda: fused_experts(x, weights, chosen, gate_up, down, block_m=block_m,
                                                 block_n=block_n, block_k=block_k))
                out["sweep"].append({"model": model, "batch": batch, "block_m": block_m, "block_n": block_n,
                                     "block_k": block_k, "us": ms * 1e3})
    out["sweep"].sort(key=lambda row: (row["model"], row["batch"], row["us"]))
    return out
