"""Model dimensions: a value object shared by the simulator and the engine.

It lives in ``scheduler/`` because both halves may import this package and neither may import
the other; the scheduler itself only needs ``kv_bytes_per_token`` (KV capacity in blocks).
Preset dimensions are those of the models' published Hugging Face ``config.json`` files.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from .errors import ConfigError


class WindowBlocks(NamedTuple):
    """The KV blocks a running request holds for its sliding layers' window, or its linear layers'
    state (``ModelSpec.window_blocks``): ``per_group`` blocks' pages in each sliding group, a block
    taking ``sliding_groups`` pages there (one a group; Gemma 4: two, its sliding pages hold half a
    block's tokens), counted in blocks of ``full_groups`` pages."""
    per_group: int
    sliding_groups: int = 1
    full_groups: int = 1

    def held(self, filled_blocks: int) -> int:
        """Blocks held by a request whose tokens fill ``filled_blocks`` blocks."""
        return -(-min(self.per_group, filled_blocks) * self.sliding_groups // self.full_groups)

    @property
    def need(self) -> int:
        """The last blocks of a prefix hit whose sliding pages must be cached with it: those a
        window of W tokens reaches back over, ceil((W - 1) / block size) (scheduler/window_pages.py)."""
        return max(1, self.per_group - 1)


class StateBlocks(WindowBlocks):
    """A linear-attention model's ``WindowBlocks``: the state pages a running request holds; a
    hit needs the state after its last block."""

    need = 1  # type: ignore[assignment]


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
    # sliding-window attention: the layers listed attend to their last sliding_window positions
    # (their own included), the others to the whole context (Mistral 7B v0.1: every layer, 4096;
    # gpt-oss: every other layer, 128). The KV cache still holds every layer's keys and values.
    sliding_window: int | None = None
    sliding_layers: tuple = ()
    # where some layers slide and some do not, the KV cache counts the full layers' keys for
    # every token and each running request's sliding layers' last window (vLLM's hybrid KV cache
    # manager, its default); True: every layer's for every token (--disable-hybrid-kv-cache-manager)
    sliding_kv_full: bool = False
    attention_sinks: bool = False   # a learned logit per head joins each softmax's denominator (gpt-oss)
    o_bias: bool = False            # a bias on the output projection (gpt-oss, with qkv_bias)
    # gpt-oss's experts: biases on the router and the experts' projections, and a clamped SwiGLU,
    # (up + 1) g sigmoid(alpha g) with g = gate clamped above at limit and up to +-limit; limit 0:
    # the plain SwiGLU
    expert_bias: bool = False
    swiglu_limit: float = 0.0
    swiglu_alpha: float = 1.0
    expert_weight_bytes: float = 0.0  # bytes a routed expert's weight takes where not weight_bytes (MXFP4)
    # YaRN RoPE (arXiv 2309.00071; rope_type "yarn") with rope_scaling_factor and
    # rope_original_max_position, instead of Llama 3.1's scaling
    rope_yarn: bool = False
    rope_beta_fast: float = 32.0
    rope_beta_slow: float = 1.0
    rope_truncate: bool = True
    rope_attention_factor: float = 1.0  # YaRN's scale of cos and sin
    # Gemma 3's layer (gemma3_text): RMSNorm as x (1 + w), multiplied in fp32; norms on the outputs
    # of attention and the MLP besides their inputs; embeddings times sqrt(hidden_size); GELU (tanh)
    # in place of SiLU. Its RoPE: linear scaling on the full layers, another base on the sliding ones
    gemma: bool = False
    query_pre_attn_scalar: float = 0.0  # softmax scale 1 / sqrt(this) (0: head_dim; Gemma 3 27B: 168)
    rope_linear: bool = False           # "linear" RoPE scaling: every frequency / rope_scaling_factor
    rope_local_theta: float = 0.0       # the sliding layers' RoPE base, unscaled (0: the full layers' RoPE)
    # RoPE over the first partial_rotary_factor of each head's dimensions (Qwen3-Next, Qwen3.5: 0.25)
    partial_rotary_factor: float = 1.0
    zero_centered_norms: bool = False  # RMSNorm as x (1 + w) in fp32, as Gemma's (Qwen3-Next, Qwen3.5)
    # linear attention (Gated DeltaNet: Qwen3-Next, Qwen3.5; the engine's torch backend): the layers listed keep
    # no KV but a recurrent state of linear_value_heads x linear_key_dim x linear_value_dim values
    # (state_bytes each: fp32 as Qwen3.5 is released) and their short convolution's last inputs
    linear_layers: tuple = ()
    linear_key_heads: int = 0
    linear_value_heads: int = 0
    linear_key_dim: int = 0
    linear_value_dim: int = 0
    linear_conv_kernel: int = 4
    state_bytes: int = 2
    attn_output_gate: bool = False  # the full layers' queries twice as wide: a sigmoid gate on their output
    # Gemma 4: the full layers' own head size and kv heads (0: head_dim, num_kv_heads, as the sliding
    # layers'), and their keys serving as values (no v_proj; vLLM's cache stores both all the same)
    full_head_dim: int = 0
    full_kv_heads: int = 0
    full_keys_as_values: bool = False
    # Gemma 4's layer on Gemma 3's (gemma): RMSNorm as x w in fp32 (not 1 + w), values RMS-normalised
    # (no weight), a learned scalar on each layer's output, RoPE whole-head on both kinds (the full
    # layers' "proportional": partial_rotary_factor of its frequencies, the rest 0); a mixture (26B-A4B)
    # beside the dense MLP, routed from the layer's input, each with norms of its own
    gemma4: bool = False
    final_logit_softcap: float = 0.0  # logits soft-capped as c tanh(logits / c) (0: not)

    def __post_init__(self) -> None:
        from .model_checks import check_fields

        check_fields(self)

    @property
    def mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def rotary_dim(self) -> int:
        """The dimensions of each query and key head RoPE turns (the first ones; the rest pass)."""
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def simulated_only(self) -> str:
        """What in this model the engine does not implement (it is then simulated only), as
        words for an error; "" when the engine runs it."""
        from .model_checks import simulated_only

        return simulated_only(self)

    def check_engine_runs(self) -> None:
        """A ConfigError naming what of this model the engine does not implement, if anything."""
        if self.simulated_only:
            raise ConfigError(f"model {self.name!r}: {self.simulated_only}: simulated only; the engine does not "
                              f"implement them (batchlab simulate, plan and calibrate take them)")

    def layer_attention(self, full: bool) -> tuple[int, int]:
        """(kv heads, head size) of a full-attention layer, or of a sliding one (the same but in Gemma 4)."""
        if full:
            return self.full_kv_heads or self.num_kv_heads, self.full_head_dim or self.head_dim
        return self.num_kv_heads, self.head_dim

    def layer_kv_bytes(self, full: bool, tensor_parallel: int = 1) -> int:
        """The KV bytes a token takes in one full (or sliding) attention layer, on one of
        ``tensor_parallel`` GPUs (its kv heads split, each on every GPU where they are fewer)."""
        heads, d = self.layer_attention(full)
        return 2 * max(heads // tensor_parallel, 1) * d * self.activation_bytes

    def attention_params(self, full: bool = True) -> int:
        """One full (or sliding) layer's attention projections (and their norms, biases)."""
        h, heads = self.hidden_size, self.num_heads
        if not self.mla:
            kv, d = self.layer_attention(full)
            kv_outputs = (1 if full and self.full_keys_as_values else 2) * kv
            return ((h + self.qkv_bias) * (heads * (1 + self.attn_output_gate) + kv_outputs) * d
                    + heads * d * h + 2 * d * self.qk_norm + h * self.o_bias + heads * self.attention_sinks)
        d = self.head_dim
        latent, rope, q_lora = self.kv_lora_rank, self.qk_rope_head_dim, self.q_lora_rank
        query = heads * (d + rope)
        queries = h * q_lora + q_lora + q_lora * query if q_lora else h * query
        return queries + h * (latent + rope) + latent + latent * heads * (d + self.v_head_dim) + heads * self.v_head_dim * h

    @property
    def num_params(self) -> int:
        h, dense = self.hidden_size, self.first_dense_layers
        mlps = dense * 3 * h * self.intermediate_size + (self.num_layers - dense) * self.mlp_params
        embeddings = self.vocab_size * h * (1 if self.tie_embeddings else 2)
        linear, sliding = len(self.linear_layers), len(self.sliding_layers)
        full = self.num_layers - linear - sliding
        return (full * self.attention_params() + sliding * self.attention_params(False) + linear * self.linear_params
                + self.num_layers * (2 + 2 * self.gemma) * h + mlps + embeddings + h)

    @property
    def linear_params(self) -> int:
        """One Gated DeltaNet layer: q/k/v/z, beta and decay projections, the short convolution,
        the decay's A and dt bias, the gated output norm, the output projection."""
        keys, values = self.linear_key_heads * self.linear_key_dim, self.linear_value_heads * self.linear_value_dim
        heads, h = self.linear_value_heads, self.hidden_size
        return (h * (2 * keys + 2 * values + 2 * heads) + (2 * keys + values) * self.linear_conv_kernel + 2 * heads
                + self.linear_value_dim + values * h)

    @property
    def state_bytes_per_layer(self) -> int:
        """A request's state in one linear-attention layer: the recurrent state and the short
        convolution's last kernel - 1 inputs (vLLM's mamba state shapes)."""
        keys, values = self.linear_key_heads * self.linear_key_dim, self.linear_value_heads * self.linear_value_dim
        return (self.linear_value_heads * self.linear_key_dim * self.linear_value_dim * self.state_bytes
                + (2 * keys + values) * (self.linear_conv_kernel - 1) * self.activation_bytes)

    def vllm_block_size(self, block_size: int, tensor_parallel: int = 1) -> int:
        """The block size vLLM serves the model with: ``block_size`` (times ``page_tokens_ratio``
        where its sliding and full layers' pages hold different tokens), or for linear attention the
        smallest multiple of 16 whose attention page (a layer's KV for that many tokens) holds a
        layer's state, if larger (its ``HybridAttentionMambaModelConfig``); its prefix cache
        then hits whole blocks of that many tokens only. (Under tensor parallelism the attention
        and state pages divide by the same number of GPUs where the heads divide: the same block.)"""
        if not self.linear_layers:
            return block_size * self.page_tokens_ratio(tensor_parallel)
        return max(block_size, 16 * -(-self.state_bytes_per_layer // (16 * self.layer_kv_bytes(True))))

    @property
    def mlp_params(self) -> int:
        """One layer's MLP: SwiGLU, or every expert's, the router and a shared expert (and gate)."""
        h = self.hidden_size
        if self.num_experts:
            shared = self.shared_expert_intermediate_size
            shared_params = 3 * h * shared + h * self.shared_expert_gate if shared else 0
            return self.num_experts * (self.expert_params + h + self.expert_bias) + shared_params
        return 3 * h * self.intermediate_size

    @property
    def expert_params(self) -> int:
        """One routed expert's SwiGLU (and its biases, gpt-oss's)."""
        h, width = self.hidden_size, self.moe_intermediate_size
        return 3 * h * width + (2 * width + h) * self.expert_bias

    @property
    def routed_expert_params(self) -> int:
        return (self.num_layers - self.first_dense_layers) * self.num_experts * self.expert_params

    @property
    def active_params(self) -> int:
        """Parameters one token's forward pass multiplies by (its experts only)."""
        if not self.num_experts:
            return self.num_params
        inactive = (self.num_experts - self.experts_per_token) * self.expert_params
        return self.num_params - (self.num_layers - self.first_dense_layers) * inactive

    @property
    def expert_bytes(self) -> float:
        """Bytes a routed expert's weight takes."""
        return self.expert_weight_bytes or self.weight_bytes

    def describe(self) -> str:
        """Its size in a few words: parameters (active ones where experts are), the bytes a
        weight takes, the KV bytes a token caches."""
        active = f", {self.active_params / 1e9:.1f}B active" if self.num_experts else ""
        unit = "byte" if self.weight_bytes == 1 else "bytes"
        experts = f" ({self.expert_bytes:.3g} an expert's)" if self.expert_bytes != self.weight_bytes else ""
        window = (f", a {self.sliding_window}-token window in {len(self.sliding_layers)} of {self.num_layers} layers"
                  + (" (their KV kept for the window only)" if self.kv_hybrid else "") if self.sliding_layers else "")
        if self.linear_layers:
            window = (f", linear attention in {len(self.linear_layers)} of {self.num_layers} layers "
                      f"({self.state_bytes_per_layer * len(self.linear_layers) / 2**20:,.0f} MiB of state a request)")
        return (f"{self.num_params / 1e9:.1f}B parameters{active}, {self.weight_bytes:g} {unit} a weight{experts}, "
                f"{self.kv_bytes_per_token / 1024:,.0f} KiB of KV a token{window}")

    @property
    def weight_bytes_total(self) -> float:
        routed = self.routed_expert_params if self.num_experts else 0
        return (self.num_params - routed) * self.weight_bytes + routed * self.expert_bytes

    @property
    def kv_hybrid(self) -> bool:
        """Do the sliding layers keep only their window in the KV cache (unless ``sliding_kv_full``),
        or linear-attention layers a state, apart from the full layers' KV (vLLM's hybrid cache)?"""
        return 0 < len(self.sliding_layers) < self.num_layers and not self.sliding_kv_full or bool(self.linear_layers)

    @property
    def kv_groups(self) -> tuple[int, int, int]:
        """vLLM's hybrid KV cache layout (its ``_get_kv_cache_groups_uniform_page_size``): layers
        of one kind in groups of ``size`` (the fewer kind's count, or the more numerous one's
        where that is under 1.5 times it), the last group of a kind padded; a page holds ``size``
        layers. Returns (size, full-layer groups, sliding-layer groups)."""
        sliding = len(self.sliding_layers or self.linear_layers)  # the other kind: sliding or linear layers
        full = self.num_layers - sliding
        size = min(full, sliding)
        if max(full, sliding) < 1.5 * size:
            size = max(full, sliding)
        return size, -(-full // size), -(-sliding // size)

    @property
    def kv_bytes_per_token(self) -> int:
        """The KV bytes a cache block holds per token: every layer's, or where the sliding layers
        keep their window apart (``kv_hybrid``) the full layers' pages (``kv_groups``: their
        groups times the layers a page holds, padding included)."""
        return self.kv_bytes_per_token_on(1)

    def kv_bytes_per_token_on(self, tensor_parallel: int) -> int:
        """``kv_bytes_per_token`` on one of ``tensor_parallel`` GPUs (``layer_kv_bytes``; latent
        attention's on every GPU)."""
        if self.kv_hybrid:
            size, full_groups, _ = self.kv_groups
            return self.layer_kv_bytes(True, tensor_parallel) * size * full_groups
        return self.kv_bytes_every_layer if self.mla else self._attention_kv_bytes(tensor_parallel)

    def _attention_kv_bytes(self, tensor_parallel: int = 1) -> int:
        sliding = len(self.sliding_layers)
        full = self.num_layers - len(self.linear_layers) - sliding  # linear-attention layers keep a state instead
        return full * self.layer_kv_bytes(True, tensor_parallel) + sliding * self.layer_kv_bytes(False, tensor_parallel)

    @property
    def kv_bytes_every_layer(self) -> int:
        """KV bytes a token takes in every layer (what the engine's cache stores)."""
        if self.mla:  # one latent and one RoPE key a layer, shared by every head
            return self.num_layers * (self.kv_lora_rank + self.qk_rope_head_dim) * self.activation_bytes
        return self._attention_kv_bytes()

    def window_blocks(self, block_size: int, tensor_parallel: int = 1) -> "WindowBlocks | int":
        """What a running request holds for its sliding layers' window where ``kv_hybrid``: in
        each sliding group, the blocks a window of W tokens can touch, ceil((W - 1) / block size)
        + 1 (vLLM frees older ones), counted in blocks of ``kv_bytes_per_token`` (the full groups'
        pages); a request shorter than that holds what its tokens fill (the scheduler's
        ``window_blocks_of``). For linear attention, one page of state in each linear group.
        0 otherwise."""
        if not self.kv_hybrid:
            return 0
        _, full_groups, sliding_groups = self.kv_groups
        if self.linear_layers:  # vLLM: a page of state a linear-attention group (block_size from vllm_block_size)
            return StateBlocks(1, sliding_groups, full_groups)
        # Gemma 4: its sliding pages hold half the tokens of its full ones (page_tokens_ratio)
        sliding, full = self.layer_kv_bytes(False, tensor_parallel), self.layer_kv_bytes(True, tensor_parallel)
        fewer = min(sliding, full)
        return WindowBlocks(-(-(self.sliding_window - 1) // block_size) + 1, sliding_groups * sliding // fewer,
                            full_groups * full // fewer)

    def page_tokens_ratio(self, tensor_parallel: int = 1) -> int:
        """Where the sliding layers' KV a token is larger or smaller than the full layers' (Gemma 4:
        twice), vLLM's hybrid cache pages the smaller kind in blocks that many times as long, so
        that all pages take the same bytes (its ``unify_kv_cache_spec_page_size``), and its prefix
        cache hits the longer blocks only; 1 otherwise. On one of ``tensor_parallel`` GPUs, whose
        share of each kind's kv heads can change the ratio (Gemma 4 26B-A4B's is 1 on four)."""
        if not (self.kv_hybrid and self.sliding_layers):
            return 1
        sliding, full = self.layer_kv_bytes(False, tensor_parallel), self.layer_kv_bytes(True, tensor_parallel)
        if max(sliding, full) % min(sliding, full):
            raise ConfigError(f"model {self.name!r}: its sliding layers' KV a token ({sliding} bytes) and its full "
                              f"layers' ({full}) are not multiples of one another, which vLLM's hybrid KV cache "
                              f"cannot page; model.overrides.sliding_kv_full=true caches every layer's KV instead")
        return max(sliding, full) // min(sliding, full)

    @classmethod
    def from_hf_config(cls, config: dict, name: str = "hf-model", costs_only: bool = False,
                       weight_bytes: float | None = None) -> "ModelSpec":
        """From a Hugging Face ``config.json`` (transformers 4 or 5 layout): Llama (with Llama
        3.1's RoPE scaling), Mistral (with or without its sliding window), Qwen2 (q/k/v biases),
        Qwen3 (q/k norms), Qwen2-MoE, Qwen3-MoE, Mixtral and gpt-oss (mixtures of experts; gpt-oss
        with attention sinks, alternating sliding windows, YaRN and its clamped SwiGLU), Gemma 3
        (its text model; windows in five layers of six, Gemma's norms and RoPE) and Gemma 4 (31B,
        26B-A4B: full layers of their own shape, experts beside the dense MLP). What the
        engine would compute differently (another RoPE type, an o_proj or MLP bias) is refused,
        not ignored; ``costs_only`` (a model only simulated) accepts them, as they do not change
        what a step costs, and DeepSeek-V2/V3 and Kimi K2 (latent attention) and GLM-4.5. A
        quantized checkpoint (``quantization_config``) is refused by the engine; simulated, its
        weights take the bytes its method says (fp8: 1, 4-bit AWQ or GPTQ: 0.5, gpt-oss's MXFP4
        experts: 4.25 bits), or ``weight_bytes`` where given (scheduler/hf_config.py)."""
        from .hf_config import spec_fields

        return cls(**spec_fields(config, name, costs_only, weight_bytes))

    def architecture_differences(self, other: "ModelSpec") -> list[str]:
        """The fields that change what the model computes (not its name, context limit or the
        simulator's byte counts) on which ``other`` differs, as "field: mine vs other's"."""
        from .model_checks import architecture_differences

        return architecture_differences(self, other)

from .model_presets import MODEL_PRESETS, model_spec  # noqa: E402  (the presets need ModelSpec)

__all__ = ["ModelSpec", "WindowBlocks", "StateBlocks", "MODEL_PRESETS", "model_spec"]
