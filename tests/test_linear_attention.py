"""Linear attention (Gated DeltaNet: Qwen3-Next, Qwen3.5) in the simulator: parameters against
transformers' own models, vLLM's block size and state pages against its code and a published
log, the roofline's context-free state traffic. (The engine's DeltaNet: tests/test_delta_net.py.)"""
import json
from dataclasses import replace

import numpy as np
import pytest

from scheduler.errors import ConfigError
from scheduler.model_spec import ModelSpec, model_spec

TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=8, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8,
            linear_value_head_dim=12, linear_conv_kernel_dim=4)
EXPERTS = dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=24, shared_expert_intermediate_size=40)


@pytest.mark.parametrize("config_class, model_class, extra", [
    ("Qwen3NextConfig", "Qwen3NextForCausalLM", EXPERTS),
    ("Qwen3_5TextConfig", "Qwen3_5ForCausalLM", {}),
    ("Qwen3_5MoeTextConfig", "Qwen3_5MoeForCausalLM", EXPERTS),
])
def test_parameters_are_transformers_own(config_class, model_class, extra):
    """The spec read from each config counts every parameter transformers' model has (Gated
    DeltaNet projections, convolution, decay, gated norm; gated attention; a gated shared
    expert), and the multimodal config's text part reads the same."""
    transformers = pytest.importorskip("transformers")
    config = getattr(transformers, config_class)(**TINY, **extra)
    model = getattr(transformers, model_class)(config)
    spec = ModelSpec.from_hf_config(config.to_dict(), costs_only=True)
    assert spec.num_params == sum(p.numel() for p in model.parameters())
    assert spec.linear_layers == (0, 1, 2, 4, 5, 6) and spec.attn_output_gate and spec.qk_norm
    if config_class.startswith("Qwen3_5"):  # the multimodal layout, with or without the text part's type
        outer = {"model_type": config.model_type.removesuffix("_text"), "text_config": config.to_dict()}
        assert ModelSpec.from_hf_config(outer, costs_only=True).architecture_differences(spec) == []
        del outer["text_config"]["model_type"]
        assert ModelSpec.from_hf_config(outer, costs_only=True).architecture_differences(spec) == []
        assert ModelSpec.from_hf_config(outer).architecture_differences(spec) == []  # the engine's reading too
    spec.check_engine_runs()  # the engine runs it (tests/test_delta_net.py)


def test_qwen3_next_preset_is_the_published_model():
    """Qwen3-Next-80B-A3B's model card: 80B parameters (3B activated: 3.25B here without the
    embeddings); its config.json reads as the preset."""
    spec = model_spec("qwen3-next-80b-a3b")
    assert spec.num_params == pytest.approx(80e9, rel=0.005)
    assert (spec.active_params - 2 * spec.vocab_size * spec.hidden_size) / 1e9 == pytest.approx(3.25, abs=0.01)
    published = {"model_type": "qwen3_next", "hidden_size": 2048, "num_hidden_layers": 48, "num_attention_heads": 16,
                 "num_key_value_heads": 2, "head_dim": 256, "intermediate_size": 5120, "vocab_size": 151936,
                 "num_experts": 512, "num_experts_per_tok": 10, "moe_intermediate_size": 512,
                 "shared_expert_intermediate_size": 512, "linear_num_key_heads": 16, "linear_num_value_heads": 32,
                 "linear_key_head_dim": 128, "linear_value_head_dim": 128, "linear_conv_kernel_dim": 4,
                 "rope_theta": 10000000, "partial_rotary_factor": 0.25, "max_position_embeddings": 262144,
                 "tie_word_embeddings": False, "rms_norm_eps": 1e-6, "norm_topk_prob": True,
                 "full_attention_interval": 4}
    assert spec.architecture_differences(ModelSpec.from_hf_config(published, costs_only=True)) == []
    with pytest.raises(ConfigError, match="none sliding"):  # a window on a full layer besides: no such model
        model_spec("qwen3-next-80b-a3b", sliding_window=8, sliding_layers=(3,))


def test_vllm_block_size_and_state_pages():
    """vLLM raises the attention block size to the smallest multiple of 16 whose page (one
    layer's KV for that many tokens) holds a linear layer's state, and pads the state page to
    it. For Qwen3.5-35B-A3B (its sizes as THUDM/slime's scripts/models/qwen3.5-35B-A3B.sh gives
    them, its float32 state) that is the 1,056-token block and 0.76 % padding vLLM logs for it
    (ROCm issue #6055: "Setting attention block size to 1056 tokens", "Padding mamba page size
    by 0.76%"); Qwen3-Next in bf16, 544. The preset has the model card's 35B (3B active)."""
    fp32 = model_spec("qwen3.5-35b-a3b")
    assert fp32.num_params == pytest.approx(35e9, rel=0.015) and fp32.vllm_block_size(16) == 1056
    page = 1056 * fp32.kv_bytes_every_layer // 10  # one attention layer's KV for a block (10 full layers)
    assert 100 * (page - fp32.state_bytes_per_layer) / fp32.state_bytes_per_layer == pytest.approx(0.76, abs=0.005)
    spec = model_spec("qwen3-next-80b-a3b")
    assert spec.state_bytes_per_layer == 32 * 128 * 128 * 2 + (2 * 16 * 128 + 32 * 128) * 3 * 2
    assert spec.vllm_block_size(16) == 544 and spec.vllm_block_size(1024) == 1024  # a larger block is kept
    assert model_spec("llama-3.1-8b").vllm_block_size(16) == 16
    # 36 linear layers and 12 full ones: a group of 12 full, three of 12 linear; a block holds the
    # full layers' KV, and each running request one block of state in each linear group
    assert spec.kv_groups == (12, 1, 3) and spec.window_blocks(544) == (1, 3, 1)
    assert spec.kv_bytes_every_layer == 12 * 2 * 2 * 256 * 2 == spec.kv_bytes_per_token
    assert 3 * 12 * spec.state_bytes_per_layer <= 3 * spec.kv_bytes_per_token * 544  # the 3 blocks hold 36 states


# Qwen3.5-27B's config.json text part (as published copies of it give it), multimodal layout
QWEN35_27B = {"model_type": "qwen3_5", "text_config": {
    "attention_bias": False, "attn_output_gate": True, "full_attention_interval": 4, "head_dim": 256,
    "hidden_act": "silu", "hidden_size": 5120, "intermediate_size": 17408, "linear_conv_kernel_dim": 4,
    "linear_key_head_dim": 128, "linear_num_key_heads": 16, "linear_num_value_heads": 48, "linear_value_head_dim": 128,
    "mamba_ssm_dtype": "float32", "max_position_embeddings": 262144, "mlp_only_layers": [], "model_type": "qwen3_5_text",
    "num_attention_heads": 24, "num_hidden_layers": 64, "num_key_value_heads": 4, "rms_norm_eps": 1e-6,
    "rope_parameters": {"mrope_interleaved": True, "mrope_section": [11, 11, 10], "partial_rotary_factor": 0.25,
                        "rope_theta": 10000000, "rope_type": "default"},
    "tie_word_embeddings": False, "vocab_size": 248320}}


def test_qwen35_27b_is_served_in_784_token_blocks():
    """The published Qwen3.5-27B config reads as the preset (26.9B: the card's 27B), and vLLM
    0.19.1 serving it logs "Setting attention block size to 784 tokens" and "Padding mamba page
    size by 0.13%" (a public lm-eval run of a W4A16 copy: the weights' format does not enter)."""
    spec = ModelSpec.from_hf_config(QWEN35_27B, costs_only=True)
    assert spec.architecture_differences(model_spec("qwen3.5-27b")) == [] and spec.state_bytes == 4
    assert spec.num_params == pytest.approx(27e9, rel=0.01) and spec.vllm_block_size(16) == 784
    page = 784 * spec.kv_bytes_every_layer // 16
    assert 100 * (page - spec.state_bytes_per_layer) / spec.state_bytes_per_layer == pytest.approx(0.13, abs=0.005)


def test_linear_layers_cost_the_same_at_any_context():
    """The roofline's decode and prefill tables hold the mean layer: the linear layers' share
    does not grow with the context (only the full layers' does), their state is read and
    written once a request, and they share no prefix."""
    from sim.hardware import hardware_spec
    from sim.roofline import build_roofline_profile

    hardware = hardware_spec("h200", tensor_parallel=2)
    spec = model_spec("qwen3-next-80b-a3b")
    full = replace(spec, linear_layers=())
    mixed, plain = (build_roofline_profile(m, hardware).tables for m in (spec, full))
    for name in ("attn_decode", "attn_prefill"):
        grow_mixed = mixed[name].values[:, 1:] - mixed[name].values[:, :1]
        grow_plain = plain[name].values[:, 1:] - plain[name].values[:, :1]
        assert np.allclose(grow_mixed, 0.25 * grow_plain, rtol=1e-9, atol=1e-15)  # 12 of 48 layers are full
    batch = list(mixed["attn_decode"].grids[0]).index(256.0)
    state = 2 * 16 * 128 * 128 * 2 * 256  # 256 requests' states (16 value heads a GPU), read and written
    assert 0.75 * state / (4.8e12 * hardware.memory_efficiency) <= mixed["attn_decode"].values[batch, 0]
    assert np.allclose(mixed["attn_shared_prefix"].values, 0.25 * plain["attn_shared_prefix"].values)


def test_simulate_serves_it_in_vllm_blocks(tmp_path):
    """simulate takes a Qwen3-Next config.json, serves it in the blocks vLLM would (its state
    pages: 288 tokens for this one) and says so; prefix hits come in whole blocks only; the
    engine refuses the config."""
    from test_cli_simulate import batchlab

    config = {"model_type": "qwen3_next", **TINY, **EXPERTS, "linear_num_value_heads": 16, "linear_key_head_dim": 32,
              "linear_value_head_dim": 32}
    (tmp_path / "config.json").write_text(json.dumps(config))
    spec = ModelSpec.from_hf_config(config, costs_only=True)
    assert spec.vllm_block_size(16) == 288 and model_spec("tiny").vllm_block_size(16) == 16
    result = batchlab("simulate", "model=hf", f"model.config={tmp_path}", "workload.params.num_requests=32",
                      "workload.params.share_degree=8", "schedule.names=[fcfs,batchllm]", "report=false",
                      f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr
    said = result.stdout + result.stderr
    assert "KV blocks of 288 tokens" in said
    # 6 linear layers and 2 full: a group of the 2 full layers, three of 2 linear ones
    assert "each running request also holds 3 for its linear-attention layers' state (3 groups of 2 layers)" in said
    # 6 whole blocks (1,728 tokens) of each 2,000-token prefix against 125 (2,000) at 16 tokens
    assert (f"grouping them saves {4 * 7 * 1728 / (32 * 2200):.3f} of the prompt tokens, against "
            f"{4 * 7 * 2000 / (32 * 2200):.3f} with 16-token blocks") in said
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["block_size"] == 288
    # 4 groups of 8 sharing 2,000 prompt tokens of 2,200: 7 members of each reuse 6 whole blocks
    # (1,728 tokens), not the 2,000 that 16-token blocks would give
    assert summary["schedules"]["batchllm"]["prefill_token_saving"] == pytest.approx(4 * 7 * 1728 / (32 * 2200))
    assert ModelSpec.from_hf_config(config).architecture_differences(spec) == []  # and the engine runs it
