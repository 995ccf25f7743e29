"""Model dimensions: a value object shared by the simulator and the engine.

It lives in ``scheduler/`` because both halves may import this package and neither may import
the other; the scheduler itself only needs ``kv_bytes_per_token`` (KV capacity in blocks).
Preset dimensions are those of the models' published Hugging Face ``config.json`` files.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_embeddings: bool = False
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    max_position: int = 131072
    activation_bytes: int = 2       # bf16 activations and KV cache
    weight_bytes: float = 2.0       # bytes per parameter (0.5 for 4-bit weights)
    # Llama 3.1's RoPE frequency scaling ("rope_type": "llama3"); a factor of 1.0 is none
    rope_scaling_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_position: int = 8192
    qkv_bias: bool = False          # biases on the q, k and v projections (Qwen2)
    qk_norm: bool = False           # RMSNorm over each head's query and key before RoPE (Qwen3)
    # mixture of experts in every layer's MLP (Mixtral, Qwen3-MoE); 0 experts: a dense MLP
    num_experts: int = 0
    experts_per_token: int = 0      # experts each token is routed to (top-k)
    moe_intermediate_size: int = 0  # each expert's SwiGLU width
    norm_topk_prob: bool = True     # the top-k routing weights renormalised to sum to 1
    # a SwiGLU expert every token goes through (Qwen2-MoE, DeepSeek: their widths summed); 0: none
    shared_expert_intermediate_size: int = 0
    shared_expert_gate: bool = True  # ... scaled by a sigmoid gate (Qwen2-MoE's; DeepSeek's has none)
    first_dense_layers: int = 0      # leading layers with a dense MLP of intermediate_size (DeepSeek)
    # multi-head latent attention (DeepSeek-V2/V3, Kimi K2), simulated only: each token's keys and
    # values cached as one latent of kv_lora_rank plus a RoPE key of qk_rope_head_dim shared by the
    # heads (num_kv_heads 1); head_dim is the query/key part without RoPE, v_head_dim the values'
    kv_lora_rank: int = 0            # 0: ordinary (grouped-query) attention
    q_lora_rank: int = 0             # queries through a low-rank projection of this width (0: none)
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0

    def __post_init__(self) -> None:
        for field_name in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim",
                           "intermediate_size", "vocab_size"):
            value = getattr(self, field_name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"model {self.name!r}: {field_name} is {value!r}; expected an integer >= 1")
        if not self.rope_scaling_factor >= 1.0 or not self.rope_high_freq_factor > self.rope_low_freq_factor > 0:
            raise ConfigError(f"model {self.name!r}: RoPE scaling needs factor >= 1 and high_freq_factor > "
                              f"low_freq_factor > 0, got {self.rope_scaling_factor}, {self.rope_high_freq_factor}, "
                              f"{self.rope_low_freq_factor}")
        if not isinstance(self.num_experts, int) or self.num_experts < 0:
            raise ConfigError(f"model {self.name!r}: num_experts is {self.num_experts!r}; expected an integer >= 0 "
                              f"(0: a dense MLP)")
        if self.num_experts:
            if not (isinstance(self.experts_per_token, int) and 1 <= self.experts_per_token <= self.num_experts
                    and isinstance(self.moe_intermediate_size, int) and self.moe_intermediate_size >= 1):
                raise ConfigError(f"model {self.name!r}: {self.num_experts} experts need 1 <= experts_per_token <= "
                                  f"num_experts and moe_intermediate_size >= 1, got {self.experts_per_token!r} and "
                                  f"{self.moe_intermediate_size!r}")
        elif self.experts_per_token or self.moe_intermediate_size or self.shared_expert_intermediate_size:
            raise ConfigError(f"model {self.name!r}: experts_per_token / moe_intermediate_size / "
                              f"shared_expert_intermediate_size without num_experts (0 experts is a dense MLP)")
        if not isinstance(self.shared_expert_intermediate_size, int) or self.shared_expert_intermediate_size < 0:
            raise ConfigError(f"model {self.name!r}: shared_expert_intermediate_size is "
                              f"{self.shared_expert_intermediate_size!r}; expected an integer >= 0 (0: none)")
        for field_name in ("first_dense_layers", "kv_lora_rank", "q_lora_rank", "qk_rope_head_dim", "v_head_dim"):
            value = getattr(self, field_name)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"model {self.name!r}: {field_name} is {value!r}; expected an integer >= 0")
        if self.first_dense_layers and not (self.num_experts and self.first_dense_layers < self.num_layers):
            raise ConfigError(f"model {self.name!r}: first_dense_layers {self.first_dense_layers} needs experts in "
                              f"the layers after them (num_experts, fewer than {self.num_layers} dense layers)")
        if self.mla and not (self.qk_rope_head_dim and self.v_head_dim and self.num_kv_heads == 1):
            raise ConfigError(f"model {self.name!r}: latent attention (kv_lora_rank {self.kv_lora_rank}) needs "
                              f"qk_rope_head_dim and v_head_dim >= 1 and num_kv_heads 1 (the shared latent)")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"model {self.name!r}: num_heads {self.num_heads} is not a multiple of "
                              f"num_kv_heads {self.num_kv_heads}")

    @property
    def mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def simulated_only(self) -> str:
        """What in this model the engine does not implement (it is then simulated only), as
        words for an error; "" when the engine runs it."""
        parts = [what for present, what in ((self.mla, "latent attention (DeepSeek, Kimi K2)"),
                                            (self.first_dense_layers, "dense first layers"),
                                            (self.shared_expert_intermediate_size and not self.shared_expert_gate,
                                             "ungated shared experts (DeepSeek, GLM-4.5)")) if present]
        return ", ".join(parts)

    def check_engine_runs(self) -> None:
        """A ConfigError naming what of this model the engine does not implement, if anything."""
        if self.simulated_only:
            raise ConfigError(f"model {self.name!r}: {self.simulated_only}: simulated only; the engine does not "
                              f"implement them (batchlab simulate, plan and calibrate take them)")

    @property
    def attention_params(self) -> int:
        """One layer's attention projections (and their norms, biases)."""
        h, d, heads = self.hidden_size, self.head_dim, self.num_heads
        if not self.mla:
            return (h + self.qkv_bias) * (heads + 2 * self.num_kv_heads) * d + heads * d * h + 2 * d * self.qk_norm
        latent, rope, q_lora = self.kv_lora_rank, self.qk_rope_head_dim, self.q_lora_rank
        query = heads * (d + rope)
        queries = h * q_lora + q_lora + q_lora * query if q_lora else h * query
        return queries + h * (latent + rope) + latent + latent * heads * (d + self.v_head_dim) + heads * self.v_head_dim * h

    @property
    def num_params(self) -> int:
        h, dense = self.hidden_size, self.first_dense_layers
        mlps = dense * 3 * h * self.intermediate_size + (self.num_layers - dense) * self.mlp_params
        embeddings = self.vocab_size * h * (1 if self.tie_embeddings else 2)
        return self.num_layers * (self.attention_params + 2 * h) + mlps + embeddings + h

    @property
    def mlp_params(self) -> int:
        """One layer's MLP: SwiGLU, or every expert's, the router and a shared expert (and gate)."""
        h = self.hidden_size
        if self.num_experts:
            shared = self.shared_expert_intermediate_size
            shared_params = 3 * h * shared + h * self.shared_expert_gate if shared else 0
            return self.num_experts * (3 * h * self.moe_intermediate_size + h) + shared_params
        return 3 * h * self.intermediate_size

    @property
    def active_params(self) -> int:
        """Parameters one token's forward pass multiplies by (its experts only)."""
        if not self.num_experts:
            return self.num_params
        inactive = (self.num_experts - self.experts_per_token) * 3 * self.hidden_size * self.moe_intermediate_size
        return self.num_params - (self.num_layers - self.first_dense_layers) * inactive

    def describe(self) -> str:
        """Its size in a few words: parameters (active ones where experts are), the bytes a
        weight takes, the KV bytes a token caches."""
        active = f", {self.active_params / 1e9:.1f}B active" if self.num_experts else ""
        unit = "byte" if self.weight_bytes == 1 else "bytes"
        return (f"{self.num_params / 1e9:.1f}B parameters{active}, {self.weight_bytes:g} {unit} a weight, "
                f"{self.kv_bytes_per_token / 1024:,.0f} KiB of KV a token")

    @property
    def weight_bytes_total(self) -> float:
        return self.num_params * self.weight_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        if self.mla:  # one latent and one RoPE key a layer, shared by every head
            return self.num_layers * (self.kv_lora_rank + self.qk_rope_head_dim) * self.activation_bytes
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.activation_bytes

    @classmethod
    def from_hf_config(cls, config: dict, name: str = "hf-model", costs_only: bool = False,
                       weight_bytes: float | None = None) -> "ModelSpec":
        """From a Hugging Face Llama-family ``config.json`` (transformers 4 or 5 layout): Llama
        (with Llama 3.1's RoPE scaling), Mistral without a sliding window, Qwen2 (q/k/v biases),
        Qwen3 (q/k norms), Qwen2-MoE, Qwen3-MoE and Mixtral (mixtures of experts). What the engine
        would compute differently (another RoPE scaling, an o_proj or MLP bias) is refused, not
        ignored; ``costs_only`` (a model only simulated) accepts them, as they do not change what
        a step costs, and DeepSeek-V2/V3 and Kimi K2 (latent attention). A sliding window, which
        does, is refused either way. A quantized checkpoint (``quantization_config``) is refused
        by the engine; simulated, its weights take the bytes its method says (fp8: 1, 4-bit AWQ
        or GPTQ: 0.5), or ``weight_bytes`` where given."""
        try:
            model_type = config.get("model_type", "llama")
            if model_type not in MODEL_TYPES and not (costs_only and model_type in SIMULATED_TYPES):
                simulated = (f"; {', '.join(SIMULATED_TYPES)} are simulated only (batchlab simulate, plan, "
                             f"calibrate)") if model_type in SIMULATED_TYPES or not costs_only else ""
                raise ConfigError(f"model config {name!r}: model_type {model_type!r}; the engine implements "
                                  f"{', '.join(MODEL_TYPES)}{simulated}")
            heads = config["num_attention_heads"]
            rope = dict(config.get("rope_scaling") or {})
            rope.update(config.get("rope_parameters") or {})
            theta = config.get("rope_theta") or rope.get("rope_theta", 10000.0)
            rope_type = rope.get("rope_type", rope.get("type", "default"))
            if rope_type not in ("default", "llama3") and not costs_only:
                raise ConfigError(f"model config {name!r}: RoPE type {rope_type!r} is not implemented by the engine "
                                  "(default and llama3 are); batchlab simulate and plan take it, as RoPE does not "
                                  "change what a step costs")
            scaling = {}
            if rope_type == "llama3":
                scaling = dict(rope_scaling_factor=float(rope["factor"]), rope_low_freq_factor=float(rope["low_freq_factor"]),
                               rope_high_freq_factor=float(rope["high_freq_factor"]),
                               rope_original_max_position=int(rope["original_max_position_embeddings"]))
            biased = model_type in ("qwen2", "qwen2_moe")  # q/k/v biases, whatever attention_bias says
            if (config.get("attention_bias") and not biased or config.get("mlp_bias")) and not costs_only:
                raise ConfigError(f"model config {name!r}: attention_bias / mlp_bias (o_proj or MLP biases) are not "
                                  "implemented by the engine")
            if config.get("use_sliding_window") or model_type in ("mixtral", "mistral") and config.get("sliding_window"):
                raise ConfigError(f"model config {name!r}: use_sliding_window / sliding_window: sliding-window "
                                  "attention is neither implemented by the engine nor modelled by the simulator")
            attention = dict(num_kv_heads=config.get("num_key_value_heads", heads),
                             head_dim=config.get("head_dim") or config["hidden_size"] // heads,
                             qk_norm=model_type.startswith("qwen3"))
            if model_type in SIMULATED_TYPES:
                attention = _simulated_layout(config, model_type, name, attention)
            return cls(name=name, num_layers=config["num_hidden_layers"], hidden_size=config["hidden_size"],
                       num_heads=heads, **attention,
                       intermediate_size=config["intermediate_size"], vocab_size=config["vocab_size"],
                       tie_embeddings=bool(config.get("tie_word_embeddings", False)), rope_theta=float(theta),
                       rms_norm_eps=float(config.get("rms_norm_eps", 1e-5)),
                       max_position=int(config.get("max_position_embeddings", 131072)),
                       qkv_bias=biased,
                       **_experts(config, model_type, name), **scaling,
                       **_quantized(config, name, costs_only, weight_bytes))
        except KeyError as error:
            raise ConfigError(f"model config {name!r}: missing key {error.args[0]!r}") from None

    def architecture_differences(self, other: "ModelSpec") -> list[str]:
        """The fields that change what the model computes (not its name, context limit or the
        simulator's byte counts) on which ``other`` differs, as "field: mine vs other's"."""
        ignored = {"name", "max_position", "activation_bytes", "weight_bytes"}
        if self.rope_scaling_factor == other.rope_scaling_factor == 1.0:  # no scaling: its parameters unused
            ignored |= {"rope_low_freq_factor", "rope_high_freq_factor", "rope_original_max_position"}
        return [f"{k}: {getattr(self, k)} vs {getattr(other, k)}" for k in self.__dataclass_fields__
                if k not in ignored and getattr(self, k) != getattr(other, k)]


MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "mixtral")
# no engine for these: latent attention (DeepSeek, Kimi K2); partial RoPE, sigmoid routing (GLM)
SIMULATED_TYPES = ("deepseek_v2", "deepseek_v3", "kimi_k2", "glm4_moe")


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
    """``weight_bytes`` of a quantized checkpoint (its ``quantization_config``), for simulation."""
    quant = config.get("quantization_config")
    if not quant:
        return {}
    method = quant.get("quant_method", "unnamed")
    if not costs_only:
        raise ConfigError(f"model config {name!r}: quantization_config ({method}): the engine runs unquantized "
                          f"weights only; batchlab simulate and plan take it")
    if weight_bytes is not None:
        return {"weight_bytes": weight_bytes}
    bits = quant.get("bits") or quant.get("w_bit")
    if method == "fp8":
        bits = 8
    elif method == "bitsandbytes":
        bits = 4 if quant.get("load_in_4bit") else 8 if quant.get("load_in_8bit") else None
    elif method == "compressed-tensors":
        widths = {group.get("weights", {}).get("num_bits") for group in (quant.get("config_groups") or {}).values()}
        bits = widths.pop() if len(widths) == 1 else None
    if not isinstance(bits, (int, float)) or not 1 <= bits <= 16:
        raise ConfigError(f"model config {name!r}: quantization_config {method!r}: how many bits a weight takes is "
                          f"not known to batchlab; give it as model.overrides.weight_bytes=B (bytes a weight)")
    return {"weight_bytes": bits / 8}


def _experts(config: dict, model_type: str, name: str) -> dict:
    """The mixture-of-experts fields of a Mixtral, Qwen2-MoE or Qwen3-MoE config (none for dense
    types)."""
    if model_type == "mixtral":  # every layer sparse, experts as wide as intermediate_size, top-k renormalised
        return dict(num_experts=config["num_local_experts"], experts_per_token=config["num_experts_per_tok"],
                    moe_intermediate_size=config["intermediate_size"], norm_topk_prob=True)
    if model_type not in ("qwen3_moe", "qwen2_moe"):
        return {}
    if config.get("mlp_only_layers") or config.get("decoder_sparse_step", 1) != 1:
        raise ConfigError(f"model config {name!r}: mlp_only_layers / decoder_sparse_step != 1 (dense layers among "
                          f"the sparse ones) are not implemented by the engine")
    experts = config.get("num_experts", config.get("num_local_experts"))
    if experts is None:
        raise KeyError("num_experts")
    shared = config.get("shared_expert_intermediate_size", 0) if model_type == "qwen2_moe" else 0
    return dict(num_experts=experts, experts_per_token=config["num_experts_per_tok"],
                moe_intermediate_size=config["moe_intermediate_size"],
                norm_topk_prob=bool(config.get("norm_topk_prob", False)), shared_expert_intermediate_size=shared)


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
                             qk_rope_head_dim=64, v_head_dim=128),
    "kimi-k2": ModelSpec("kimi-k2", 61, 7168, 64, 1, 128, 18432, 163840, rope_theta=50000.0, rms_norm_eps=1e-6,
                         max_position=131072, weight_bytes=1.0, num_experts=384, experts_per_token=8,
                         moe_intermediate_size=2048, shared_expert_intermediate_size=2048, shared_expert_gate=False,
                         first_dense_layers=1, kv_lora_rank=512, q_lora_rank=1536, qk_rope_head_dim=64,
                         v_head_dim=128),
    "mixtral-8x7b": ModelSpec("mixtral-8x7b", 32, 4096, 32, 8, 128, 14336, 32000, rope_theta=1000000.0,
                              max_position=32768, num_experts=8, experts_per_token=2, moe_intermediate_size=14336),
    # small enough for the CPU engine and tests; same architecture
    "tiny": ModelSpec("tiny", 2, 64, 4, 2, 16, 128, 512, tie_embeddings=True, max_position=4096),
    # tiny's attention with Qwen3-MoE's layers: q/k norms, 8 experts of width 32, top 2
    "tiny-moe": ModelSpec("tiny-moe", 2, 64, 4, 2, 16, 128, 512, tie_embeddings=True, max_position=4096,
                          qk_norm=True, num_experts=8, experts_per_token=2, moe_intermediate_size=32),
}


def model_spec(name: str, **overrides: object) -> ModelSpec:
    from .config import from_presets

    return from_presets("model", MODEL_PRESETS, name, overrides)
