"""Qwen3's q/k norms and mixtures of experts (Qwen3-MoE, Mixtral): the engine against
transformers' own models, checkpoints as transformers writes them, the presets against the
published configs and parameter counts."""
from dataclasses import replace

import pytest
import torch

from engine.weights import load_safetensors, random_weights
from scheduler.errors import ConfigError
from scheduler.model_spec import ModelSpec, model_spec
from test_engine import saved_checkpoint, teacher_forced_difference, tokens_of

torch.set_num_threads(1)
TINY_MOE = model_spec("tiny-moe")  # Qwen3-MoE's layer: q/k norms, 8 experts, top 2 renormalised
QWEN3_LIKE = model_spec("tiny", rope_theta=1000000.0, rms_norm_eps=1e-6, qk_norm=True)
MIXTRAL_LIKE = model_spec("tiny", num_experts=4, experts_per_token=2, moe_intermediate_size=128)
# Qwen2-MoE's layer: q/k/v biases, 8 experts, top 2 not renormalised, a shared expert of width 48
QWEN2_MOE_LIKE = model_spec("tiny", rope_theta=1000000.0, rms_norm_eps=1e-6, qkv_bias=True, num_experts=8,
                            experts_per_token=2, moe_intermediate_size=32, norm_topk_prob=False,
                            shared_expert_intermediate_size=48)


@pytest.mark.parametrize("spec, drop", [
    (QWEN3_LIKE, ("qk_norm", ("q_norm", "k_norm"))),
    (TINY_MOE, ("norm_topk_prob", ())),
    (replace(TINY_MOE, norm_topk_prob=False, experts_per_token=3), ("qk_norm", ("q_norm", "k_norm"))),
    (MIXTRAL_LIKE, ("norm_topk_prob", ())),
    (QWEN2_MOE_LIKE, ("shared_expert_intermediate_size", ("gate", "up", "down", "shared_gate"))),
], ids=["qwen3", "qwen3-moe", "qwen3-moe-top3-unnormalised", "mixtral", "qwen2-moe"])
def test_the_engine_computes_what_transformers_does(spec, drop):
    """Teacher-forced logits within 1e-4 of transformers' Qwen3 / Qwen3-MoE / Mixtral / Qwen2-MoE
    over a batchllm run with chunked prefill and shared prefixes; the test sees the feature:
    without it (no q/k norms, the routing weights normalised the other way, no shared expert)
    the engine is far off."""
    assert teacher_forced_difference(spec, "batchllm", 7) <= 1e-4
    if drop[0] == "norm_topk_prob":
        flipped = replace(spec, norm_topk_prob=not spec.norm_topk_prob)
        assert teacher_forced_difference(spec, "batchllm", 7, engine_spec=flipped) > 1e-3
    else:
        assert teacher_forced_difference(spec, "batchllm", 7, drop=drop) > 1e-3


def test_every_expert_is_used_and_scheduling_never_changes_the_tokens():
    from engine.model import experts_mlp
    from traces.synthetic import batchllm_microbenchmark

    weights = random_weights(TINY_MOE, seed=2)
    h = torch.randn(64, TINY_MOE.hidden_size, generator=torch.Generator().manual_seed(0))
    chosen = torch.topk(h @ weights.layers[0].router.T, TINY_MOE.experts_per_token, dim=-1).indices
    assert set(chosen.flatten().tolist()) == set(range(TINY_MOE.num_experts))  # the loop meets every expert
    # one expert's output moved: the layer's output moves for exactly the tokens routed to it
    moved = replace(weights.layers[0], expert_down=weights.layers[0].expert_down.clone())
    moved.expert_down[3] += 1.0
    changed = (experts_mlp(h, moved, TINY_MOE) - experts_mlp(h, weights.layers[0], TINY_MOE)).abs().amax(dim=1) > 0
    assert torch.equal(changed, (chosen == 3).any(dim=1))

    workload = batchllm_microbenchmark(24, 13, 10, 3, 18, seed=4)
    baseline, _ = tokens_of(workload, "fcfs", spec=TINY_MOE, max_num_batched_tokens=512)
    assert all(len(t) == 10 for t in baseline.values())
    for schedule, chunk in (("batchllm", 16), ("sorted", 64), ("decode_first", 7)):
        assert tokens_of(workload, schedule, spec=TINY_MOE, max_num_batched_tokens=chunk)[0] == baseline, schedule


@pytest.mark.parametrize("spec", [TINY_MOE, MIXTRAL_LIKE, QWEN3_LIKE, QWEN2_MOE_LIKE, model_spec("tiny-gpt-oss")],
                         ids=["qwen3-moe", "mixtral", "qwen3", "qwen2-moe", "gpt-oss"])
def test_checkpoints_as_transformers_writes_them_load(tmp_path, spec):
    """save_pretrained writes one tensor per expert (Qwen3-MoE's gate_proj/up_proj/down_proj,
    Mixtral's block_sparse_moe w1/w3/w2), or gpt-oss's fused experts (gate and up interleaved,
    down transposed, their biases), and a config.json: the engine reads both back."""
    weights = saved_checkpoint(spec, tmp_path)
    loaded = load_safetensors(tmp_path, spec)
    for mine, theirs in zip(weights.layers, loaded.layers):
        for field in ("q", "o", "q_norm", "router", "expert_gate_up", "expert_down", "gate", "down", "shared_gate",
                      "k_bias", "o_bias", "sinks", "router_bias", "expert_gate_up_bias", "expert_down_bias"):
            a, b = getattr(mine, field), getattr(theirs, field)
            assert (a is None and b is None) or torch.equal(a, b), field
    if spec.num_experts:  # the same checkpoint read as a dense model
        with pytest.raises(ConfigError, match=r"tensor 'model\.layers\.0\.mlp\.gate_proj\.weight' not found"):
            load_safetensors(tmp_path, replace(spec, num_experts=0, experts_per_token=0, moe_intermediate_size=0,
                                               shared_expert_intermediate_size=0))
    if spec.shared_expert_intermediate_size:  # ... or as one without its shared expert
        with pytest.raises(ConfigError, match=r"does not use: model\.layers\.0\.mlp\.shared_expert"):
            load_safetensors(tmp_path, replace(spec, shared_expert_intermediate_size=0))
    if spec.qk_norm:  # ... or as one without q/k norms
        with pytest.raises(ConfigError, match=r"does not use: model\.layers\.0\.self_attn\.k_norm"):
            load_safetensors(tmp_path, replace(spec, qk_norm=False))


# the published config.json of each model (Hugging Face hub), as far as the engine reads it
QWEN3_8B = {"model_type": "qwen3", "hidden_size": 4096, "intermediate_size": 12288, "num_attention_heads": 32,
            "num_hidden_layers": 36, "num_key_value_heads": 8, "head_dim": 128, "rms_norm_eps": 1e-06,
            "rope_theta": 1000000, "rope_scaling": None, "max_position_embeddings": 40960, "vocab_size": 151936,
            "tie_word_embeddings": False, "attention_bias": False, "use_sliding_window": False}
QWEN3_30B_A3B = {**QWEN3_8B, "model_type": "qwen3_moe", "hidden_size": 2048, "intermediate_size": 6144,
                 "num_hidden_layers": 48, "num_key_value_heads": 4, "num_experts": 128, "num_experts_per_tok": 8,
                 "moe_intermediate_size": 768, "norm_topk_prob": True, "decoder_sparse_step": 1,
                 "mlp_only_layers": []}
QWEN3_235B_A22B = {**QWEN3_30B_A3B, "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 94,
                   "num_attention_heads": 64, "moe_intermediate_size": 1536}
QWEN2_57B_A14B = {"model_type": "qwen2_moe", "hidden_size": 3584, "intermediate_size": 18944,
                  "moe_intermediate_size": 2560, "shared_expert_intermediate_size": 20480, "num_experts": 64,
                  "num_experts_per_tok": 8, "norm_topk_prob": False, "num_attention_heads": 28, "num_hidden_layers": 28,
                  "num_key_value_heads": 4, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
                  "max_position_embeddings": 65536, "vocab_size": 151936, "tie_word_embeddings": False,
                  "decoder_sparse_step": 1, "mlp_only_layers": [], "use_sliding_window": False}
MIXTRAL_8X7B = {"model_type": "mixtral", "hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32,
                "num_hidden_layers": 32, "num_key_value_heads": 8, "num_local_experts": 8, "num_experts_per_tok": 2,
                "rms_norm_eps": 1e-05, "rope_theta": 1e6, "max_position_embeddings": 32768, "sliding_window": None,
                "vocab_size": 32000, "tie_word_embeddings": False}


@pytest.mark.parametrize("preset, config, total, active", [
    # the model cards: Qwen3-30B-A3B "30.5B in total and 3.3B activated", Qwen3-235B-A22B "235B
    # in total and 22B activated", Mixtral (Mistral AI, 2023-12-11) "46.7B total parameters but
    # only uses 12.9B parameters per token"; Qwen3-8B "8.2B"
    ("qwen3-8b", QWEN3_8B, 8.2e9, 8.2e9),
    ("qwen3-30b-a3b", QWEN3_30B_A3B, 30.5e9, 3.3e9),
    ("qwen3-235b-a22b", QWEN3_235B_A22B, 235e9, 22e9),
    ("mixtral-8x7b", MIXTRAL_8X7B, 46.7e9, 12.9e9),
    # Qwen2-57B-A14B: "57B parameters in total, 14B activated"
    ("qwen2-57b-a14b", QWEN2_57B_A14B, 57.4e9, 14.2e9),
])
def test_presets_are_the_published_checkpoints(preset, config, total, active):
    spec = model_spec(preset)
    assert spec.architecture_differences(ModelSpec.from_hf_config(config)) == []
    assert spec.num_params == pytest.approx(total, rel=0.01)
    assert spec.active_params == pytest.approx(active, rel=0.02)


@pytest.mark.parametrize("change, message", [
    ({"mlp_only_layers": [3]}, "mlp_only_layers"),
    ({"decoder_sparse_step": 2}, "decoder_sparse_step"),
    ({"num_experts_per_tok": 200}, "experts_per_token"),
    ({"num_experts": None}, "missing key 'num_experts'"),
    ({"attention_bias": True}, "attention_bias"),
])
def test_moe_configs_the_engine_would_compute_differently_are_refused(change, message):
    with pytest.raises(ConfigError, match=message):
        ModelSpec.from_hf_config({**QWEN3_30B_A3B, **change})
    assert ModelSpec.from_hf_config({**MIXTRAL_8X7B, "sliding_window": 4096}).sliding_layers == tuple(range(32))
    with pytest.raises(ConfigError, match="without num_experts"):
        model_spec("tiny", experts_per_token=2)


def test_experts_touched_is_what_uniform_routing_touches():
    """E (1 - (1 - k/E)^T) against draws of T tokens each routed to k distinct experts at random."""
    import numpy as np

    from sim.roofline import experts_touched

    spec = model_spec("qwen3-30b-a3b")
    rng = np.random.default_rng(0)
    for tokens in (1, 4, 16, 64, 256):
        draws = [len(np.unique(np.argsort(rng.random((tokens, 128)), axis=1)[:, :8])) for _ in range(400)]
        assert experts_touched(spec, np.array([float(tokens)]))[0] == pytest.approx(np.mean(draws), rel=0.01)
    assert experts_touched(model_spec("mixtral-8x7b"), np.array([1.0, 1e6])).tolist() == pytest.approx([2.0, 8.0])


def test_the_roofline_moe_layer_against_vllms_fused_moe_kernel():
    """benchmarks/moe_kernel.py: vLLM's published fused MoE times on an H100 (PR #24700: Mixtral
    bf16 at TP 2, Qwen3-30B-A3B fp8) against the roofline's. Decode-sized batches (<= 256
    tokens, where the weights of the experts touched set the time) within 0.65-1.15x, the knee
    where every expert is read included; prefill-sized ones are compute-bound, and vLLM's grouped
    GEMMs run well below the roofline's 70 % of peak there: the roofline is optimistic (<= 0.9x)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from moe_kernel import comparison

    rows = comparison()
    assert len(rows) == 33
    for model, batch, touched, published, predicted in rows:
        ratio = predicted / published
        assert (0.65 <= ratio <= 1.15) if batch <= 256 else ratio <= 0.9, (model, batch, ratio)
    # from one token to the batch that touches every expert, the layer's time grows as published
    for model in ("mixtral-8x7b", "qwen3-30b-a3b"):
        times = {batch: (published, predicted) for m, batch, _, published, predicted in rows if m == model}
        grown = [times[128][i] / times[1][i] for i in (0, 1)]
        assert grown[1] == pytest.approx(grown[0], rel=0.35), (model, grown)


def test_moe_compute_efficiency_slows_only_the_experts_grouped_gemms():
    from sim.hardware import hardware_spec
    from sim.roofline import build_roofline_profile

    def mlp(model, efficiency, tokens):
        profile = build_roofline_profile(model_spec(model), hardware_spec("h100-sxm", moe_compute_efficiency=efficiency))
        return profile.tables["mlp"].scalar(tokens)

    assert mlp("qwen3-8b", 0.1, 4096) == mlp("qwen3-8b", 0.7, 4096)  # a dense model: unchanged
    assert mlp("qwen3-30b-a3b", 0.1, 1) == mlp("qwen3-30b-a3b", 0.7, 1)  # a decode reads weights: unchanged
    assert mlp("qwen3-30b-a3b", 0.1, 4096) > 3 * mlp("qwen3-30b-a3b", 0.7, 4096)  # a prefill is compute-bound


def test_calibrated_to_vllm_serving_qwen3_moe_on_an_h100():
    """One published end-to-end run (vLLM PR #23151: Qwen3-30B-A3B bf16 on one H100, 10 clients,
    2,048 / 1,024 tokens) fitted by moe_compute_efficiency alone, with the host costs vLLM's
    CUDA graphs hide set to zero. From the default 0.7 nothing is bound by it (the fit starts it
    lower until the figures move); fitted, it is far below the dense GEMMs' 0.7, as the kernel
    figures say (benchmarks/moe_kernel.py), and all four figures come within 5 %."""
    from pathlib import Path

    from batchlab.calibration import Setting, fit, predict
    from scheduler import schedule_config
    from sim.hardware import hardware_spec
    from traces.bench_results import read_bench_points

    csv = Path(__file__).resolve().parents[1] / "benchmarks" / "published" / "h100-qwen3-30b-a3b-vllm-pr23151.csv"
    points = read_bench_points([csv])
    hardware = hardware_spec("h100-sxm", kernel_launch_s=0.0, step_overhead_s=0.0)
    setting = Setting(model_spec("qwen3-30b-a3b"), hardware, schedule_config("fcfs"))
    start = setting.values(0.0)
    before = predict(points[0], setting, start)
    assert before["ttft_s_p50"] < 0.5 * points[0].measured["ttft_s_p50"]  # prefill far too fast at 0.7
    result = fit(points, setting, ["moe_compute_efficiency"], start)
    assert 0.05 < result.values["moe_compute_efficiency"] < 0.15
    after = predict(points[0], setting, result.values)
    for metric, measured in points[0].measured.items():
        assert after[metric] == pytest.approx(measured, rel=0.05), metric


def test_qwen15_moe_a27b_counts_as_its_card_says():
    """Qwen1.5-MoE-A2.7B (no preset): "14.3B parameters in total and 2.7B activated"."""
    config = {**QWEN2_57B_A14B, "hidden_size": 2048, "intermediate_size": 5632, "moe_intermediate_size": 1408,
              "shared_expert_intermediate_size": 5632, "num_experts": 60, "num_experts_per_tok": 4,
              "num_attention_heads": 16, "num_key_value_heads": 16, "num_hidden_layers": 24}
    spec = ModelSpec.from_hf_config(config)
    assert spec.num_params == pytest.approx(14.3e9, rel=0.01) and spec.active_params == pytest.approx(2.7e9, rel=0.02)


def test_the_shared_expert_is_read_by_every_step():
    """A one-token step of Qwen2-57B-A14B reads its shared expert's 3 x 3584 x 20480 bf16 weights
    beside the 8 routed experts': the roofline charges that read (and a few launches) on top."""
    from sim.hardware import hardware_spec
    from sim.roofline import build_roofline_profile

    hardware = hardware_spec("h100-sxm")
    spec = model_spec("qwen2-57b-a14b")
    mlp = {shared: build_roofline_profile(replace(spec, shared_expert_intermediate_size=shared), hardware)
           .tables["mlp"].scalar(1) for shared in (0, 20480)}
    read = 3 * 3584 * 20480 * 2 / (hardware.hbm_bandwidth * hardware.memory_efficiency)
    assert mlp[20480] - mlp[0] == pytest.approx(read, rel=0.1)
