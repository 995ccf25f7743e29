"""An analytic roofline profile: each kernel costs max(FLOPs / achievable FLOP/s, bytes /
achievable bandwidth) plus its launches, tabulated on the same grids a measured profile uses.

Under tensor parallelism the tables are one GPU's (its share of heads, MLP columns and
vocabulary; sim/hardware.py) and the communication is charged where it happens: an all-reduce
of the hidden states in ``linear_o`` and in ``mlp`` (after the row-parallel GEMMs), a gather of
the logits in ``lm_head_sampling``; none of it overlapped with compute."""
from __future__ import annotations

from datetime import date

import numpy as np

from scheduler.model_spec import ModelSpec

from .hardware import HardwareSpec, shard
from .latent_attention import latent_attention_tables
from .linear_attention import blend_linear_attention
from .profile import Profile, Table



def _rounded_grid(end: int, points: int) -> np.ndarray:
    """Whole numbers spaced geometrically from 1 to ``end``, without repeats (``np.unique``
    would do, but numpy 2's imports numpy.ma: 25 ms of every command's start-up)."""
    grid = np.round(np.geomspace(1, end, points))
    return grid[np.concatenate(([True], np.diff(grid) > 0))].astype(float)


TOKENS = _rounded_grid(1 << 18, 73)
QUERIES = _rounded_grid(1 << 16, 49)
CONTEXTS = _rounded_grid(1 << 21, 64)


def experts_touched(model: ModelSpec, tokens: np.ndarray) -> np.ndarray:
    """Experts a step of ``tokens`` tokens reads, expected, if routing picks each token's
    ``experts_per_token`` uniformly among ``num_experts``: each expert is missed by all of them
    with probability (1 - k/E)^T. Real routers are skewed (fewer distinct experts at mid
    batches, so this errs towards dearer steps there); a decode of one token reads k, a prefill
    of thousands all of them."""
    E, k = model.num_experts, model.experts_per_token
    return E * -np.expm1(tokens * np.log1p(-k / E)) if k < E else np.full_like(tokens, float(E))


def experts_mlp_seconds(model: ModelSpec, T: np.ndarray, width: int, roof, gemm, router: bool = True,
                        grouped_roof=None) -> np.ndarray:
    """A mixture-of-experts layer (one GPU's share, experts ``width`` wide): the router's GEMM
    and softmax/top-k (``router``), then grouped gate+up and down GEMMs (vLLM's fused MoE: one
    launch each) that read the weights of the experts touched and multiply each token by its k
    experts, the SiLU-and-multiply, and the weighted sum of each token's k outputs
    (benchmarks/moe_kernel.py holds the part after the router to vLLM's published kernel times)."""
    h, E, k = model.hidden_size, model.num_experts, model.experts_per_token
    act, wb = model.activation_bytes, model.expert_bytes
    touched = experts_touched(model, T)
    pairs = T * k  # (token, expert) rows through the grouped GEMMs
    grouped = (grouped_roof or roof)(2 * pairs * 3 * h * width, touched * 3 * h * width * wb + pairs * (2 * h + 3 * width) * act, 2)
    experts = grouped + roof(0, pairs * 3 * width * act) + roof(0, pairs * h * act + T * h * act)
    return experts + (gemm(T, h, E) + roof(0, T * E * 4 + pairs * 8, launches=2) if router else 0.0)


def windowed_pairs(past: np.ndarray, context: np.ndarray, window: int) -> np.ndarray:
    """(query, key) pairs of a prefill chunk at positions past .. context - 1 in a layer where
    each token attends to its last ``window`` positions (itself included): the sum over n =
    past + 1 .. context of min(n, window)."""
    top = np.minimum(context, window)  # positions up to the window: n keys each
    rising = np.where(top > past, (top * (top + 1) - past * (past + 1)) / 2, 0.0)
    return rising + np.maximum(context - np.maximum(past, window), 0) * window


def roofs(model: ModelSpec, hardware: HardwareSpec, experts: bool = False, attention: bool = False):
    """(roof, gemm): a kernel's seconds from its FLOPs, bytes and launches; a GEMM's of
    ``tokens`` rows through a ``k`` x ``n`` weight. ``experts``: at the compute efficiency of a
    mixture-of-experts layer's grouped GEMMs; ``attention``: bytes at the attention kernels'
    share of the bandwidth (``attention_efficiency``, where set)."""
    efficiency = hardware.moe_compute_efficiency if experts else hardware.compute_efficiency
    flops_rate = hardware.peak_flops * efficiency
    bytes_rate = hardware.hbm_bandwidth * ((attention and hardware.attention_efficiency) or hardware.memory_efficiency)
    launch = hardware.kernel_launch_s
    act, wb = model.activation_bytes, model.weight_bytes

    def roof(flops, nbytes, launches=1):
        return np.maximum(flops / flops_rate, nbytes / bytes_rate) + launches * launch

    def gemm(tokens, k, n):
        return roof(2 * tokens * k * n, k * n * wb + tokens * (k + n) * act)
    return roof, gemm


def _grouped_query_tables(model: ModelSpec, nh: int, nkv: int, d: int, full: tuple[int, int], roof, gemm, T,
                          allreduce) -> dict:
    """The attention tables of grouped-query layers: ``nkv`` kv heads of size ``d`` (a GPU's
    share), the full layers' ``full`` (kv heads, head size: their own in Gemma 4, else the same).
    Sliding-window layers see at most their window: the tables hold the mean layer."""
    act = model.activation_bytes
    h = model.hidden_size
    nkv_f, d_f = full
    kv_outputs = 1 if model.full_keys_as_values else 2  # Gemma 4's full layers: keys as values, no v_proj
    sliding = len(model.sliding_layers) / model.num_layers
    window = model.sliding_window or 1

    def mean_layer(full, windowed):
        same = windowed is full or np.array_equal(full, windowed)
        return (1 - sliding) * full + sliding * windowed if sliding and not same else full

    def mix(full, windowed, full_scale, sliding_scale):  # each kind's quantity times its own scale
        if full_scale == sliding_scale:
            return full_scale * mean_layer(full, windowed)
        return mean_layer(full_scale * full, sliding_scale * windowed)
    queries = nh * (1 + model.attn_output_gate)
    tables = {
        "linear_qkv": Table(("tokens",), (T,), mean_layer(gemm(T, h, (queries + kv_outputs * nkv_f) * d_f),
                                                          gemm(T, h, (queries + 2 * nkv) * d))),
        "linear_o": Table(("tokens",), (T,), mean_layer(gemm(T, nh * d_f, h), gemm(T, nh * d, h))
                          + allreduce(T * h * act)),
    }
    q, c = np.meshgrid(QUERIES, CONTEXTS, indexing="ij")
    past = np.maximum(c - q, 0)
    pairs = (q * past + q * (q + 1) / 2, windowed_pairs(past, c, window))
    read = (c, np.minimum(c, q + window - 1))
    tables["attn_prefill"] = Table(("query_tokens", "context"), (QUERIES, CONTEXTS), roof(
        mix(*pairs, 4 * nh * d_f, 4 * nh * d),
        (mix(*read, 2 * nkv_f * d_f, 2 * nkv * d) + mix(q, q, 2 * nh * d_f, 2 * nh * d)) * act))
    seen = (c, np.minimum(c, window))  # a decode's keys; a group's prefix at most the window too
    tables["attn_decode"] = Table(("batch", "mean_context"), (QUERIES, CONTEXTS), roof(
        mix(q * seen[0], q * seen[1], 4 * nh * d_f, 4 * nh * d),
        (mix(q * seen[0], q * seen[1], 2 * nkv_f * d_f, 2 * nkv * d) + mix(q, q, 2 * nh * d_f, 2 * nh * d)) * act))
    # one read of the prefix KV serves all the group's queries (Hydragen / BatchLLM), plus the
    # log-sum-exp merge of the prefix and per-request partial outputs. No launch per group: one
    # fused launch covers every group's prefix and every request's own blocks (BatchLLM §5,
    # kernels/shared_prefix.py), and attn_decode already charges the step's one launch. Two
    # launches per group and layer, as before, cost a step of 60 groups of 2 about 15 ms on an
    # A100: more than reading each prefix twice.
    tables["attn_shared_prefix"] = Table(("queries", "prefix_len"), (QUERIES, CONTEXTS), roof(
        mix(q * seen[0], q * seen[1], 4 * nh * d_f, 4 * nh * d),
        (mix(*seen, 2 * nkv_f * d_f, 2 * nkv * d) + mix(q, q, 2 * nh * d_f, 2 * nh * d)) * act, launches=0)
        + roof(0, mix(q, q, 4 * nh * d_f * 4, 4 * nh * d * 4), launches=0))
    return tables


def _layer_kinds(model: ModelSpec, nkv: int, d: int, full: tuple[int, int]) -> list[tuple[float, int, int]]:
    """(share of the layers, kv heads, head size) of the full and the sliding layers, or of every
    layer where they do not differ."""
    if full == (nkv, d):
        return [(1.0, nkv, d)]
    sliding = len(model.sliding_layers) / model.num_layers
    return [(1 - sliding, *full), (sliding, nkv, d)]


def build_roofline_profile(model: ModelSpec, hardware: HardwareSpec) -> Profile:
    roof, gemm = roofs(model, hardware)
    part = shard(model, hardware)  # one GPU's share (the whole model on one GPU)
    h, d, I, V = model.hidden_size, model.head_dim, part.intermediate_size, part.vocab_size
    nh, nkv = part.num_heads, part.num_kv_heads
    act = model.activation_bytes
    allreduce = hardware.allreduce_s  # of the hidden states of T tokens: T * h * act bytes
    T = TOKENS
    def swiglu(width):  # gate+up GEMM, down GEMM, SiLU-and-multiply
        return gemm(T, h, 2 * width) + gemm(T, width, h) + roof(0, T * 3 * width * act)

    if model.num_experts:
        width = -(-model.moe_intermediate_size // hardware.tensor_parallel)
        mlp = experts_mlp_seconds(model, T, width, roof, gemm, grouped_roof=roofs(model, hardware, experts=True)[0])
        if model.shared_expert_intermediate_size:  # a SwiGLU every token takes (and its gate, Qwen2-MoE's)
            shared = -(-model.shared_expert_intermediate_size // hardware.tensor_parallel)
            mlp = mlp + swiglu(shared) + (gemm(T, h, 1) if model.shared_expert_gate else 0.0)
    else:
        mlp = swiglu(I)
    if model.first_dense_layers:  # tables hold a mean layer: the dense ones' share of the MLPs
        dense = model.first_dense_layers / model.num_layers
        mlp = dense * swiglu(I) + (1 - dense) * mlp
    tables = {"mlp": Table(("tokens",), (T,), mlp + allreduce(T * h * act))}
    attention_roof = roofs(model, hardware, attention=True)[0]  # the attention kernels' (not a DeltaNet's)
    if model.mla:
        attention, kv_bytes = latent_attention_tables(model, nh, attention_roof, gemm, T, (QUERIES, CONTEXTS),
                                                      allreduce)
        tables.update(attention)
    else:
        full = (part.full_kv_heads or nkv, model.full_head_dim or d)  # the full layers' (Gemma 4's own)
        tables.update(_grouped_query_tables(model, nh, nkv, d, full, attention_roof, gemm, T, allreduce))
        # the KV store (and Qwen3's q/k norms) of the mean layer
        kv_bytes = sum(share * (4 * heads * dim + (4 * (nh + heads) * dim if model.qk_norm else 0))
                       for share, heads, dim in _layer_kinds(model, nkv, d, full))
        blend_linear_attention(model, tables, hardware.tensor_parallel, roof, gemm, T, (QUERIES, CONTEXTS))
    # two RMSNorms (Gemma: four), two residual adds, RoPE, the KV-cache store
    norms = 4 if model.gemma else 2
    tables["elementwise"] = Table(("tokens",), (T,), roof(0, T * ((6 + 2 * norms) * h + kv_bytes) * act,
                                                           launches=3 + norms + 2 * (model.qk_norm or model.mla)))
    sampled = np.concatenate([[0.0], QUERIES])
    lm = gemm(sampled, h, V) + roof(0, sampled * V * 4) + hardware.gather_s(sampled * model.vocab_size * 4)
    lm[0] = 0.0
    tables["lm_head_sampling"] = Table(("sampled",), (sampled,), lm)
    requests = np.array([0.0, 1.0, 65536.0])
    tables["step_overhead"] = Table(("requests",), (requests,),
                                    hardware.step_overhead_s + requests * hardware.step_overhead_per_request_s)
    # a host-memory tier's copies either way: the tokens' KV (this GPU's share) over PCIe
    copied = np.array([0.0, 1.0, 1e12])
    tables["host_kv_copy"] = Table(("tokens",), (copied,), copied * part.kv_bytes_per_token
                                   / (hardware.host_bandwidth * hardware.host_efficiency))
    # loads of blocks another engine stored in a tier they share: over the network (RDMA)
    tables["host_kv_remote_copy"] = Table(("tokens",), (copied,), copied * part.kv_bytes_per_token
                                          / (hardware.pool_bandwidth * hardware.host_efficiency))
    # stores: the same copies where they delay the step, none where the GPU's work hides them
    tables["host_kv_store"] = Table(("tokens",), (copied,), tables["host_kv_copy"].values
                                    * float(hardware.host_store_blocking))
    provenance = {"hardware": hardware.label, "generator": "batchlab roofline", "date": date.today().isoformat(),
                  "peak_flops": hardware.peak_flops, "hbm_bandwidth": hardware.hbm_bandwidth,
                  "compute_efficiency": hardware.compute_efficiency,
                  "moe_compute_efficiency": hardware.moe_compute_efficiency,
                  "memory_efficiency": hardware.memory_efficiency, "step_overhead_s": hardware.step_overhead_s,
                  "step_overhead_per_request_s": hardware.step_overhead_per_request_s,
                  "kernel_launch_s": hardware.kernel_launch_s, "host_bandwidth": hardware.host_bandwidth,
                  "host_efficiency": hardware.host_efficiency, "host_store_blocking": hardware.host_store_blocking,
                  "pool_bandwidth": hardware.pool_bandwidth, "host_load_overlap": hardware.host_load_overlap}
    if hardware.attention_efficiency:
        provenance["attention_efficiency"] = hardware.attention_efficiency
    if hardware.tensor_parallel > 1:
        provenance.update(tensor_parallel=hardware.tensor_parallel,
                          interconnect_bandwidth=hardware.interconnect_bandwidth,
                          interconnect_efficiency=hardware.interconnect_efficiency,
                          allreduce_latency_s=hardware.allreduce_latency_s)
    dtype = "bf16" if model.activation_bytes == 2 else f"{model.activation_bytes}-byte"
    return Profile("roofline", model.name, dtype, tables, provenance)
