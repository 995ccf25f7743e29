"""The roofline's mixture-of-experts layer against vLLM's fused MoE kernel on an H100.

Reads benchmarks/published/h100-fused-moe-vllm-pr24700.csv (vLLM PR #24700's benchmark_moe.py
figures: random routing, one layer's fused_experts call) and prints, per batch size, the
published kernel time beside what batchlab's roofline charges for the same call
(sim/roofline.experts_mlp_seconds without the router: the grouped GEMMs over the experts the
batch touches, expected under uniform routing, the SiLU-and-multiply and the weighted sum), on
the h100-sxm preset with its default efficiencies. For the fp8 rows the weights are one byte
and the peak FLOP/s the H100's fp8 rate (twice bf16's).

    python benchmarks/moe_kernel.py
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scheduler.model_spec import model_spec  # noqa: E402
from sim.hardware import hardware_spec  # noqa: E402
from sim.roofline import experts_mlp_seconds, experts_touched, roofs  # noqa: E402

PUBLISHED = Path(__file__).parent / "published" / "h100-fused-moe-vllm-pr24700.csv"


def published_rows(path: Path = PUBLISHED) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(line for line in handle if not line.startswith("#")))


def predicted_us(model_name: str, tensor_parallel: int, weight_dtype: str, batch: int,
                 hardware_preset: str = "h100-sxm") -> float:
    """The roofline's fused_experts time for one layer, microseconds."""
    fp8 = weight_dtype == "fp8"
    model = model_spec(model_name, **({"weight_bytes": 1.0} if fp8 else {}))
    base = hardware_spec(hardware_preset)
    hardware = hardware_spec(hardware_preset, tensor_parallel=tensor_parallel,
                             **({"peak_flops": 2 * base.peak_flops} if fp8 else {}))
    roof, gemm = roofs(model, hardware)
    width = -(-model.moe_intermediate_size // tensor_parallel)
    grouped = roofs(model, hardware, experts=True)[0]
    return float(experts_mlp_seconds(model, np.array([float(batch)]), width, roof, gemm, router=False,
                                     grouped_roof=grouped)[0]) * 1e6


def comparison() -> list[tuple[str, int, float, float, float]]:
    """(model, batch, experts touched, published us, predicted us) per published row."""
    out = []
    for row in published_rows():
        batch = int(row["batch"])
        touched = float(experts_touched(model_spec(row["model"]), np.array([float(batch)]))[0])
        out.append((row["model"], batch, touched, float(row["kernel_us"]),
                    predicted_us(row["model"], int(row["tensor_parallel"]), row["weight_dtype"], batch)))
    return out


def main() -> None:
    print(f"{'model':<15} {'batch':>5} {'experts':>7} {'vLLM us':>8} {'roofline us':>11} {'ratio':>6}")
    for model, batch, touched, measured, predicted in comparison():
        print(f"{model:<15} {batch:>5} {touched:>7.1f} {measured:>8.1f} {predicted:>11.1f} {predicted / measured:>6.2f}")


if __name__ == "__main__":
    main()
