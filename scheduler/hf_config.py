"""A ``ModelSpec`` from a Hugging Face ``config.json`` (transformers 4 or 5 layout).

What the engine would compute differently from what the config says (a RoPE type, bias or
layer pattern it lacks) is refused, not ignored; a model only simulated (``costs_only``) is
given more room: what does not change a step's cost is accepted.
"""
from __future__ import annotations

import math

from .errors import ConfigError

# linear attention (Gated DeltaNet: Qwen3-Next, Qwen3.5 and its MoE, their text part) on the torch backend
MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "mixtral", "gpt_oss", "gemma3_text",
               "gemma3", "qwen3_next", "qwen3_5_text", "qwen3_5_moe_text", "gemma4", "gemma4_text")
# no engine for these: latent attention (DeepSeek, Kimi K2); sigmoid routing (GLM)
_SIMULATED_LAYOUTS = ("deepseek_v2", "deepseek_v3", "kimi_k2", "glm4_moe")
SIMULATED_TYPES = _SIMULATED_LAYOUTS
LINEAR_TYPES = ("qwen3_next", "qwen3_5_text", "qwen3_5_moe_text")
# bits a weight takes under a quantization method that names no ``bits``
_METHOD_BITS = {"fp8": 8, "mxfp4": 4.25}  # MXFP4: 4-bit values and one 8-bit scale a block of 32
# transformers' Gemma3TextConfig defaults: the released multimodal configs (4B, 12B, 27B) name
# only what differs from them in their ``text_config``
GEMMA3_TEXT_DEFAULTS = dict(vocab_size=262208, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                            num_attention_heads=8, num_key_value_heads=4, head_dim=256, max_position_embeddings=131072,
                            rms_norm_eps=1e-6, tie_word_embeddings=True, query_pre_attn_scalar=256, sliding_window=4096,
                            sliding_window_pattern=6, rope_theta=1e6, rope_local_base_freq=1e4,
                            hidden_activation="gelu_pytorch_tanh")
# transformers' Gemma4TextConfig defaults (its per-layer embeddings on: the E2B and E4B models')
GEMMA4_TEXT_DEFAULTS = dict(vocab_size=262144, hidden_size=2304, intermediate_size=9216, num_hidden_layers=30,
                            num_attention_heads=8, num_key_value_heads=4, head_dim=256, global_head_dim=512,
                            max_position_embeddings=131072, rms_norm_eps=1e-6, tie_word_embeddings=True,
                            sliding_window=512, hidden_size_per_layer_input=256)


def spec_fields(config: dict, name: str, costs_only: bool, weight_bytes: float | None) -> dict:
    """The ``ModelSpec`` fields ``config`` describes (see ``ModelSpec.from_hf_config``)."""
    try:
        model_type = config.get("model_type", "llama")
        if model_type in ("gemma3", "gemma3_text"):  # the multimodal models' text part, as Gemma3ForCausalLM runs it
            config = _gemma3_text(config.get("text_config") or {} if model_type == "gemma3" else config, name,
                                  costs_only)
            model_type = "gemma3_text"
        asked = model_type
        if model_type in ("gemma4", "gemma4_text"):  # the multimodal models' text part
            config = _gemma4_text(config.get("text_config") or {} if model_type == "gemma4" else config, name,
                                  costs_only)
            model_type = "gemma4_text"
        if model_type in ("qwen3_5", "qwen3_5_moe"):  # the multimodal models' text part
            text = config.get("text_config") or {}
            config, model_type = {**config, **text}, text.get("model_type") or model_type + "_text"
        if model_type not in MODEL_TYPES and not (costs_only and model_type in SIMULATED_TYPES):
            simulated = (f"; {', '.join(SIMULATED_TYPES)} are simulated only (batchlab simulate, plan, "
                         f"calibrate)") if model_type in SIMULATED_TYPES or not costs_only else ""
            raise ConfigError(f"model config {name!r}: model_type {asked!r}; the engine implements "
                              f"{', '.join(MODEL_TYPES)}{simulated}")
        heads = config["num_attention_heads"]
        gpt_oss = model_type == "gpt_oss"
        biased = model_type in ("qwen2", "qwen2_moe")  # q/k/v biases, whatever attention_bias says
        if (config.get("attention_bias") and not (biased or gpt_oss) or config.get("mlp_bias")) and not costs_only:
            raise ConfigError(f"model config {name!r}: attention_bias / mlp_bias (o_proj or MLP biases) are not "
                              "implemented by the engine")
        attention = dict(num_kv_heads=config.get("num_key_value_heads", heads),
                         head_dim=config.get("head_dim") or config["hidden_size"] // heads,
                         qk_norm=model_type.startswith("qwen3"), **_sliding(config, model_type, name))
        if model_type in _SIMULATED_LAYOUTS:
            attention = _simulated_layout(config, model_type, name, attention)
        if gpt_oss:  # biases on all four projections, sinks, clamped SwiGLU experts with biases
            attention.update(o_bias=bool(config.get("attention_bias", True)), attention_sinks=True)
        if model_type in LINEAR_TYPES:
            attention.update(_linear_attention(config))
        if model_type == "gemma3_text":  # q/k norms, Gemma's norms and GELU, its softmax scale
            attention.update(qk_norm=True, gemma=True, query_pre_attn_scalar=float(config["query_pre_attn_scalar"]))
        if model_type == "gemma4_text":  # its full layers' own head size and kv heads; keys as values there
            keys_as_values = bool(config.get("attention_k_eq_v"))
            attention.update(qk_norm=True, gemma=True, gemma4=True, full_head_dim=int(config["global_head_dim"]),
                             full_keys_as_values=keys_as_values, query_pre_attn_scalar=1.0,
                             final_logit_softcap=float(config.get("final_logit_softcapping") or 0.0),
                             full_kv_heads=int(config.get("num_global_key_value_heads") or 0) if keys_as_values else 0)
        return dict(name=name, num_layers=config["num_hidden_layers"], hidden_size=config["hidden_size"],
                    num_heads=heads, **attention,
                    intermediate_size=_dense_width(config, model_type), vocab_size=config["vocab_size"],
                    tie_embeddings=bool(config.get("tie_word_embeddings", False)),
                    rms_norm_eps=float(config.get("rms_norm_eps", 1e-5)),
                    max_position=int(config.get("max_position_embeddings", 131072)),
                    qkv_bias=biased or gpt_oss and bool(config.get("attention_bias", True)),
                    **_experts(config, model_type, name), **_rope(config, model_type, name, costs_only),
                    **_quantized(config, name, costs_only, weight_bytes))
    except KeyError as error:
        raise ConfigError(f"model config {name!r}: missing key {error.args[0]!r}") from None


def _dense_width(config: dict, model_type: str) -> int:
    """The dense MLP's width; Qwen3.5-MoE's configs name none (every layer sparse): its experts'."""
    if model_type == "qwen3_5_moe_text" and "intermediate_size" not in config:
        return config["moe_intermediate_size"]
    return config["intermediate_size"]


def _rope(config: dict, model_type: str, name: str, costs_only: bool) -> dict:
    """RoPE's theta and scaling: none, linear, Llama 3.1's or YaRN (the engine's four), and Gemma
    3's sliding layers' own base; any other type only where simulated (RoPE does not change what
    a step costs)."""
    rope = dict(config.get("rope_scaling") or {})
    parameters = dict(config.get("rope_parameters") or {})
    local = parameters.pop("sliding_attention", None)  # transformers 5's Gemma 3: RoPE per layer type
    rope.update(parameters.pop("full_attention", None) or parameters)
    default_theta = {"gpt_oss": 150000.0, "gemma3_text": 1e6, "gemma4_text": 1e6}.get(model_type, 10000.0)
    theta = config.get("rope_theta") or rope.get("rope_theta", default_theta)
    if model_type == "gpt_oss" and not rope.get("factor"):  # transformers' default for gpt-oss
        rope.update(rope_type="yarn", factor=32.0, beta_fast=32.0, beta_slow=1.0, truncate=False,
                    original_max_position_embeddings=4096)
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    partial = float(rope.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0)))
    fields = {"rope_theta": float(theta), "partial_rotary_factor": partial}
    if model_type in ("gemma3_text", "gemma4_text"):  # the sliding layers: their own base, never scaled
        if local and local.get("rope_type", "default") != "default" and not costs_only:
            raise ConfigError(f"model config {name!r}: RoPE type {local['rope_type']!r} on the sliding layers is not "
                              "implemented by the engine (default is)")
        fields["rope_local_theta"] = float((local or {}).get("rope_theta") or config.get("rope_local_base_freq", 1e4))
    if rope_type == "linear":
        fields.update(rope_scaling_factor=float(rope["factor"]), rope_linear=True)
    elif rope_type == "llama3":
        fields.update(rope_scaling_factor=float(rope["factor"]), rope_low_freq_factor=float(rope["low_freq_factor"]),
                      rope_high_freq_factor=float(rope["high_freq_factor"]),
                      rope_original_max_position=int(rope["original_max_position_embeddings"]))
    elif rope_type == "yarn":
        factor = float(rope.get("factor") or config["max_position_embeddings"] / rope["original_max_position_embeddings"])
        fields.update(rope_scaling_factor=factor, rope_yarn=True,
                      rope_original_max_position=int(rope["original_max_position_embeddings"]),
                      rope_beta_fast=float(rope.get("beta_fast") or 32.0),
                      rope_beta_slow=float(rope.get("beta_slow") or 1.0),
                      rope_truncate=bool(rope.get("truncate", True)),
                      rope_attention_factor=_yarn_attention_factor(rope, factor))
    elif rope_type == "proportional" and model_type == "gemma4_text":  # Gemma 4's full layers (ModelSpec.gemma4)
        if float(rope.get("factor", 1.0)) != 1.0:  # its frequencies divided by the factor: linear scaling
            fields.update(rope_scaling_factor=float(rope["factor"]), rope_linear=True)
    elif rope_type != "default" and not costs_only:
        raise ConfigError(f"model config {name!r}: RoPE type {rope_type!r} is not implemented by the engine "
                          "(default, linear, llama3 and yarn are); batchlab simulate and plan take it, as RoPE does not "
                          "change what a step costs")
    return fields


def _linear_attention(config: dict) -> dict:
    """Qwen3-Next's and Qwen3.5's Gated DeltaNet layers (``layer_types``, or three in every
    ``full_attention_interval``) and their gated full-attention layers; transformers' defaults
    where a key is missing; the recurrent state in ``mamba_ssm_dtype`` (Qwen3.5: float32)."""
    layers = config["num_hidden_layers"]
    interval = config.get("full_attention_interval", 4)
    types = config.get("layer_types") or ["full_attention" if (i + 1) % interval == 0 else "linear_attention"
                                          for i in range(layers)]
    return dict(linear_layers=tuple(i for i, kind in enumerate(types) if kind == "linear_attention"),
                zero_centered_norms=True,
                linear_key_heads=config.get("linear_num_key_heads", 16),
                linear_value_heads=config.get("linear_num_value_heads", 32),
                linear_key_dim=config.get("linear_key_head_dim", 128),
                linear_value_dim=config.get("linear_value_head_dim", 128),
                linear_conv_kernel=config.get("linear_conv_kernel_dim", 4),
                state_bytes={"float32": 4}.get(config.get("mamba_ssm_dtype"), 2),
                attn_output_gate=bool(config.get("attn_output_gate", True)))


def _gemma3_text(text: dict, name: str, costs_only: bool) -> dict:
    """A Gemma 3 text config with transformers' defaults filled in and its layer types (every
    ``sliding_window_pattern``-th layer full) spelled out; what the engine would compute
    differently (soft-capped logits, bidirectional attention, another activation) refused."""
    config = {**GEMMA3_TEXT_DEFAULTS, **{k: v for k, v in text.items() if v is not None}}
    pattern, layers = config["sliding_window_pattern"], config["num_hidden_layers"]
    config.setdefault("layer_types", ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
                                      for i in range(layers)])
    odd = [f"{key} {text[key]!r}" for key in ("attn_logit_softcapping", "final_logit_softcapping",
                                               "use_bidirectional_attention") if text.get(key)]
    if config["hidden_activation"] != "gelu_pytorch_tanh":
        odd.append(f"hidden_activation {config['hidden_activation']!r}")
    if odd and not costs_only:
        raise ConfigError(f"model config {name!r}: {', '.join(odd)}: not implemented by the engine (Gemma 3's "
                          f"text model is); batchlab simulate and plan take it")
    return config


def _gemma4_text(text: dict, name: str, costs_only: bool) -> dict:
    """A Gemma 4 text config (26B-A4B, 31B) with transformers' defaults filled in and its layer
    types (every sixth layer full, and the last) spelled out: its full layers' head size
    (``global_head_dim``) and, where keys serve as values (``attention_k_eq_v``), kv heads
    (``num_global_key_value_heads``) their own. The E2B and E4B layouts (KV shared between
    layers, per-layer embeddings, double-wide MLPs) are refused: not modelled; what the engine
    would compute differently (bidirectional attention, another activation) refused unless
    simulated."""
    config = {**GEMMA4_TEXT_DEFAULTS, **text}
    odd = [f"{key} {config[key]!r}" for key in ("num_kv_shared_layers", "hidden_size_per_layer_input",
                                                 "use_double_wide_mlp") if config.get(key)]
    if odd:
        raise ConfigError(f"model config {name!r}: {', '.join(odd)}: Gemma 4's E2B / E4B layout (KV shared between "
                          f"layers, per-layer embeddings) is not modelled; its 26B-A4B and 31B are")
    odd = [f"{key} {config[key]!r}" for key, usual in (("use_bidirectional_attention", "vision"),
                                                       ("hidden_activation", "gelu_pytorch_tanh"))
           if config.get(key, usual) not in (usual, None)]
    if odd and not costs_only:
        raise ConfigError(f"model config {name!r}: {', '.join(odd)}: not implemented by the engine (Gemma 4's text "
                          f"model is); batchlab simulate and plan take it")
    layers = config["num_hidden_layers"]
    if not config.get("layer_types"):
        config["layer_types"] = ["full_attention" if (i + 1) % 6 == 0 or i == layers - 1 else "sliding_attention"
                                 for i in range(layers)]
    if config.get("per_layer_config"):  # as transformers 5 writes it: the full layers' shape layer by layer
        config.update(_gemma4_full_layers(config, name))
    return config


def _gemma4_full_layers(config: dict, name: str) -> dict:
    """``global_head_dim`` and ``num_global_key_value_heads`` (with ``attention_k_eq_v``, as the
    released configs name them) from a ``per_layer_config`` (as transformers' save_pretrained
    writes it: {layer: {head_dim, num_key_value_heads}} for each full layer); one shape for all
    the full layers and none for the sliding ones, or refused."""
    full = {i for i, kind in enumerate(config["layer_types"]) if kind == "full_attention"}
    entries = {int(layer): dict(entry) for layer, entry in config["per_layer_config"].items()}
    shapes = {tuple(sorted(entry.items())) for entry in entries.values()}
    entry = next(iter(entries.values()))
    if set(entries) != full or len(shapes) != 1 or set(entry) - {"head_dim", "num_key_value_heads"}:
        raise ConfigError(f"model config {name!r}: per_layer_config must give every full-attention layer (and only "
                          f"those) the same head_dim and num_key_value_heads; got {config['per_layer_config']!r}")
    return {"global_head_dim": entry.get("head_dim", config["head_dim"]),
            "num_global_key_value_heads": entry.get("num_key_value_heads")}


def _yarn_attention_factor(rope: dict, factor: float) -> float:
    """YaRN's scale of cos and sin: given, or 0.1 ln(factor) + 1 (DeepSeek's mscale ratio where
    both mscale and mscale_all_dim are given), as transformers computes it."""
    if rope.get("attention_factor") is not None:
        return float(rope["attention_factor"])

    def mscale(scale: float = 1.0) -> float:
        return 1.0 if factor <= 1 else 0.1 * scale * math.log(factor) + 1.0
    if rope.get("mscale") and rope.get("mscale_all_dim"):
        return mscale(rope["mscale"]) / mscale(rope["mscale_all_dim"])
    return mscale()


def _sliding(config: dict, model_type: str, name: str) -> dict:
    """``sliding_window`` and ``sliding_layers`` from the config's ``layer_types`` (gpt-oss,
    transformers 5), Qwen2's ``use_sliding_window`` from ``max_window_layers`` on, or Mistral's
    and Mixtral's window on every layer."""
    layers, window = config["num_hidden_layers"], config.get("sliding_window")
    types = config.get("layer_types")
    if model_type == "gpt_oss" and types is None:  # transformers' default: every other layer, the first sliding
        types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)]
    if types is not None:
        if len(types) != layers or set(types) - {"sliding_attention", "full_attention", "linear_attention"}:
            raise ConfigError(f"model config {name!r}: layer_types must list 'sliding_attention', 'full_attention' "
                              f"or 'linear_attention' for each of the {layers} layers")
        sliding = tuple(i for i, kind in enumerate(types) if kind == "sliding_attention")
    elif model_type in ("mistral", "mixtral"):
        sliding = tuple(range(layers)) if window else ()
    elif config.get("use_sliding_window"):
        sliding = tuple(range(config.get("max_window_layers", 28), layers))
    else:
        sliding = ()
    if model_type.startswith("qwen") and not config.get("use_sliding_window"):
        sliding = ()  # Qwen's layer_types name windows its attention ignores unless use_sliding_window is set
    if sliding and not (isinstance(window, int) and window >= 1):
        raise ConfigError(f"model config {name!r}: sliding layers need sliding_window >= 1, got {window!r}")
    return dict(sliding_window=window, sliding_layers=sliding) if sliding else {}


def _simulated_layout(config: dict, model_type: str, name: str, grouped_query: dict) -> dict:
    """The attention and MoE layout of DeepSeek-V2/V3 and Kimi K2 (latent attention) or GLM-4.5
    (grouped-query attention; what only the engine would compute differently, its partial RoPE,
    biases and sigmoid routing, ignored), all with ungated shared experts after dense first
    layers, for simulation."""
    if config.get("moe_layer_freq", 1) != 1:
        raise ConfigError(f"model config {name!r}: moe_layer_freq {config['moe_layer_freq']} (dense layers among the "
                          f"sparse ones) is not modelled")
    width = config["moe_intermediate_size"]
    if model_type == "glm4_moe":  # ``grouped_query``: the heads and head size as other types read them
        attention = {**grouped_query, "qk_norm": bool(config.get("use_qk_norm", False))}
    else:
        attention = dict(num_kv_heads=1, head_dim=config["qk_nope_head_dim"], kv_lora_rank=config["kv_lora_rank"],
                         q_lora_rank=config.get("q_lora_rank") or 0, qk_rope_head_dim=config["qk_rope_head_dim"],
                         v_head_dim=config["v_head_dim"])
    return dict(**attention, num_experts=config["n_routed_experts"],
                experts_per_token=config["num_experts_per_tok"], moe_intermediate_size=width,
                shared_expert_intermediate_size=width * (config.get("n_shared_experts") or 0),
                shared_expert_gate=False, first_dense_layers=config.get("first_k_dense_replace", 0),
                norm_topk_prob=bool(config.get("norm_topk_prob", False)))


def _quantized(config: dict, name: str, costs_only: bool, weight_bytes: float | None) -> dict:
    """``weight_bytes`` of a quantized checkpoint (its ``quantization_config``), for simulation;
    ``expert_weight_bytes`` where only the routed experts are quantized (gpt-oss's MXFP4)."""
    quant = config.get("quantization_config")
    if not quant:
        return {}
    method = quant.get("quant_method", "unnamed")
    if method == "mxfp4":  # gpt-oss: the experts only (the engine dequantizes them when it loads them)
        return {"expert_weight_bytes": _METHOD_BITS[method] / 8}
    if not costs_only:
        raise ConfigError(f"model config {name!r}: quantization_config ({method}): the engine runs unquantized "
                          f"weights only; batchlab simulate and plan take it")
    if weight_bytes is not None:
        return {"weight_bytes": weight_bytes}
    bits = _METHOD_BITS.get(method) or quant.get("bits") or quant.get("w_bit")
    if method == "bitsandbytes":
        bits = 4 if quant.get("load_in_4bit") else 8 if quant.get("load_in_8bit") else None
    elif method == "compressed-tensors":
        widths = {group.get("weights", {}).get("num_bits") for group in (quant.get("config_groups") or {}).values()}
        bits = widths.pop() if len(widths) == 1 else None
    if not isinstance(bits, (int, float)) or not 1 <= bits <= 16:
        raise ConfigError(f"model config {name!r}: quantization_config {method!r}: how many bits a weight takes is "
                          f"not known to batchlab; give it as model.overrides.weight_bytes=B (bytes a weight)")
    return {"weight_bytes": bits / 8}


def _experts(config: dict, model_type: str, name: str) -> dict:
    """The mixture-of-experts fields of a Mixtral, gpt-oss, Qwen2-MoE or Qwen3-MoE config (none
    for dense types)."""
    if model_type in ("mixtral", "gpt_oss"):  # every layer sparse, experts intermediate_size wide, top-k renormalised
        fields = dict(num_experts=config["num_local_experts"], experts_per_token=config["num_experts_per_tok"],
                      moe_intermediate_size=config["intermediate_size"], norm_topk_prob=True)
        if model_type == "gpt_oss":  # softmax over the top k logits (the same); biases; the clamped SwiGLU
            fields.update(expert_bias=True, swiglu_limit=float(config.get("swiglu_limit", 7.0)),
                          swiglu_alpha=float(config.get("swiglu_alpha", 1.702)))
        return fields
    if model_type == "gemma4_text":  # a dense MLP besides the experts in every layer: an ungated shared expert
        return dict(num_experts=config["num_experts"], experts_per_token=config["top_k_experts"],
                    moe_intermediate_size=config["moe_intermediate_size"],
                    shared_expert_intermediate_size=config["intermediate_size"],
                    shared_expert_gate=False) if config.get("enable_moe_block") else {}
    if model_type not in ("qwen3_moe", "qwen2_moe", "qwen3_next", "qwen3_5_moe_text"):
        return {}
    if config.get("mlp_only_layers") or config.get("decoder_sparse_step", 1) != 1:
        raise ConfigError(f"model config {name!r}: mlp_only_layers / decoder_sparse_step != 1 (dense layers among "
                          f"the sparse ones) are not implemented by the engine")
    experts = config.get("num_experts", config.get("num_local_experts"))
    if experts is None:
        raise KeyError("num_experts")
    shared = config.get("shared_expert_intermediate_size", 0) if model_type != "qwen3_moe" else 0  # gated
    # transformers' defaults: Qwen3-Next renormalises unless told not to; Qwen3.5-MoE always does (no such key)
    renormalised = True if model_type == "qwen3_5_moe_text" else config.get("norm_topk_prob", model_type == "qwen3_next")
    return dict(num_experts=experts, experts_per_token=config["num_experts_per_tok"],
                moe_intermediate_size=config["moe_intermediate_size"],
                norm_topk_prob=bool(renormalised), shared_expert_intermediate_size=shared)
