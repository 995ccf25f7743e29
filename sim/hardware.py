"""Hardware specs for the analytic roofline profile, and KV capacity from memory.

Peak dense bf16 FLOP/s and HBM bandwidth are NVIDIA's data-sheet figures (H100 SXM5:
989 TFLOP/s, 3.35 TB/s, 80 GB; H200 SXM: 989 TFLOP/s, 4.8 TB/s, 141 GB; A100 SXM 80GB:
312 TFLOP/s, 2.039 TB/s). The achievable fractions, kernel launch cost and per-step CPU
overhead are assumptions of ours until a measured profile replaces them.
"""
from __future__ import annotations

from dataclasses import dataclass

from scheduler.config import from_presets
from scheduler.errors import ConfigError
from scheduler.model_spec import ModelSpec

GB = 10**9


@dataclass(frozen=True, slots=True)
class HardwareSpec:
    name: str
    peak_flops: float                 # dense bf16 FLOP/s
    hbm_bandwidth: float              # bytes/s
    memory_bytes: float
    compute_efficiency: float = 0.7   # achievable fraction of peak FLOP/s in large GEMMs
    memory_efficiency: float = 0.8    # achievable fraction of HBM bandwidth
    kernel_launch_s: float = 4e-6     # per kernel launch
    step_overhead_s: float = 1.5e-3   # scheduler, input preparation, sampling launch, per step
    step_overhead_per_request_s: float = 1e-5
    memory_utilization: float = 0.9   # fraction of memory the engine may take (vLLM default)
    activation_reserve_bytes: float = 2 * GB

    def __post_init__(self) -> None:
        for field_name in ("peak_flops", "hbm_bandwidth", "memory_bytes"):
            if not getattr(self, field_name) > 0:
                raise ConfigError(f"hardware {self.name!r}: {field_name} must be > 0")
        for field_name in ("compute_efficiency", "memory_efficiency", "memory_utilization"):
            if not 0 < getattr(self, field_name) <= 1:
                raise ConfigError(f"hardware {self.name!r}: {field_name} must be in (0, 1]")


HARDWARE_PRESETS: dict[str, HardwareSpec] = {
    "h100-sxm": HardwareSpec("h100-sxm", 989e12, 3.35e12, 80 * GB),
    "h200": HardwareSpec("h200", 989e12, 4.8e12, 141 * GB),
    "a100-80gb": HardwareSpec("a100-80gb", 312e12, 2.039e12, 80 * GB),
}


def hardware_spec(name: str, **overrides: object) -> HardwareSpec:
    return from_presets("hardware", HARDWARE_PRESETS, name, overrides)


def kv_capacity_blocks(model: ModelSpec, hardware: HardwareSpec, block_size: int) -> int:
    """KV blocks that fit in (memory x utilisation - weights - activation reserve)."""
    usable = hardware.memory_bytes * hardware.memory_utilization
    left = usable - model.weight_bytes_total - hardware.activation_reserve_bytes
    if left <= 0:
        raise ConfigError(
            f"model {model.name!r} does not fit on {hardware.name!r}: weights take "
            f"{model.weight_bytes_total / GB:.1f} GB of {usable / GB:.1f} GB usable "
            f"({hardware.memory_utilization:.0%} of {hardware.memory_bytes / GB:.0f} GB) plus "
            f"{hardware.activation_reserve_bytes / GB:.1f} GB for activations; try model.weight_bytes=0.5 (4-bit)")
    blocks = int(left // (model.kv_bytes_per_token * block_size))
    if blocks < 1:
        raise ConfigError(f"model {model.name!r} on {hardware.name!r}: no room for a single KV block")
    return blocks
