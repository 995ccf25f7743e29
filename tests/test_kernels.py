"""Triton kernels against their torch references (on CPU: Triton's interpreter, tiny shapes),
outputs poisoned with NaN before each call (compiled for sm_90 without a GPU:
tests/test_kernels_offline.py)."""
import os
from pathlib import Path

import pytest
import torch

triton = pytest.importorskip("triton")

from engine.attention import softmax_with_sinks  # noqa: E402
from kernels.paged_decode import paged_decode_attention, paged_decode_reference  # noqa: E402
from kernels.paged_prefill import paged_prefill_attention  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
# Triton 3.9's interpreter casts fp32 to bf16 by truncation (compiled Triton and torch round to
# nearest even): elementwise kernels that round twice may then be 2 bf16 ulps off. On a GPU the
# 1e-2 above holds for them too.
ELEMENTWISE_BF16 = 2e-2 if os.environ.get("TRITON_INTERPRET") == "1" else 1e-2


def attention_tolerance(dtype, sinks) -> float:
    """Sinks shrink the outputs (a share of each softmax goes to the sink) while the interpreter's
    truncating casts of probabilities and outputs stay as large: bf16 with sinks, measured
    against the largest output, gets the interpreter's allowance (about 0.75 % an element there,
    0.55 % without sinks)."""
    return ELEMENTWISE_BF16 if sinks and dtype == torch.bfloat16 else TOLERANCE[dtype]
ROOT = Path(__file__).resolve().parents[1]


def relative_error(out, ref):
    assert not torch.isnan(out).any(), "unwritten (poisoned) elements in the output"
    return ((out.float() - ref.float()).abs().max() / ref.float().abs().max()).item()


def caches(num_blocks, block_size, kv_heads, head_dim, dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    shape = (num_blocks, block_size, kv_heads, head_dim)
    return (torch.randn(shape, generator=generator).to(DEVICE, dtype),
            torch.randn(shape, generator=generator).to(DEVICE, dtype), generator)


def random_tables(contexts, block_size, num_blocks, generator):
    needed = [-(-c // block_size) for c in contexts]
    physical = torch.randperm(num_blocks, generator=generator)[: sum(needed)]
    table = torch.zeros((len(contexts), max(needed)), dtype=torch.int32)
    offset = 0
    for row, count in enumerate(needed):
        table[row, :count] = physical[offset:offset + count]
        offset += count
    return table.to(DEVICE)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads, kv_heads, contexts, per_split, window, sinks", [
    (4, 2, [5, 33, 64], 2, 0, False),     # ragged, split-KV with a partial last split
    (2, 2, [1, 17], 32, 0, False),        # no GQA, a one-token context, one split
    (8, 2, [47], 1, 0, False),            # GQA 4, every block its own split
    # gpt-oss: a window shorter than some contexts (and not a whole number of blocks), sinks
    (4, 2, [5, 33, 64, 20], 1, 19, True),
    (8, 2, [47, 3], 32, 8, False),
    (4, 2, [40, 64], 2, 0, True),
])
def test_paged_decode_matches_reference(dtype, heads, kv_heads, contexts, per_split, window, sinks):
    block_size, head_dim = 16, 16
    key, value, generator = caches(24, block_size, kv_heads, head_dim, dtype, seed=len(contexts) + heads)
    tables = random_tables(contexts, block_size, 24, generator)
    context = torch.tensor(contexts, dtype=torch.int32, device=DEVICE)
    query = torch.randn((len(contexts), heads, head_dim), generator=generator).to(DEVICE, dtype)
    sink = (4.0 + torch.randn(heads, generator=generator)).to(DEVICE, dtype) if sinks else None
    out = torch.full_like(query, float("nan"))
    paged_decode_attention(query, key, value, tables, context, 0.3, blocks_per_split=per_split, out=out,
                           window=window, sinks=sink)
    # the reference in fp32 from the same (bf16) inputs, not rounded to bf16 itself
    ref = paged_decode_reference(query.float(), key.float(), value.float(), tables, context, 0.3, window, sink)
    assert relative_error(out, ref) <= attention_tolerance(dtype, sinks)
    if window or sinks:  # the test sees the feature: the same call without it is far off
        plain = paged_decode_reference(query.float(), key.float(), value.float(), tables, context, 0.3)
        assert relative_error(plain, ref) > 0.05


@pytest.mark.parametrize("dtype, window, sinks", [(torch.float32, 0, False), (torch.bfloat16, 0, False),
                                                  (torch.float32, 9, True), (torch.bfloat16, 20, True),
                                                  (torch.float32, 5, False)])
def test_paged_prefill_matches_reference(dtype, window, sinks):
    block_size, head_dim, heads, kv_heads = 16, 16, 4, 2
    key, value, generator = caches(24, block_size, kv_heads, head_dim, dtype, seed=7)
    # chunks: a whole prompt; a chunk after 21 cached tokens; a 1-token chunk; 19 queries (2 tiles)
    query_lens, contexts = [7, 12, 1, 19], [7, 33, 40, 19]
    tables = random_tables(contexts, block_size, 24, generator)
    starts = torch.tensor([sum(query_lens[:i]) for i in range(4)], dtype=torch.int32, device=DEVICE)
    query = torch.randn((sum(query_lens), heads, head_dim), generator=generator).to(DEVICE, dtype)
    # fill the cache at the queries' own positions too, as the engine does before attention
    sink = (4.0 + torch.randn(heads, generator=generator)).to(DEVICE, dtype) if sinks else None
    out = torch.full_like(query, float("nan"))
    paged_prefill_attention(query, key, value, tables, starts, torch.tensor(query_lens, dtype=torch.int32,
                            device=DEVICE), torch.tensor(contexts, dtype=torch.int32, device=DEVICE), 0.25, out=out,
                            window=window, sinks=sink)
    ref = torch.empty_like(query, dtype=torch.float32)  # fp32 reference from the same inputs
    for i, (q_len, ctx) in enumerate(zip(query_lens, contexts)):
        blocks = tables[i, : -(-ctx // block_size)].long()
        k = key[blocks].flatten(0, 1)[:ctx].float().repeat_interleave(heads // kv_heads, 1)
        v = value[blocks].flatten(0, 1)[:ctx].float().repeat_interleave(heads // kv_heads, 1)
        q = query[int(starts[i]): int(starts[i]) + q_len].float()
        scores = torch.einsum("qhd,khd->hqk", q, k) * 0.25
        positions = torch.arange(ctx - q_len, ctx, device=DEVICE)
        keys_at = torch.arange(ctx, device=DEVICE)[None, :]
        hidden = keys_at > positions[:, None]
        if window:
            hidden |= keys_at <= positions[:, None] - window
        scores.masked_fill_(hidden, float("-inf"))
        ref[int(starts[i]): int(starts[i]) + q_len] = torch.einsum("hqk,khd->qhd", softmax_with_sinks(scores, sink), v)
    assert relative_error(out, ref) <= attention_tolerance(dtype, sinks)


def test_host_wrappers_check_their_inputs():
    key, value, _ = caches(4, 16, 2, 16, torch.float32, seed=1)
    query = torch.zeros((1, 4, 16), device=DEVICE)
    table = torch.zeros((1, 1), dtype=torch.int64, device=DEVICE)
    with pytest.raises(ValueError, match="int32"):
        paged_decode_attention(query, key, value, table, torch.ones(1, dtype=torch.int32, device=DEVICE), 1.0)
    with pytest.raises(ValueError, match="not a multiple"):
        paged_decode_attention(torch.zeros((1, 3, 16), device=DEVICE), key, value, table.int(),
                               torch.ones(1, dtype=torch.int32, device=DEVICE), 1.0)


# tiny-moe: q/k norms through the RMSNorm kernel; tiny-gpt-oss: windows, sinks, expert biases and the clamp;
# tiny-gemma3: windows with the sliding layers' own RoPE frequencies through the RoPE kernel;
# tiny-qwen3.5: RoPE over a quarter of each head through it, DeltaNet (torch) beside the kernels;
# tiny-gemma4: a full layer of its own head size and kv heads (keys as values, values normalised)
# beside a sliding one, Gemma 4's norms (times w) through the RMSNorm kernel; tiny-gemma4-moe: its
# GeGLU experts through the fused MoE kernel
PRESETS = ["tiny", "tiny-moe", "tiny-gpt-oss", "tiny-gemma3", "tiny-qwen3.5", "tiny-gemma4", "tiny-gemma4-moe"]
# the shared-prefix kernel's options as a run's config sets them (kernels.shared_prefix.*)
FUSED = {"shared_prefix": {"fused_merge": True, "members_per_program": 1, "pages": 2, "prefix_blocks_per_split": 1}}


# the merge's options: launched over 4 rows a program in one trip to memory; fused, in one trip
MERGE = {"shared_prefix": {"merge_eager": True, "merge_rows": 4, "merge_warps": 2, "prefix_blocks_per_split": 1}}


@pytest.mark.parametrize("preset, options", [(preset, None) for preset in PRESETS] +
                         [("tiny", FUSED), ("tiny", MERGE),
                          ("tiny-gpt-oss", {"shared_prefix": {**FUSED["shared_prefix"], "prefix_first": False,
                                                              "merge_eager": True}})])
def test_engine_with_triton_backend_gives_the_torch_backends_tokens(preset, options):
    from engine.loop import run_engine
    from engine.runner import ModelRunner
    from engine.weights import random_weights
    from scheduler import schedule_config
    from scheduler.model_spec import model_spec
    from traces.synthetic import batchllm_microbenchmark

    import kernels.backend as backend_module
    from scheduler import Request
    from traces.workload import Workload

    layers = {"tiny-gpt-oss": dict(num_layers=2), "tiny-gemma3": dict(num_layers=2, sliding_layers=(0,)),
              "tiny-gemma4": dict(num_layers=2, sliding_layers=(0,)),
              "tiny-gemma4-moe": dict(num_layers=2, sliding_layers=(0,)),
              "tiny-qwen3.5": dict(num_layers=2, linear_layers=(0,))}
    spec = model_spec(preset, **layers.get(preset, dict(num_layers=1)))  # a window layer, a full one
    weights = random_weights(spec, 3, torch.float32, torch.device(DEVICE))
    # two groups of three sharing 32 tokens, and two ungrouped requests still decoding while the
    # groups do: steps with shared-prefix decodes (fused kernel) beside plain ones (paged decode)
    grouped = batchllm_microbenchmark(32, 5, 4, 3, 6, seed=2).requests
    plain = tuple(Request(100 + i, 0.0, ((900 + i, 40),), 12) for i in range(2))
    workload = Workload("grouped and plain", plain + grouped, "test")
    launches = []
    prepare = backend_module.TritonAttentionBackend._prepare

    def recording(meta, device, block_size):
        step = prepare(meta, device, block_size)
        launches.append(tuple(bool(groups) for _, _, _, groups, _, _ in step[0]))
        return step

    tokens = {}
    for backend in ("torch", "triton"):  # on CPU, Triton's interpreter; on a GPU, the kernels
        runner = ModelRunner(spec, 64, 16, device=DEVICE, weights=weights, backend=backend,
                             kernel_options=options if backend == "triton" else None)
        if backend == "triton":
            runner.model.backend._prepare = recording
        run_engine(workload, schedule_config("batchllm", max_num_batched_tokens=24), runner, 64, 16)
        tokens[backend] = {r: tuple(t) for r, t in runner.outputs.items()}
    assert tokens["triton"] == tokens["torch"]
    assert sorted(len(t) for t in tokens["torch"].values()) == [4] * 6 + [12] * 2
    assert (True, False) in launches  # shared-prefix and plain decodes in one step


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("gemma", [False, True], ids=["llama", "gemma"])
def test_rmsnorm_with_and_without_residual(dtype, gemma):
    """Llama's convention (normed, rounded, times w) and Gemma's (times 1 + w, rounded once);
    each against its reference, and the two far apart on the same weights."""
    from kernels.rmsnorm import rms_norm, rms_norm_reference

    generator = torch.Generator().manual_seed(5)
    x = torch.randn((5, 48), generator=generator).to(DEVICE, dtype)  # non-power-of-two hidden
    residual = torch.randn((5, 48), generator=generator).to(DEVICE, dtype)
    weight = ((0 if gemma else 1) + 0.1 * torch.randn(48, generator=generator)).to(DEVICE, dtype)
    tolerance = ELEMENTWISE_BF16 if dtype == torch.bfloat16 else TOLERANCE[dtype]
    normed = rms_norm(x, weight, 1e-5, gemma=gemma)
    assert relative_error(normed, rms_norm_reference(x, weight, 1e-5, gemma=gemma)) <= tolerance
    assert relative_error(normed, rms_norm_reference(x, weight, 1e-5, gemma=not gemma)) > 0.3
    normed, new_residual = rms_norm(x, weight, 1e-5, residual, gemma=gemma)
    ref_normed, ref_residual = rms_norm_reference(x, weight, 1e-5, residual, gemma=gemma)
    assert relative_error(normed, ref_normed) <= tolerance
    if dtype == torch.float32 or os.environ.get("TRITON_INTERPRET") != "1":
        assert torch.equal(new_residual, ref_residual)  # one rounding of the same sum: bit-equal
    else:
        assert relative_error(new_residual, ref_residual) <= ELEMENTWISE_BF16


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("scaling", [{}, {"rope_scaling_factor": 8.0, "rope_original_max_position": 64}])
def test_rope_matches_the_engines_torch_rope(dtype, scaling):
    # plain frequencies, and Llama 3.1's scaled ones (most of tiny's 8 in the scaled or blended band)
    from engine.attention import TorchAttentionBackend
    from engine.model import rope_inv_freq, rope_tables
    from kernels.rope import apply_rope_
    from scheduler.model_spec import model_spec

    spec = model_spec("tiny", rope_theta=500000.0, **scaling)
    generator = torch.Generator().manual_seed(6)
    q = torch.randn((7, 4, 16), generator=generator).to(DEVICE, dtype)
    positions = torch.tensor([0, 1, 5, 100, 1023, 3, 2047], device=DEVICE)
    inv_freq = rope_inv_freq(spec, DEVICE)
    cos, sin = rope_tables(spec, positions, torch.float32, inv_freq)
    ref, _ = TorchAttentionBackend().rope(q.float(), q.float(), positions, cos, sin, inv_freq)
    out = apply_rope_(q.clone(), positions, inv_freq)
    assert relative_error(out, ref) <= (2e-5 if dtype == torch.float32 else ELEMENTWISE_BF16)


def test_kv_store_writes_exactly_the_slots():
    from kernels.kv_store import store_kv

    key_cache = torch.full((4, 16, 2, 8), float("nan"), device=DEVICE)
    value_cache = torch.full_like(key_cache, float("nan"))
    key, value = torch.randn((5, 2, 8), device=DEVICE), torch.randn((5, 2, 8), device=DEVICE)
    slots = torch.tensor([3, 17, 18, 63, 40], device=DEVICE)
    store_kv(key, value, key_cache, value_cache, slots)
    flat_k, flat_v = key_cache.view(-1, 2, 8), value_cache.view(-1, 2, 8)
    assert torch.equal(flat_k[slots], key) and torch.equal(flat_v[slots], value)
    untouched = torch.ones(64, dtype=torch.bool)
    untouched[slots.cpu()] = False
    assert torch.isnan(flat_k[untouched.to(DEVICE)]).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tokens, hidden, width, experts, top_k", [
    (1, 64, 32, 8, 2),     # one token: six experts idle, their blocks skipped
    (37, 64, 48, 8, 2),    # ragged: runs of every length, a width that is no power of two
    (20, 80, 96, 4, 3),    # hidden and width past one tile, three experts a token
    (37, 64, 48, 8, -2),   # gpt-oss: biases and the clamped SwiGLU at a limit the gates cross
    (37, 64, 48, 8, 20),   # Gemma 4: GeGLU experts (top 2; 20 marks them)
])
def test_fused_experts_match_the_engines_torch_experts(dtype, tokens, hidden, width, experts, top_k):
    from engine.experts import experts_reference, route
    from kernels.fused_moe import fused_experts

    generator = torch.Generator().manual_seed(tokens)
    rand = lambda *shape, std=1.0: (torch.randn(*shape, generator=generator) * std).to(DEVICE, dtype)
    x, router = rand(tokens, hidden), rand(experts, hidden)
    gate_up, down = rand(experts, 2 * width, hidden, std=0.2), rand(experts, hidden, width, std=0.2)
    gpt_oss = {}
    if top_k < 0:  # gpt-oss's experts
        top_k = -top_k
        gpt_oss = dict(gate_up_bias=rand(experts, 2 * width, std=0.5), down_bias=rand(experts, hidden, std=0.5),
                       limit=0.6, alpha=1.702)
    if top_k == 20:  # Gemma 4's
        top_k, gpt_oss = 2, dict(gelu=True)
    weights, chosen = route(x, router, top_k, renormalise=top_k == 2)
    reference = experts_reference(x, weights, chosen, gate_up, down, **gpt_oss)
    out = fused_experts(x, weights, chosen, gate_up, down, block_m=16, block_n=32, block_k=32, poison=True, **gpt_oss)
    assert out.dtype == dtype and out.shape == reference.shape
    assert relative_error(out, reference) <= TOLERANCE[dtype]
    if gpt_oss.get("limit"):  # the clamp binds: without it the output moves
        unclamped = experts_reference(x, weights, chosen, gate_up, down, **{**gpt_oss, "limit": 1e6})
        assert relative_error(unclamped, reference) > 0.05
    if gpt_oss.get("gelu"):  # GeGLU is not SwiGLU on these inputs
        assert relative_error(experts_reference(x, weights, chosen, gate_up, down), reference) > 0.05


def test_align_by_expert_pads_each_experts_run_to_whole_blocks():
    from kernels.fused_moe import align_by_expert

    chosen = torch.tensor([[2, 0], [2, 3], [0, 2]])  # pairs 0..5: experts 2, 0, 2, 3, 0, 2
    sorted_ids, block_expert = align_by_expert(chosen, 4, 4)
    pad = 6
    assert sorted_ids.tolist()[:12] == [1, 4, pad, pad, 0, 2, 5, pad, 3, pad, pad, pad]
    assert block_expert.tolist()[:3] == [0, 2, 3] and set(block_expert.tolist()[3:]) <= {-1}
    assert len(block_expert) * 4 == len(sorted_ids) >= 6 + 4 * 3  # the bound, no host sync


@pytest.mark.parametrize("batch, heads, key_dim, value_dim", [(3, 2, 16, 12), (2, 4, 12, 40)])
def test_delta_rule_step_matches_the_engines_torch_step(batch, heads, key_dim, value_dim):
    """The fused DeltaNet decode step against the engine's torch step: random non-zero states,
    key and value dims that are not powers of two (12: a masked tile; 40: two column blocks),
    output poisoned first, the state updated in place; bad inputs refused."""
    from engine.delta_net import delta_rule_step as reference
    from engine.delta_net import l2_normalise
    from kernels.delta_rule import delta_rule_step

    generator = torch.Generator().manual_seed(5)
    q = l2_normalise(torch.randn(batch, heads, key_dim, generator=generator)) * key_dim ** -0.5
    k = l2_normalise(torch.randn(batch, heads, key_dim, generator=generator))
    v = torch.randn(batch, heads, value_dim, generator=generator)
    g, beta = -2 * torch.rand(batch, heads, generator=generator), torch.rand(batch, heads, generator=generator)
    state = torch.randn(batch, heads, key_dim, value_dim, generator=generator)
    expected, expected_state = reference(q, k, v, g, beta, state.clone())
    mine = state.clone().to(DEVICE)
    out = torch.full((batch, heads, value_dim), float("nan"), device=DEVICE)
    result, updated = delta_rule_step(*(t.to(DEVICE) for t in (q, k, v, g, beta)), mine, out=out)
    assert result is out and updated is mine
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mine.cpu(), expected_state, rtol=1e-5, atol=1e-5)
    assert (mine.cpu() - state).abs().max() > 0.1
    with pytest.raises(ValueError, match="beta is .* expected"):
        delta_rule_step(q, k, v, g, beta.double(), state.clone())
