"""The checks a ``ModelSpec`` makes of its fields when it is built: each names the model, the
field and what was expected."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:
    from .model_spec import ModelSpec


def check_fields(spec: "ModelSpec") -> None:
    """A ConfigError for the first field of ``spec`` out of range; the sliding and linear layer
    lists made tuples."""
    for field_name in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim",
                       "intermediate_size", "vocab_size"):
        value = getattr(spec, field_name)
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"model {spec.name!r}: {field_name} is {value!r}; expected an integer >= 1")
    if not spec.rope_scaling_factor >= 1.0 or not spec.rope_high_freq_factor > spec.rope_low_freq_factor > 0:
        raise ConfigError(f"model {spec.name!r}: RoPE scaling needs factor >= 1 and high_freq_factor > "
                          f"low_freq_factor > 0, got {spec.rope_scaling_factor}, {spec.rope_high_freq_factor}, "
                          f"{spec.rope_low_freq_factor}")
    if not isinstance(spec.num_experts, int) or spec.num_experts < 0:
        raise ConfigError(f"model {spec.name!r}: num_experts is {spec.num_experts!r}; expected an integer >= 0 "
                          f"(0: a dense MLP)")
    if spec.num_experts:
        if not (isinstance(spec.experts_per_token, int) and 1 <= spec.experts_per_token <= spec.num_experts
                and isinstance(spec.moe_intermediate_size, int) and spec.moe_intermediate_size >= 1):
            raise ConfigError(f"model {spec.name!r}: {spec.num_experts} experts need 1 <= experts_per_token <= "
                              f"num_experts and moe_intermediate_size >= 1, got {spec.experts_per_token!r} and "
                              f"{spec.moe_intermediate_size!r}")
    elif spec.experts_per_token or spec.moe_intermediate_size or spec.shared_expert_intermediate_size:
        raise ConfigError(f"model {spec.name!r}: experts_per_token / moe_intermediate_size / "
                          f"shared_expert_intermediate_size without num_experts (0 experts is a dense MLP)")
    if not isinstance(spec.shared_expert_intermediate_size, int) or spec.shared_expert_intermediate_size < 0:
        raise ConfigError(f"model {spec.name!r}: shared_expert_intermediate_size is "
                          f"{spec.shared_expert_intermediate_size!r}; expected an integer >= 0 (0: none)")
    for field_name in ("first_dense_layers", "kv_lora_rank", "q_lora_rank", "qk_rope_head_dim", "v_head_dim"):
        value = getattr(spec, field_name)
        if not isinstance(value, int) or value < 0:
            raise ConfigError(f"model {spec.name!r}: {field_name} is {value!r}; expected an integer >= 0")
    if spec.first_dense_layers and not (spec.num_experts and spec.first_dense_layers < spec.num_layers):
        raise ConfigError(f"model {spec.name!r}: first_dense_layers {spec.first_dense_layers} needs experts in "
                          f"the layers after them (num_experts, fewer than {spec.num_layers} dense layers)")
    if spec.mla and not (spec.qk_rope_head_dim and spec.v_head_dim and spec.num_kv_heads == 1):
        raise ConfigError(f"model {spec.name!r}: latent attention (kv_lora_rank {spec.kv_lora_rank}) needs "
                          f"qk_rope_head_dim and v_head_dim >= 1 and num_kv_heads 1 (the shared latent)")
    object.__setattr__(spec, "sliding_layers", tuple(spec.sliding_layers or ()))
    if spec.sliding_layers and not (isinstance(spec.sliding_window, int) and spec.sliding_window >= 1
                                    and all(isinstance(i, int) and 0 <= i < spec.num_layers
                                            for i in spec.sliding_layers)):
        raise ConfigError(f"model {spec.name!r}: sliding_layers {list(spec.sliding_layers)} need sliding_window "
                          f">= 1 (got {spec.sliding_window!r}) and layer indices below {spec.num_layers}")
    object.__setattr__(spec, "linear_layers", tuple(spec.linear_layers or ()))
    if spec.linear_layers and not (all(isinstance(i, int) and 0 <= i < spec.num_layers for i in spec.linear_layers)
                                   and len(spec.linear_layers) < spec.num_layers
                                   and not spec.sliding_layers  # no model has both kinds
                                   and min(spec.linear_key_heads, spec.linear_value_heads, spec.linear_key_dim,
                                           spec.linear_value_dim, spec.linear_conv_kernel) >= 1):
        raise ConfigError(f"model {spec.name!r}: linear_layers {list(spec.linear_layers)} need layer indices below "
                          f"{spec.num_layers} (some full-attention layers left, none sliding) and linear_key_heads, "
                          f"linear_value_heads, linear_key_dim, linear_value_dim, linear_conv_kernel >= 1")
    if not (0 < spec.partial_rotary_factor <= 1 and spec.rotary_dim % 2 == 0 and spec.rotary_dim >= 2):
        raise ConfigError(f"model {spec.name!r}: partial_rotary_factor {spec.partial_rotary_factor} of head_dim "
                          f"{spec.head_dim} gives {spec.rotary_dim} rotated dimensions; expected an even number >= 2")
    if spec.rope_linear and spec.rope_yarn or spec.rope_local_theta < 0 or spec.query_pre_attn_scalar < 0:
        raise ConfigError(f"model {spec.name!r}: rope_linear and rope_yarn exclude each other, and "
                          f"rope_local_theta and query_pre_attn_scalar are >= 0 (0: unused)")
    for field_name in ("full_head_dim", "full_kv_heads"):
        value = getattr(spec, field_name)
        if not isinstance(value, int) or value < 0:
            raise ConfigError(f"model {spec.name!r}: {field_name} is {value!r}; expected an integer >= 0 (0: as the "
                              f"sliding layers', head_dim / num_kv_heads)")
    if (spec.gemma4 and not (spec.gemma and spec.rope_local_theta)) or spec.final_logit_softcap < 0:
        raise ConfigError(f"model {spec.name!r}: gemma4 is Gemma 3's layer changed (it needs gemma and the sliding "
                          f"layers' rope_local_theta), and final_logit_softcap is >= 0 (0: none)")
    if spec.num_heads % (spec.full_kv_heads or 1):
        raise ConfigError(f"model {spec.name!r}: num_heads {spec.num_heads} is not a multiple of "
                          f"full_kv_heads {spec.full_kv_heads}")
    if spec.num_heads % spec.num_kv_heads:
        raise ConfigError(f"model {spec.name!r}: num_heads {spec.num_heads} is not a multiple of "
                          f"num_kv_heads {spec.num_kv_heads}")


def simulated_only(spec: "ModelSpec") -> str:
    """``ModelSpec.simulated_only``: what of ``spec`` the engine does not implement, as words."""
    parts = [what for present, what in ((spec.mla, "latent attention (DeepSeek, Kimi K2)"),
                                        (spec.first_dense_layers, "dense first layers"),
                                        (spec.shared_expert_intermediate_size and not spec.shared_expert_gate
                                         and not spec.gemma4, "ungated shared experts (DeepSeek, GLM-4.5)")) if present]
    return ", ".join(parts)


def architecture_differences(spec: "ModelSpec", other: "ModelSpec") -> list[str]:
    """``ModelSpec.architecture_differences``."""
    ignored = {"name", "max_position", "activation_bytes", "weight_bytes", "expert_weight_bytes", "sliding_kv_full",
               "state_bytes"}
    if spec.rope_scaling_factor == other.rope_scaling_factor == 1.0:  # no scaling: its parameters unused
        ignored |= {"rope_low_freq_factor", "rope_high_freq_factor", "rope_original_max_position"}
    if not (spec.rope_yarn or other.rope_yarn):
        ignored |= {"rope_beta_fast", "rope_beta_slow", "rope_truncate", "rope_attention_factor"}
    if not (spec.sliding_layers or other.sliding_layers):
        ignored.add("sliding_window")
    return [f"{k}: {getattr(spec, k)} vs {getattr(other, k)}" for k in spec.__dataclass_fields__
            if k not in ignored and getattr(spec, k) != getattr(other, k)]

