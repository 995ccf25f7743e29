"""Hardware specs for the analytic roofline profile, and KV capacity from memory.

Peak dense bf16 FLOP/s and memory bandwidth are NVIDIA's data-sheet figures (H100 SXM5:
989 TFLOP/s, 3.35 TB/s, 80 GB; H200 SXM: 989 TFLOP/s, 4.8 TB/s, 141 GB; A100 SXM 80GB:
312 TFLOP/s, 2.039 TB/s; A100 SXM 40GB: 312 TFLOP/s, 1.555 TB/s; L40S: 362 TFLOP/s without
sparsity, 864 GB/s of GDDR6, 48 GB, no NVLink: PCIe Gen4 x16, 32 GB/s a direction, the
nominal figure, which all-reduces through the host reach only part of; L4: 121 TFLOP/s without
sparsity, 300 GB/s of GDDR6, 24 GB, PCIe Gen4 x16). The achievable fractions, kernel launch cost and per-step CPU
overhead are assumptions of ours until a measured profile replaces them.

Tensor parallelism (``tensor_parallel`` GPUs, Megatron-style, as vLLM shards a model): each
GPU holds 1/p of the query heads, of the MLP's intermediate columns and of the vocabulary,
and max(1, kv heads / p) kv heads (replicated where p exceeds them), so 1/p of the weights
and of the KV cache per token; each layer all-reduces the hidden states twice (after the
attention output and the MLP down projection). NVLink per GPU and direction: 450 GB/s (H100
and H200 SXM, 900 GB/s both ways on the data sheets), 300 GB/s (A100 SXM); nccl-tests reach
busbw of 460-480 GB/s on 8 H100 SXM and 230-250 GB/s on 8 A100 SXM for large all-reduces
(docs.alayanew.com, "NCCL-tests in practice", 2026). The all-reduce's fixed latency is an
assumption of ours.

A host-memory KV tier (``schedule.overrides.host_cache_blocks``) loads blocks over PCIe: Gen5
x16 on H100 and H200 SXM (64 GB/s a direction, nominal), Gen4 x16 on the A100s, L40S and L4
(32 GB/s); 80 % of it achievable is our assumption, and so is whether stores delay a step. A
tier shared by engines on several machines (Mooncake's store) loads another machine's blocks over
RDMA: one 400 Gb/s NIC a GPU on H100 and H200 nodes (DGX H100), 200 Gb/s on the others (DGX
A100), at the same 80 %; a published test of vLLM's Mooncake connector on an H20 pulled remote
blocks at an effective 5-7 GB/s only (gitea.gahow.org/gahow/agentic-kvc, 2026): set
``pool_bandwidth`` to what your network gives.
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
    # ... in a mixture-of-experts layer's grouped GEMMs (vLLM's fused MoE), which run further from
    # peak the narrower the experts (README: 49 % at Mixtral's width, about 10 % at Qwen3's)
    moe_compute_efficiency: float = 0.7
    memory_efficiency: float = 0.8    # achievable fraction of HBM bandwidth
    # ... in the attention kernels' reads of the KV cache, where they fall short of the rest (0: the
    # same as memory_efficiency). Gemma 4's full layers (head size 512) run on Triton kernels that
    # AMD measured at 7-32 % of an MI325's bandwidth in decode (ROCm/aiter PR #5664; README)
    attention_efficiency: float = 0.0
    kernel_launch_s: float = 4e-6     # per kernel launch
    step_overhead_s: float = 1.5e-3   # scheduler, input preparation, sampling launch, per step
    step_overhead_per_request_s: float = 1e-5
    memory_utilization: float = 0.9   # fraction of memory the engine may take (vLLM default)
    activation_reserve_bytes: float = 2 * GB
    tensor_parallel: int = 1          # GPUs one model is sharded over (each one of these)
    interconnect_bandwidth: float = 450 * GB  # bytes/s per GPU and direction (NVLink)
    interconnect_efficiency: float = 0.8      # achievable fraction of it in an all-reduce
    allreduce_latency_s: float = 10e-6        # fixed cost of one all-reduce
    host_bandwidth: float = 64 * GB           # bytes/s host -> GPU (PCIe Gen5 x16 a direction, nominal)
    host_efficiency: float = 0.8              # achievable fraction of it loading KV blocks
    host_store_blocking: bool = True          # stores to the tier delay the step (LMCache 0.3); False:
                                              # hidden behind the GPU's work (an asynchronous connector)
    pool_bandwidth: float = 50 * GB           # bytes/s another machine's tier -> this GPU (RDMA NIC)
    host_load_overlap: bool = False           # loads pipelined layer by layer under the step's kernels
                                              # (LMCache's layerwise mode): only what they do not hide
    step_overlap: bool = False                # a step's compute-bound and memory-bound kernels run at once
                                              # (NanoFlow): it takes the larger of the two (sim/overlap.py)

    def __post_init__(self) -> None:
        for field_name in ("peak_flops", "hbm_bandwidth", "memory_bytes"):
            if not getattr(self, field_name) > 0:
                raise ConfigError(f"hardware {self.name!r}: {field_name} must be > 0")
        for field_name in ("compute_efficiency", "moe_compute_efficiency", "memory_efficiency", "memory_utilization",
                           "interconnect_efficiency", "host_efficiency"):
            if not 0 < getattr(self, field_name) <= 1:
                raise ConfigError(f"hardware {self.name!r}: {field_name} must be in (0, 1]")
        for field_name in ("host_bandwidth", "pool_bandwidth"):
            if not getattr(self, field_name) > 0:
                raise ConfigError(f"hardware {self.name!r}: {field_name} must be > 0 (bytes/s)")
        for field_name in ("host_store_blocking", "host_load_overlap", "step_overlap"):
            if not isinstance(getattr(self, field_name), bool):
                raise ConfigError(f"hardware {self.name!r}: {field_name} is {getattr(self, field_name)!r}; "
                                  f"expected true or false")
        if not 0 <= self.attention_efficiency <= 1:
            raise ConfigError(f"hardware {self.name!r}: attention_efficiency must be in [0, 1] (0: memory_efficiency's)")
        if not isinstance(self.tensor_parallel, int) or self.tensor_parallel < 1:
            raise ConfigError(f"hardware {self.name!r}: tensor_parallel is {self.tensor_parallel!r}; "
                              f"expected a whole number of GPUs >= 1")
        if self.tensor_parallel > 1 and not (self.interconnect_bandwidth > 0 and self.allreduce_latency_s >= 0):
            raise ConfigError(f"hardware {self.name!r}: tensor parallelism needs interconnect_bandwidth > 0 and "
                              f"allreduce_latency_s >= 0")

    @property
    def label(self) -> str:
        """The name, with the GPU count under tensor parallelism ("h100-sxm x8 TP")."""
        return self.name if self.tensor_parallel == 1 else f"{self.name} x{self.tensor_parallel} TP"

    def allreduce_s(self, nbytes):
        """Seconds of a ring all-reduce of ``nbytes`` over the tensor-parallel GPUs (0 on one)."""
        return self._collective_s(nbytes, 2)

    def gather_s(self, nbytes):
        """Seconds to gather ``nbytes`` (the whole, 1/p from each GPU) on one GPU (0 on one)."""
        return self._collective_s(nbytes, 1)

    def _collective_s(self, nbytes, passes: int):
        """A collective that moves ``passes`` x (p-1)/p of ``nbytes`` over each GPU's link."""
        p = self.tensor_parallel
        if p == 1:
            return nbytes * 0.0
        rate = self.interconnect_bandwidth * self.interconnect_efficiency
        return self.allreduce_latency_s + passes * (p - 1) / p * nbytes / rate


@dataclass(frozen=True, slots=True)
class Shard:
    """One GPU's share of a model under tensor parallelism."""
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    weight_bytes: float      # the GPU's weights
    kv_bytes_per_token: int  # the GPU's KV cache per token (all layers)
    full_kv_heads: int = 0   # the full layers' kv heads where their own (Gemma 4; 0: num_kv_heads)


def shard(model: ModelSpec, hardware: HardwareSpec) -> Shard:
    """What one of ``hardware.tensor_parallel`` GPUs holds; a split the heads do not allow
    (as vLLM requires: query heads divisible by p, kv heads divisible by p or p by them) is
    refused."""
    p = hardware.tensor_parallel
    full_kv = model.full_kv_heads
    if p == 1:
        return Shard(model.num_heads, model.num_kv_heads, model.intermediate_size, model.vocab_size,
                     model.weight_bytes_total, model.kv_bytes_per_token, full_kv)
    for nkv in {model.num_kv_heads, full_kv or model.num_kv_heads}:
        if model.num_heads % p or (nkv % p and p % nkv):
            raise ConfigError(f"model {model.name!r} cannot be split over tensor_parallel={p} GPUs: its "
                              f"{model.num_heads} query heads must divide by {p}, and its {nkv} kv heads divide by "
                              f"{p} or {p} by them")
    return Shard(model.num_heads // p, max(model.num_kv_heads // p, 1), -(-model.intermediate_size // p),
                 -(-model.vocab_size // p), model.weight_bytes_total / p, model.kv_bytes_per_token_on(p),
                 max(full_kv // p, 1) if full_kv else 0)


HARDWARE_PRESETS: dict[str, HardwareSpec] = {
    "h100-sxm": HardwareSpec("h100-sxm", 989e12, 3.35e12, 80 * GB),
    "h200": HardwareSpec("h200", 989e12, 4.8e12, 141 * GB),
    "a100-80gb": HardwareSpec("a100-80gb", 312e12, 2.039e12, 80 * GB, interconnect_bandwidth=300 * GB,
                              host_bandwidth=32 * GB, pool_bandwidth=25 * GB),
    "a100-40gb": HardwareSpec("a100-40gb", 312e12, 1.555e12, 40 * GB, interconnect_bandwidth=300 * GB,
                              host_bandwidth=32 * GB, pool_bandwidth=25 * GB),
    "l40s": HardwareSpec("l40s", 362e12, 0.864e12, 48 * GB, interconnect_bandwidth=32 * GB, host_bandwidth=32 * GB,
                         pool_bandwidth=25 * GB),
    "l4": HardwareSpec("l4", 121e12, 0.3e12, 24 * GB, interconnect_bandwidth=32 * GB, host_bandwidth=32 * GB,
                       pool_bandwidth=25 * GB),
}


def hardware_spec(name: str, **overrides: object) -> HardwareSpec:
    return from_presets("hardware", HARDWARE_PRESETS, name, overrides)


def kv_capacity_blocks(model: ModelSpec, hardware: HardwareSpec, block_size: int) -> int:
    """KV blocks that fit in (memory x utilisation - weights - activation reserve), per GPU
    under tensor parallelism (each GPU holds its heads' share of every block)."""
    usable = hardware.memory_bytes * hardware.memory_utilization
    part = shard(model, hardware)
    left = usable - part.weight_bytes - hardware.activation_reserve_bytes
    if left <= 0:
        gpus = "" if hardware.tensor_parallel == 1 else \
            f" per GPU (1/{hardware.tensor_parallel} of {model.weight_bytes_total / GB:.1f} GB)"
        raise ConfigError(
            f"model {model.name!r} does not fit on {hardware.label!r}: weights take "
            f"{part.weight_bytes / GB:.1f} GB{gpus} of {usable / GB:.1f} GB usable "
            f"({hardware.memory_utilization:.0%} of {hardware.memory_bytes / GB:.0f} GB) plus "
            f"{hardware.activation_reserve_bytes / GB:.1f} GB for activations; try "
            f"hardware.overrides.tensor_parallel=N (N GPUs) or model.overrides.weight_bytes=0.5 (4-bit)")
    blocks = int(left // (part.kv_bytes_per_token * block_size))
    if blocks < 1:
        raise ConfigError(f"model {model.name!r} on {hardware.label!r}: no room for a single KV block")
    return blocks


def kv_reserve_note(model: ModelSpec, hardware: HardwareSpec) -> str:
    """A warning where the activation reserve is a large share (15 % or more) of the memory the
    weights leave: the KV cache, and every figure under memory pressure, then hangs on a guess
    (vLLM's logs show ~9 GiB besides weights and KV for gpt-oss-120b on one H100, against the
    2 GB reserve); "" otherwise."""
    left = hardware.memory_bytes * hardware.memory_utilization - shard(model, hardware).weight_bytes
    reserve = hardware.activation_reserve_bytes
    if left <= 0 or reserve < 0.15 * left:
        return ""
    return (f"note: the weights leave {left / GB:.1f} GB a GPU, and {reserve / GB:.1f} GB of it are reserved for "
            f"activations (hardware.overrides.activation_reserve_bytes): a misjudged reserve moves the KV cache by "
            f"as much. Compare the KV blocks with your engine's log (vLLM: 'Available KV cache memory') and set "
            f"the reserve to match")


def window_blocks_note(model: ModelSpec, block_size: int, tensor_parallel: int = 1) -> str:
    """What a running request of a model with vLLM's hybrid KV cache holds besides its blocks
    (its sliding layers' window: ``ModelSpec.window_blocks``); "" for other models."""
    window = model.window_blocks(block_size, tensor_parallel)
    if not window:
        return ""
    size, _, groups = model.kv_groups
    most = window.held(1 << 30)
    if model.linear_layers:
        return (f"note: blocks of {block_size:,} tokens, as vLLM serves this model (its attention page holds a "
                f"linear-attention layer's state; its prefix cache hits whole blocks only), and each running request "
                f"also holds {most} for its linear-attention layers' state ({groups} groups of {size} layers); a block "
                f"boundary it computes leaves a snapshot of the state, {most} blocks, in the LRU prefix cache where a hit "
                f"can start from it (a hit needs the one after its last block), as vLLM 0.29 keeps them "
                f"(schedule.overrides.retention_interval=null: at every boundary, as vLLM 0.28)")
    pages = window.sliding_groups // groups  # a block's pages in one sliding group, and in a full one
    ratio = max(pages, window.full_groups // model.kv_groups[1])  # page_tokens_ratio
    per_group = f" blocks' pages, {window.per_group * pages} pages," if pages > 1 else ""
    paged = "" if ratio == 1 else (
        f"blocks of {block_size:,} tokens, as vLLM serves this model (its {'sliding' if pages > 1 else 'full'} "
        f"layers' pages hold 1/{ratio} of the tokens of the others', so that every page takes the same bytes; its "
        f"prefix cache hits whole blocks only); ")
    return (f"note: {paged}each running request also holds up to {most:,} blocks for its sliding layers' last "
            f"{model.sliding_window:,} tokens ({window.per_group}{per_group} in each of {groups} groups of {size} "
            f"layers; fewer where its window lies in a prefix running requests hold), the KV of {most * block_size:,} "
            f"tokens, and "
            f"leaves those its window has passed in the LRU prefix cache where a hit can start from them (a hit needs "
            f"those of its last {window.need} blocks), as vLLM 0.29 keeps them (schedule.overrides.retention_interval="
            f"null: every one, as vLLM 0.28); model.overrides.sliding_kv_full=true keeps every layer's KV for every "
            f"token instead")
