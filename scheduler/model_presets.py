"""The model presets: the published Hugging Face ``config.json`` dimensions of the models batchlab
knows by name (``model=NAME``), and tiny ones of the same architectures for the CPU engine."""
from __future__ import annotations

import math
from dataclasses import replace

from .model_spec import ModelSpec

_GPT_OSS_YARN = dict(rope_yarn=True, rope_scaling_factor=32.0, rope_original_max_position=4096, rope_truncate=False,
                     rope_attention_factor=0.1 * math.log(32.0) + 1.0)

# Qwen3-Next's and Qwen3.5's: RoPE on a quarter of each head, norms as x (1 + w)
_QWEN_NEXT = dict(partial_rotary_factor=0.25, zero_centered_norms=True)
MODEL_PRESETS: dict[str, ModelSpec] = {
    "llama-3.1-8b": ModelSpec("llama-3.1-8b", 32, 4096, 32, 8, 128, 14336, 128256, rope_theta=500000.0,
                              rope_scaling_factor=8.0),
    "llama-2-7b": ModelSpec("llama-2-7b", 32, 4096, 32, 32, 128, 11008, 32000, max_position=4096),
    "qwen2.5-7b": ModelSpec("qwen2.5-7b", 28, 3584, 28, 4, 128, 18944, 152064, rope_theta=1000000.0,
                            rms_norm_eps=1e-6, max_position=32768, qkv_bias=True),
    "qwen2.5-0.5b": ModelSpec("qwen2.5-0.5b", 24, 896, 14, 2, 64, 4864, 151936, tie_embeddings=True,
                              rope_theta=1000000.0, rms_norm_eps=1e-6, max_position=32768, qkv_bias=True),
    "qwen2.5-14b": ModelSpec("qwen2.5-14b", 48, 5120, 40, 8, 128, 13824, 152064, rope_theta=1000000.0,
                             rms_norm_eps=1e-6, max_position=32768, qkv_bias=True),
    "llama-3.1-70b": ModelSpec("llama-3.1-70b", 80, 8192, 64, 8, 128, 28672, 128256, rope_theta=500000.0,
                               rope_scaling_factor=8.0),
    "qwen3-8b": ModelSpec("qwen3-8b", 36, 4096, 32, 8, 128, 12288, 151936, rope_theta=1000000.0, rms_norm_eps=1e-6,
                          max_position=40960, qk_norm=True),
    # mixtures of experts: all experts' weights resident, experts_per_token of them per token
    "qwen3-30b-a3b": ModelSpec("qwen3-30b-a3b", 48, 2048, 32, 4, 128, 6144, 151936, rope_theta=1000000.0,
                               rms_norm_eps=1e-6, max_position=40960, qk_norm=True, num_experts=128,
                               experts_per_token=8, moe_intermediate_size=768),
    "qwen3-235b-a22b": ModelSpec("qwen3-235b-a22b", 94, 4096, 64, 4, 128, 12288, 151936, rope_theta=1000000.0,
                                 rms_norm_eps=1e-6, max_position=40960, qk_norm=True, num_experts=128,
                                 experts_per_token=8, moe_intermediate_size=1536),
    # Qwen2-MoE: q/k/v biases, a shared expert beside the routed ones
    "qwen2-57b-a14b": ModelSpec("qwen2-57b-a14b", 28, 3584, 28, 4, 128, 18944, 151936, rope_theta=1000000.0,
                                rms_norm_eps=1e-6, max_position=65536, qkv_bias=True, num_experts=64,
                                experts_per_token=8, moe_intermediate_size=2560, norm_topk_prob=False,
                                shared_expert_intermediate_size=20480),
    # latent attention, simulated only; the released weights are fp8 (one byte a weight)
    "deepseek-v3": ModelSpec("deepseek-v3", 61, 7168, 128, 1, 128, 18432, 129280, rms_norm_eps=1e-6,
                             max_position=163840, weight_bytes=1.0, num_experts=256, experts_per_token=8,
                             moe_intermediate_size=2048, shared_expert_intermediate_size=2048,
                             shared_expert_gate=False, first_dense_layers=3, kv_lora_rank=512, q_lora_rank=1536,
                             qk_rope_head_dim=64, v_head_dim=128, rope_yarn=True, rope_scaling_factor=40.0,
                             rope_original_max_position=4096),
    "kimi-k2": ModelSpec("kimi-k2", 61, 7168, 64, 1, 128, 18432, 163840, rope_theta=50000.0, rms_norm_eps=1e-6,
                         max_position=131072, weight_bytes=1.0, num_experts=384, experts_per_token=8,
                         moe_intermediate_size=2048, shared_expert_intermediate_size=2048, shared_expert_gate=False,
                         first_dense_layers=1, kv_lora_rank=512, q_lora_rank=1536, qk_rope_head_dim=64,
                         v_head_dim=128, rope_yarn=True, rope_scaling_factor=32.0, rope_original_max_position=4096,
                         rope_beta_fast=1.0),
    "mixtral-8x7b": ModelSpec("mixtral-8x7b", 32, 4096, 32, 8, 128, 14336, 32000, rope_theta=1000000.0,
                              max_position=32768, num_experts=8, experts_per_token=2, moe_intermediate_size=14336),
    # gpt-oss: attention sinks, a 128-token window in every other layer (the first sliding), biases on
    # every projection, YaRN; 4 of 128 (32) experts with biases and the clamped SwiGLU, MXFP4 as released
    **{name: ModelSpec(name, layers, 2880, 64, 8, 64, 2880, 201088, rope_theta=150000.0, qkv_bias=True, o_bias=True,
                       attention_sinks=True, sliding_window=128, sliding_layers=tuple(range(0, layers, 2)),
                       num_experts=experts, experts_per_token=4, moe_intermediate_size=2880, expert_bias=True,
                       swiglu_limit=7.0, swiglu_alpha=1.702, expert_weight_bytes=4.25 / 8, **_GPT_OSS_YARN)
       for name, layers, experts in (("gpt-oss-120b", 36, 128), ("gpt-oss-20b", 24, 32))},
    # Gemma 3 (the 4B-27B multimodal models' text part): a window in five layers of six (every sixth
    # full), q/k norms, Gemma's norms and GeGLU, RoPE base 1M linearly scaled x8 on the full layers
    # (1B: unscaled), 10k on the sliding ones; the softmax scale from query_pre_attn_scalar
    **{name: ModelSpec(name, layers, hidden, heads, kv, d, width, 262144 if name == "gemma-3-1b" else 262208,
                       tie_embeddings=True, rope_theta=1e6, rope_local_theta=1e4, rms_norm_eps=1e-6,
                       max_position=32768 if name == "gemma-3-1b" else 131072, qk_norm=True, gemma=True,
                       sliding_window=window, sliding_layers=tuple(i for i in range(layers) if (i + 1) % 6),
                       query_pre_attn_scalar=scalar, rope_linear=name != "gemma-3-1b",
                       rope_scaling_factor=1.0 if name == "gemma-3-1b" else 8.0)
       for name, layers, hidden, heads, kv, d, width, window, scalar in (
           ("gemma-3-1b", 26, 1152, 4, 1, 256, 6912, 512, 256), ("gemma-3-4b", 34, 2560, 8, 4, 256, 10240, 1024, 256),
           ("gemma-3-12b", 48, 3840, 16, 8, 256, 15360, 1024, 256),
           ("gemma-3-27b", 62, 5376, 32, 16, 128, 21504, 1024, 168))},
    # Gemma 4 (the 31B and 26B-A4B models' text part): Gemma 3's windows (1,024 tokens, every sixth layer
    # full), full layers of their own: 4 (2) kv heads of 512 whose keys serve as values, RoPE proportional on
    # a quarter of them; Gemma 4's layer (ModelSpec.gemma4), the softmax unscaled, logits capped at 30;
    # 26B-A4B: 8 of 128 experts 704 wide beside a dense GeGLU 2,112 wide in every layer
    **{name: ModelSpec(name, layers, hidden, heads, kv, 256, width, 262144, tie_embeddings=True, rope_theta=1e6,
                       rope_local_theta=1e4, rms_norm_eps=1e-6, max_position=262144, qk_norm=True, gemma=True,
                       sliding_window=1024, sliding_layers=tuple(i for i in range(layers) if (i + 1) % 6),
                       partial_rotary_factor=0.25, full_head_dim=512, full_kv_heads=full_kv, full_keys_as_values=True,
                       gemma4=True, query_pre_attn_scalar=1.0, final_logit_softcap=30.0, **experts)
       for name, layers, hidden, heads, kv, full_kv, width, experts in (
           ("gemma-4-31b", 60, 5376, 32, 16, 4, 21504, {}),
           ("gemma-4-26b-a4b", 30, 2816, 16, 8, 2, 2112, dict(
               num_experts=128, experts_per_token=8, moe_intermediate_size=704, shared_expert_intermediate_size=2112,
               shared_expert_gate=False)))},
    # Qwen3-Next: Gated DeltaNet in three layers of four, gated attention with
    # q/k norms in the fourth (head size 256, RoPE on a quarter of it), 10 of 512 experts and a
    # gated shared expert; the recurrent state in bf16 (its config names no mamba_ssm_dtype)
    "qwen3-next-80b-a3b": ModelSpec("qwen3-next-80b-a3b", 48, 2048, 16, 2, 256, 5120, 151936, rope_theta=1e7,
                                    rms_norm_eps=1e-6, max_position=262144, qk_norm=True, num_experts=512,
                                    experts_per_token=10, moe_intermediate_size=512,
                                    shared_expert_intermediate_size=512, attn_output_gate=True, **_QWEN_NEXT,
                                    linear_layers=tuple(i for i in range(48) if (i + 1) % 4), linear_key_heads=16,
                                    linear_value_heads=32, linear_key_dim=128, linear_value_dim=128),
    # Qwen3.5-35B-A3B's text model: Qwen3-Next's layers, 40 of them, 8 of 256 experts, a larger
    # vocabulary, the state in float32 (mamba_ssm_dtype, as Qwen3.5 is released)
    "qwen3.5-35b-a3b": ModelSpec("qwen3.5-35b-a3b", 40, 2048, 16, 2, 256, 512, 248320, rope_theta=1e7,
                                 rms_norm_eps=1e-6, max_position=262144, qk_norm=True, num_experts=256,
                                 experts_per_token=8, moe_intermediate_size=512, shared_expert_intermediate_size=512,
                                 attn_output_gate=True, **_QWEN_NEXT, linear_layers=tuple(i for i in range(40) if (i + 1) % 4),
                                 linear_key_heads=16, linear_value_heads=32, linear_key_dim=128, linear_value_dim=128,
                                 state_bytes=4),
    # Qwen3.5-27B's text model: dense (SwiGLU 17,408 wide), 64 layers, 48 DeltaNet value heads
    "qwen3.5-27b": ModelSpec("qwen3.5-27b", 64, 5120, 24, 4, 256, 17408, 248320, rope_theta=1e7, rms_norm_eps=1e-6,
                             max_position=262144, qk_norm=True, attn_output_gate=True, **_QWEN_NEXT,
                             linear_layers=tuple(i for i in range(64) if (i + 1) % 4), linear_key_heads=16,
                             linear_value_heads=48, linear_key_dim=128, linear_value_dim=128, state_bytes=4),
    # small enough for the CPU engine and tests; same architecture
    "tiny": ModelSpec("tiny", 2, 64, 4, 2, 16, 128, 512, tie_embeddings=True, max_position=4096),
    # tiny's attention with Qwen3-MoE's layers: q/k norms, 8 experts of width 32, top 2
    "tiny-moe": ModelSpec("tiny-moe", 2, 64, 4, 2, 16, 128, 512, tie_embeddings=True, max_position=4096,
                          qk_norm=True, num_experts=8, experts_per_token=2, moe_intermediate_size=32),
    # tiny with gpt-oss's layers: sinks, an 8-token window in layer 0, biases, YaRN, 8 clamped experts
    "tiny-gpt-oss": ModelSpec("tiny-gpt-oss", 2, 64, 4, 2, 16, 32, 512, rope_theta=150000.0, max_position=4096,
                              qkv_bias=True, o_bias=True, attention_sinks=True, sliding_window=8, sliding_layers=(0,),
                              num_experts=8, experts_per_token=2, moe_intermediate_size=32, expert_bias=True,
                              swiglu_limit=7.0, swiglu_alpha=1.702, **{**_GPT_OSS_YARN, "rope_original_max_position": 128}),
    # tiny with Gemma 3's layers: an 8-token window in layers 0 and 1, layer 2 full, both RoPE bases,
    # linear scaling, a query scalar other than head_dim
    # tiny with Qwen3.5's layers: Gated DeltaNet in layers 0-2 (2 key heads of 16, 4 value heads of 8, an
    # fp32 state), gated attention with q/k norms and RoPE on a quarter of each head in layer 3
    "tiny-qwen3.5": ModelSpec("tiny-qwen3.5", 4, 64, 4, 2, 32, 128, 512, tie_embeddings=True, rope_theta=1e7,
                              rms_norm_eps=1e-6, max_position=4096, qk_norm=True, attn_output_gate=True, **_QWEN_NEXT,
                              linear_layers=(0, 1, 2), linear_key_heads=2, linear_value_heads=4, linear_key_dim=16,
                              linear_value_dim=8, state_bytes=4),
    "tiny-gemma3": ModelSpec("tiny-gemma3", 3, 64, 4, 2, 16, 128, 512, tie_embeddings=True, rope_theta=1e6,
                             rope_local_theta=1e4, rope_linear=True, rope_scaling_factor=8.0, rms_norm_eps=1e-6,
                             max_position=4096, qk_norm=True, gemma=True, sliding_window=8, sliding_layers=(0, 1),
                             query_pre_attn_scalar=24),
    # Gemma 4's layer: windows of 8 in layers 0 and 1; the full layer 2's one kv head of 32, its keys as
    # values, RoPE on a quarter of it; the sliding layers' KV a token twice the full one's, as in the
    # released models; a soft cap on the logits low enough to bite
    "tiny-gemma4": ModelSpec("tiny-gemma4", 3, 64, 4, 4, 16, 128, 512, tie_embeddings=True, rope_theta=1e6,
                             rope_local_theta=1e4, rms_norm_eps=1e-6, max_position=4096, qk_norm=True, gemma=True,
                             gemma4=True, sliding_window=8, sliding_layers=(0, 1), query_pre_attn_scalar=1.0,
                             partial_rotary_factor=0.25, full_head_dim=32, full_kv_heads=1, full_keys_as_values=True,
                             final_logit_softcap=5.0),
}
# ... and 26B-A4B's: 2 of 4 experts 32 wide beside the dense MLP (the cost model's ungated shared expert)
MODEL_PRESETS["tiny-gemma4-moe"] = replace(MODEL_PRESETS["tiny-gemma4"], name="tiny-gemma4-moe", num_experts=4,
                                           experts_per_token=2, moe_intermediate_size=32,
                                           shared_expert_intermediate_size=128, shared_expert_gate=False)


def model_spec(name: str, **overrides: object) -> ModelSpec:
    from .config import from_presets

    return from_presets("model", MODEL_PRESETS, name, overrides)
