"""DeepSeek-V3 and Kimi K2 (latent attention, shared experts, dense first layers), simulated only:
held to their published configs, parameter counts and KV-cache size."""
import pytest

from scheduler.errors import ConfigError
from scheduler.model_spec import ModelSpec, model_spec
from test_cli_simulate import batchlab

# the published config.json (Hugging Face hub), as far as batchlab reads it
DEEPSEEK_V3 = {
    "model_type": "deepseek_v3", "hidden_size": 7168, "intermediate_size": 18432, "moe_intermediate_size": 2048,
    "num_hidden_layers": 61, "num_attention_heads": 128, "num_key_value_heads": 128, "n_routed_experts": 256,
    "n_shared_experts": 1, "num_experts_per_tok": 8, "first_k_dense_replace": 3, "moe_layer_freq": 1,
    "q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
    "vocab_size": 129280, "rms_norm_eps": 1e-06, "rope_theta": 10000, "max_position_embeddings": 163840,
    "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096, "beta_fast": 32,
                     "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
    "tie_word_embeddings": False, "norm_topk_prob": True,
    "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                            "weight_block_size": [128, 128]}}
KIMI_K2 = {**DEEPSEEK_V3, "model_type": "kimi_k2", "num_attention_heads": 64, "num_key_value_heads": 64,
           "n_routed_experts": 384, "first_k_dense_replace": 1, "vocab_size": 163840, "rope_theta": 50000.0,
           "max_position_embeddings": 131072,
           "rope_scaling": {"type": "yarn", "factor": 32.0, "original_max_position_embeddings": 4096, "beta_fast": 1.0,
                            "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0}}


@pytest.mark.parametrize("preset, config, total, active", [
    # DeepSeek-V3 (arXiv 2412.19437): 671B total, 37B activated per token; Kimi K2: 1T total, 32B activated
    ("deepseek-v3", DEEPSEEK_V3, 671e9, 37e9),
    ("kimi-k2", KIMI_K2, 1.03e12, 32.5e9),
])
def test_presets_are_the_published_checkpoints(preset, config, total, active):
    spec = model_spec(preset)
    checkpoint = ModelSpec.from_hf_config(config, costs_only=True)
    assert spec.architecture_differences(checkpoint) == [] and checkpoint.weight_bytes == spec.weight_bytes == 1.0
    assert spec.num_params == pytest.approx(total, rel=0.01)
    assert spec.active_params == pytest.approx(active, rel=0.02)
    # DeepSeek-V2 (arXiv 2405.04434, Table 1): (d_c + d_h^R) x layers elements a token, here in bf16
    assert spec.kv_bytes_per_token == (512 + 64) * 61 * 2 == 70_272


def test_latent_attention_is_simulated_only():
    with pytest.raises(ConfigError, match=r"model_type 'deepseek_v3'; the engine implements .* simulated only"):
        ModelSpec.from_hf_config(DEEPSEEK_V3)
    with pytest.raises(ConfigError, match="moe_layer_freq 2"):
        ModelSpec.from_hf_config({**DEEPSEEK_V3, "moe_layer_freq": 2}, costs_only=True)
    result = batchlab("run", "model=deepseek-v3")
    assert result.returncode == 2 and "'deepseek-v3': latent attention (DeepSeek, Kimi K2)" in result.stderr
    assert ": simulated only; the engine does not implement them" in result.stderr


def test_every_gpu_holds_the_whole_latent_and_a_prefix_hit_still_up_projects_it():
    from sim.hardware import hardware_spec, kv_capacity_blocks, shard
    from sim.roofline import build_roofline_profile

    spec = model_spec("deepseek-v3")
    tp8 = hardware_spec("h200", tensor_parallel=8)
    assert shard(spec, tp8).kv_bytes_per_token == spec.kv_bytes_per_token  # replicated, not split
    usable = 141e9 * 0.9 - spec.weight_bytes_total / 8 - 2e9
    assert kv_capacity_blocks(spec, tp8, 16) == int(usable // (16 * 70_272))
    prefill = build_roofline_profile(spec, tp8).tables["attn_prefill"]
    heads = 128 // 8
    up = 2 * 4096 * 512 * heads * (128 + 128) / (tp8.peak_flops * tp8.compute_efficiency)
    # 128 new tokens after 4,096 cached: their attention over the context, and the cached latents'
    # up-projection to keys and values, which a cache hit does not save
    assert prefill.scalar(128, 4224) - prefill.scalar(128, 128) > up


def test_deepseek_v2_lite_queries_without_a_low_rank_projection():
    """DeepSeek-V2-Lite (q_lora_rank null: one query projection; two shared experts): 15.7B
    parameters in total (arXiv 2405.04434). Its 2.4B activated leaves out the input embedding,
    which batchlab counts (2.66B), as Qwen's and Mistral's figures do."""
    config = {**DEEPSEEK_V3, "model_type": "deepseek_v2", "hidden_size": 2048, "intermediate_size": 10944,
              "moe_intermediate_size": 1408, "num_hidden_layers": 27, "num_attention_heads": 16,
              "num_key_value_heads": 16, "n_routed_experts": 64, "n_shared_experts": 2, "num_experts_per_tok": 6,
              "first_k_dense_replace": 1, "q_lora_rank": None, "vocab_size": 102400, "norm_topk_prob": False}
    del config["quantization_config"]
    spec = ModelSpec.from_hf_config(config, costs_only=True)
    assert spec.q_lora_rank == 0 and spec.shared_expert_intermediate_size == 2 * 1408
    assert spec.num_params == pytest.approx(15.7e9, rel=0.01)
    assert spec.active_params - 102400 * 2048 == pytest.approx(2.4e9, rel=0.03)


GLM_45 = {"model_type": "glm4_moe", "hidden_size": 5120, "intermediate_size": 12288, "moe_intermediate_size": 1536,
          "num_hidden_layers": 92, "num_attention_heads": 96, "num_key_value_heads": 8, "head_dim": 128,
          "n_routed_experts": 160, "n_shared_experts": 1, "num_experts_per_tok": 8, "first_k_dense_replace": 3,
          "vocab_size": 151552, "attention_bias": True, "partial_rotary_factor": 0.5, "use_qk_norm": False,
          "rope_theta": 1000000, "rms_norm_eps": 1e-05, "max_position_embeddings": 131072,
          "tie_word_embeddings": False, "norm_topk_prob": True, "num_nextn_predict_layers": 1}
GLM_45_AIR = {**GLM_45, "hidden_size": 4096, "intermediate_size": 10944, "moe_intermediate_size": 1408,
              "num_hidden_layers": 46, "n_routed_experts": 128, "first_k_dense_replace": 1}


@pytest.mark.parametrize("config, total, active", [(GLM_45, 355e9, 32e9), (GLM_45_AIR, 106e9, 12e9)],
                         ids=["glm-4.5", "glm-4.5-air"])
def test_glm45_is_simulated_from_its_config(config, total, active):
    """GLM-4.5 (355B total, 32B active) and GLM-4.5-Air (106B, 12B), their cards' figures: the
    activated counts leave out the embeddings (batchlab counts them), the totals hold within 1 %
    whether or not their one multi-token-prediction layer is in them (batchlab leaves it out).
    Simulated only: partial RoPE and sigmoid routing are not in the engine."""
    spec = ModelSpec.from_hf_config(config, costs_only=True)
    assert not spec.mla and spec.num_kv_heads == 8 and spec.first_dense_layers == config["first_k_dense_replace"]
    assert spec.num_params == pytest.approx(total, rel=0.01)
    assert spec.active_params - 2 * spec.vocab_size * spec.hidden_size == pytest.approx(active, rel=0.02)
    with pytest.raises(ConfigError, match="simulated only"):
        ModelSpec.from_hf_config(config)


@pytest.mark.parametrize("fields", [
    dict(first_dense_layers=1),
    dict(shared_expert_intermediate_size=32, shared_expert_gate=False),
], ids=["dense-first-layers", "ungated-shared-expert"])
def test_the_engine_refuses_a_layout_it_would_compute_otherwise(fields):
    from engine.runner import ModelRunner

    spec = model_spec("tiny", num_experts=4, experts_per_token=2, moe_intermediate_size=32, **fields)
    with pytest.raises(ConfigError, match=r"(dense first layers|ungated shared experts \(DeepSeek, GLM-4.5\)): simulated only; the engine "
                       r"does not implement them"):
        ModelRunner(spec, 16, 16)
