"""Model weights: seeded random (the default: no downloads) or Hugging Face safetensors."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from scheduler.errors import ConfigError
from scheduler.model_spec import ModelSpec

from .linear_weights import LinearWeights, hf_linear_state, load_linear, random_linear
from .mxfp4 import dequantize_mxfp4


@dataclass
class LayerWeights:
    q: torch.Tensor | None  # [heads x head_dim (x 2 with a gate on the output: each head's rows, then its gate's), hidden]
    k: torch.Tensor | None  # (the four None in a linear-attention layer)
    v: torch.Tensor | None
    o: torch.Tensor | None
    gate: torch.Tensor | None  # the dense MLP's, or a mixture's shared expert (None: neither)
    up: torch.Tensor | None
    down: torch.Tensor | None
    input_norm: torch.Tensor
    post_norm: torch.Tensor
    q_bias: torch.Tensor | None = None  # Qwen2's q/k/v projection biases
    k_bias: torch.Tensor | None = None
    v_bias: torch.Tensor | None = None
    q_norm: torch.Tensor | None = None  # Qwen3's per-head RMSNorm weights [head_dim]
    k_norm: torch.Tensor | None = None
    router: torch.Tensor | None = None        # [experts, hidden]
    expert_gate_up: torch.Tensor | None = None  # [experts, 2 x width, hidden]: gate rows, then up rows
    expert_down: torch.Tensor | None = None     # [experts, hidden, width]
    shared_gate: torch.Tensor | None = None     # [1, hidden]: the shared expert's sigmoid gate (Qwen2-MoE)
    # gpt-oss: an o_proj bias, a sink logit per head, router and expert biases
    o_bias: torch.Tensor | None = None
    sinks: torch.Tensor | None = None                # [heads]
    router_bias: torch.Tensor | None = None          # [experts]
    expert_gate_up_bias: torch.Tensor | None = None  # [experts, 2 x width]: gate, then up
    expert_down_bias: torch.Tensor | None = None     # [experts, hidden]
    # Gemma 3: norms on the attention's and the MLP's outputs (its pre-MLP norm is post_norm)
    attn_out_norm: torch.Tensor | None = None
    mlp_out_norm: torch.Tensor | None = None
    linear: LinearWeights | None = None  # Gated DeltaNet in place of attention (Qwen3-Next, Qwen3.5)
    layer_scalar: torch.Tensor | None = None  # Gemma 4: [1], multiplying the layer's output (the residual stream)
    # Gemma 4's mixture (26B-A4B), beside its dense MLP: the router's scale [hidden] and each expert's
    # [experts]; norms on the dense MLP's output, the experts' input and their output
    router_scale: torch.Tensor | None = None
    expert_scale: torch.Tensor | None = None
    dense_out_norm: torch.Tensor | None = None
    experts_in_norm: torch.Tensor | None = None
    experts_out_norm: torch.Tensor | None = None


BIASES = {"q_bias": "self_attn.q_proj.bias", "k_bias": "self_attn.k_proj.bias", "v_bias": "self_attn.v_proj.bias"}
QK_NORMS = {"q_norm": "self_attn.q_norm.weight", "k_norm": "self_attn.k_norm.weight"}
DENSE_MLP = {"gate": "mlp.gate_proj.weight", "up": "mlp.up_proj.weight", "down": "mlp.down_proj.weight"}
GPT_OSS_ATTENTION = {"o_bias": "self_attn.o_proj.bias", "sinks": "self_attn.sinks"}
# the layer norms' names: Llama's "post_attention_layernorm" is the MLP's input norm; Gemma 3
# normalises the attention's output with it and names the MLP's input norm otherwise
NORMS = {"input_norm": "input_layernorm.weight", "post_norm": "post_attention_layernorm.weight"}
GEMMA_NORMS = {"input_norm": "input_layernorm.weight", "attn_out_norm": "post_attention_layernorm.weight",
               "post_norm": "pre_feedforward_layernorm.weight", "mlp_out_norm": "post_feedforward_layernorm.weight"}
TEXT_PREFIXES = ("model.", "language_model.model.", "model.language_model.")  # transformers 4, 5
# Gemma 3's, Qwen3.5's, Gemma 4's vision (and audio) parts
NOT_TEXT = {"vision_tower", "multi_modal_projector", "visual", "audio_tower", "embed_vision", "embed_audio"}
NOT_USED = ("mtp.", "model.mtp.")  # Qwen3-Next's and Qwen3.5's multi-token prediction layers (speculative decoding)
GEMMA4_EXPERTS = {"router": "router.proj.weight", "router_scale": "router.scale",
                  "expert_scale": "router.per_expert_scale", "expert_gate_up": "experts.gate_up_proj",
                  "expert_down": "experts.down_proj", "dense_out_norm": "post_feedforward_layernorm_1.weight",
                  "experts_in_norm": "pre_feedforward_layernorm_2.weight",
                  "experts_out_norm": "post_feedforward_layernorm_2.weight"}
SHARED_EXPERT = {"gate": "mlp.shared_expert.gate_proj.weight", "up": "mlp.shared_expert.up_proj.weight",
                 "down": "mlp.shared_expert.down_proj.weight", "shared_gate": "mlp.shared_expert_gate.weight"}


@dataclass
class Weights:
    embed: torch.Tensor
    layers: list[LayerWeights]
    norm: torch.Tensor
    lm_head: torch.Tensor

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        """Hugging Face names, for loading the same weights into transformers 5's modules
        (experts as its fused 3-D ``gate_up_proj`` / ``down_proj``; checkpoints on disk keep
        one tensor per expert, which ``load_safetensors`` reads)."""
        state = {"model.embed_tokens.weight": self.embed, "model.norm.weight": self.norm,
                 "lm_head.weight": self.lm_head}
        for i, layer in enumerate(self.layers):
            p = f"model.layers.{i}."
            if layer.linear is not None:
                state.update(hf_linear_state(layer.linear, p))
            else:  # no v_proj where keys serve as values (Gemma 4's full layers)
                state.update({p + "self_attn.q_proj.weight": layer.q, p + "self_attn.k_proj.weight": layer.k,
                              p + "self_attn.o_proj.weight": layer.o,
                              **({} if layer.v is None else {p + "self_attn.v_proj.weight": layer.v})})
            if layer.layer_scalar is not None:
                state[p + "layer_scalar"] = layer.layer_scalar
            norms = NORMS if layer.attn_out_norm is None else GEMMA_NORMS
            state.update({p + hf: getattr(layer, field) for field, hf in norms.items()})
            if layer.router_bias is not None:  # gpt-oss's layout
                state.update(gpt_oss_experts(layer, p))
            elif layer.router_scale is not None:  # Gemma 4's: a dense MLP and experts side by side
                state.update({p + hf: getattr(layer, field) for field, hf in {**DENSE_MLP, **GEMMA4_EXPERTS}.items()})
            elif layer.router is not None:
                state.update({p + "mlp.gate.weight": layer.router, p + "mlp.experts.gate_up_proj": layer.expert_gate_up,
                              p + "mlp.experts.down_proj": layer.expert_down})
                if layer.shared_gate is not None:
                    state.update({p + hf: getattr(layer, field) for field, hf in SHARED_EXPERT.items()})
            else:
                state.update({p + hf: getattr(layer, field) for field, hf in DENSE_MLP.items()})
            state.update({p + hf: getattr(layer, field) for field, hf in {**BIASES, **QK_NORMS, **GPT_OSS_ATTENTION}.items()
                          if getattr(layer, field) is not None})
        return state


def gpt_oss_experts(layer: LayerWeights, prefix: str) -> dict[str, torch.Tensor]:
    """One layer's router and experts in gpt-oss's checkpoint layout: ``gate_up_proj`` [experts,
    hidden, 2 x width] with gate and up columns interleaved, ``down_proj`` [experts, width,
    hidden], and their biases."""
    width = layer.expert_down.shape[2]

    def interleave(x):  # [experts, 2 x width, ...]: gate rows then up rows -> alternating
        return torch.stack((x[:, :width], x[:, width:]), dim=2).flatten(1, 2)
    p = prefix + "mlp."
    return {p + "router.weight": layer.router, p + "router.bias": layer.router_bias,
            p + "experts.gate_up_proj": interleave(layer.expert_gate_up).transpose(1, 2),
            p + "experts.gate_up_proj_bias": interleave(layer.expert_gate_up_bias),
            p + "experts.down_proj": layer.expert_down.transpose(1, 2), p + "experts.down_proj_bias": layer.expert_down_bias}


def _from_gpt_oss(prefix: str, spec: ModelSpec, take, tensors: dict) -> dict[str, torch.Tensor]:
    """The inverse of ``gpt_oss_experts``: one layer's router and experts as the engine holds them;
    the experts from MXFP4 blocks and scales where the checkpoint has them (as released)."""
    E, h, W = spec.num_experts, spec.hidden_size, spec.moe_intermediate_size
    p = prefix + "mlp."

    def split(x):  # [experts, 2 x width, ...] alternating -> gate rows then up rows
        return torch.cat((x[:, 0::2], x[:, 1::2]), dim=1)
    if p + "experts.gate_up_proj_blocks" in tensors:  # [experts, rows, columns / 32, 16] and scales
        def mxfp4(name, rows, columns):
            blocks = take(f"{p}experts.{name}_blocks", (E, rows, columns // 32, 16), raw=True)
            scales = take(f"{p}experts.{name}_scales", (E, rows, columns // 32), raw=True)
            return dequantize_mxfp4(blocks, scales, torch.float32)
        gate_up, down = mxfp4("gate_up_proj", 2 * W, h), mxfp4("down_proj", h, W)
    else:
        gate_up = take(p + "experts.gate_up_proj", (E, h, 2 * W)).transpose(1, 2)
        down = take(p + "experts.down_proj", (E, W, h)).transpose(1, 2)
    like = take(p + "router.weight", (E, h))
    return {"router": like, "router_bias": take(p + "router.bias", (E,)),
            "expert_gate_up": split(gate_up).to(like).contiguous(),
            "expert_gate_up_bias": split(take(p + "experts.gate_up_proj_bias", (E, 2 * W))).contiguous(),
            "expert_down": down.to(like).contiguous(), "expert_down_bias": take(p + "experts.down_proj_bias", (E, h))}


def _shapes(spec: ModelSpec, full: bool = True) -> dict[str, tuple[int, ...]]:
    """One layer's weights' shapes; ``full``: a full-attention layer's (Gemma 4's have their own
    head size and kv heads, and no v_proj where keys serve as values), else a sliding one's."""
    h, I = spec.hidden_size, spec.intermediate_size
    kv, d = spec.layer_attention(full)
    shapes = {"q": (spec.num_heads * d * (1 + spec.attn_output_gate), h), "k": (kv * d, h), "v": (kv * d, h),
              "o": (h, spec.num_heads * d), "input_norm": (h,), "post_norm": (h,)}
    if full and spec.full_keys_as_values:
        del shapes["v"]
    if spec.gemma4:
        shapes.update(layer_scalar=(1,))
    if spec.num_experts:
        E, W, S = spec.num_experts, spec.moe_intermediate_size, spec.shared_expert_intermediate_size
        shapes.update(router=(E, h), expert_gate_up=(E, 2 * W, h), expert_down=(E, h, W))
        if spec.gemma4:  # its dense MLP, of intermediate_size, beside the experts
            shapes.update(gate=(I, h), up=(I, h), down=(h, I), router_scale=(h,), expert_scale=(E,),
                          dense_out_norm=(h,), experts_in_norm=(h,), experts_out_norm=(h,))
        elif S:
            shapes.update(gate=(S, h), up=(S, h), down=(h, S), shared_gate=(1, h))
    else:
        shapes.update(gate=(I, h), up=(I, h), down=(h, I))
    if spec.qk_norm:
        shapes.update(q_norm=(d,), k_norm=(d,))
    if spec.o_bias:
        shapes.update(o_bias=(h,))
    if spec.attention_sinks:
        shapes.update(sinks=(spec.num_heads,))
    if spec.expert_bias:
        E, W = spec.num_experts, spec.moe_intermediate_size
        shapes.update(router_bias=(E,), expert_gate_up_bias=(E, 2 * W), expert_down_bias=(E, h))
    if spec.gemma:
        shapes.update(attn_out_norm=(h,), mlp_out_norm=(h,))
    return shapes


# a checkpoint's names for one expert's matrices (Qwen3-MoE, Mixtral), as transformers writes them
EXPERT_NAMES = {"qwen": ("mlp.gate.weight", "mlp.experts.{e}.", ("gate_proj", "up_proj", "down_proj")),
                "mixtral": ("block_sparse_moe.gate.weight", "block_sparse_moe.experts.{e}.", ("w1", "w3", "w2"))}


def random_weights(spec: ModelSpec, seed: int = 0, dtype: torch.dtype = torch.float32,
                   device: str | torch.device = "cpu") -> Weights:
    # drawn where the weights live: on a GPU in milliseconds (an 8B model's 8e9 normal numbers
    # take about a minute on one CPU thread), other numbers than the CPU's for the same seed
    place = torch.device(device)
    generator = torch.Generator(place if place.type == "cuda" else "cpu").manual_seed(seed)

    def normal(*shape, std=0.02):
        return (torch.randn(*shape, generator=generator, device=generator.device) * std).to(dtype=dtype, device=device)

    def norm(size):  # not all ones, so that a mix-up of norm weights shows in the tests (Gemma's: 1 + w)
        one_plus_w = (spec.gemma and not spec.gemma4) or spec.zero_centered_norms
        noise = torch.randn(size, generator=generator, device=generator.device)
        return ((0.0 if one_plus_w else 1.0) + 0.1 * noise).to(dtype=dtype, device=device)

    layers = []
    dense = {"gate": None, "up": None, "down": None, "v": None}
    for index in range(spec.num_layers):
        shapes = _shapes(spec, index not in spec.sliding_layers)
        # a router wide enough that every token's choice is clear-cut, not a tie; a shared expert's
        # gate that varies from token to token
        tensors = {name: normal(*shape, std=0.5 if name in ("router", "shared_gate") else 0.02)
                   for name, shape in shapes.items() if len(shape) >= 2 and not name.endswith("_bias")}
        if spec.qkv_bias:  # large enough to move the logits, so that a dropped bias shows in tests
            tensors.update({f"{name}_bias": normal(shapes[name][0], std=0.5) for name in ("q", "k", "v")})
        # gpt-oss's: sinks near the scores' scale, biases that move the router's choice and the outputs
        tensors.update({name: normal(*shapes[name], std={"sinks": 1.0, "router_bias": 0.5}.get(name, 0.1))
                        for name in ("o_bias", "sinks", "router_bias", "expert_gate_up_bias", "expert_down_bias")
                        if name in shapes})
        if spec.qk_norm:
            tensors.update(q_norm=norm(shapes["q_norm"][0]), k_norm=norm(shapes["k_norm"][0]))
        if spec.gemma4:  # away from 1, so that a dropped scalar shows
            scalar = 0.5 + torch.rand(1, generator=generator, device=generator.device)
            tensors.update(layer_scalar=scalar.to(dtype=dtype, device=device))
        if spec.gemma4 and spec.num_experts:  # the router's scale undoing its 1 / sqrt(hidden): choices clear-cut
            tensors.update(router_scale=norm(spec.hidden_size) * spec.hidden_size ** 0.5,
                           expert_scale=1.0 + normal(spec.num_experts, std=0.3), dense_out_norm=norm(spec.hidden_size),
                           experts_in_norm=norm(spec.hidden_size), experts_out_norm=norm(spec.hidden_size))
        if index in spec.linear_layers:  # DeltaNet in place of attention
            tensors.update(dict.fromkeys(("q", "k", "v", "o", "q_norm", "k_norm")),
                           linear=random_linear(spec, generator, dtype, device))
        if spec.gemma:
            tensors.update(attn_out_norm=norm(spec.hidden_size), mlp_out_norm=norm(spec.hidden_size))
        layers.append(LayerWeights(**{**dense, **tensors}, input_norm=norm(spec.hidden_size),
                                   post_norm=norm(spec.hidden_size)))
    embed = normal(spec.vocab_size, spec.hidden_size, std=0.5)
    lm_head = embed if spec.tie_embeddings else normal(spec.vocab_size, spec.hidden_size, std=0.5)
    return Weights(embed, layers, norm(spec.hidden_size), lm_head)


def load_safetensors(directory: str | Path, spec: ModelSpec, dtype: torch.dtype = torch.float32,
                     device: str | torch.device = "cpu") -> Weights:
    """Weights from a local directory in Hugging Face layout (``*.safetensors``, with or without
    ``model.safetensors.index.json``). Every problem is reported before any weight is used."""
    from safetensors import safe_open

    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"weights directory {directory} does not exist")
    index = directory / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        files = sorted(set(weight_map.values()))
        missing_files = [f for f in files if not (directory / f).exists()]
        if missing_files:
            raise ConfigError(f"weights directory {directory}: missing {', '.join(missing_files)} "
                              f"(named in model.safetensors.index.json)")
    else:
        files = sorted(p.name for p in directory.glob("*.safetensors"))
        if not files:
            raise ConfigError(f"weights directory {directory}: no *.safetensors file")
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        with safe_open(str(directory / name), framework="pt") as handle:
            for key in handle.keys():
                tensors[key] = handle.get_tensor(key)

    used: set[str] = set()

    def take(key: str, shape: tuple[int, ...], raw: bool = False) -> torch.Tensor:
        if key not in tensors:
            raise ConfigError(f"weights directory {directory}: tensor {key!r} not found")
        used.add(key)
        tensor = tensors[key]
        if tuple(tensor.shape) != shape:
            raise ConfigError(f"weights directory {directory}: {key} has shape {tuple(tensor.shape)}; "
                              f"the model config expects {shape}")
        return tensor.to(device=device) if raw else tensor.to(dtype=dtype, device=device)

    # a multimodal checkpoint (Gemma 3 4B-27B) holds the text model under another prefix: its vision
    # tower and projector are left unused
    prefix = next((p for p in TEXT_PREFIXES if p + "embed_tokens.weight" in tensors), "model.")
    names = {"q": "self_attn.q_proj.weight", "k": "self_attn.k_proj.weight", "v": "self_attn.v_proj.weight",
             "o": "self_attn.o_proj.weight", **(GEMMA_NORMS if spec.gemma else NORMS)}
    names.update(DENSE_MLP if not spec.num_experts else {**DENSE_MLP, **GEMMA4_EXPERTS} if spec.gemma4
                 else SHARED_EXPERT if spec.shared_expert_intermediate_size else {})
    names.update(QK_NORMS if spec.qk_norm else {})
    names.update({"layer_scalar": "layer_scalar"} if spec.gemma4 else {})
    layers = []
    attention = ("q", "k", "v", "o", "q_norm", "k_norm")
    for i in range(spec.num_layers):
        layer = f"{prefix}layers.{i}."
        linear = i in spec.linear_layers
        shapes = _shapes(spec, i not in spec.sliding_layers)
        fields = {field: take(layer + hf, shapes[field]) for field, hf in names.items()
                  if not (linear and field in attention) and (field != "v" or "v" in shapes)}  # keys as values
        if linear:
            fields.update(dict.fromkeys(attention), linear=load_linear(layer, spec, take, tensors))
        if spec.qkv_bias:
            fields.update({field: take(layer + hf, (shapes[field[0]][0],)) for field, hf in BIASES.items()})
        fields.update({field: take(layer + hf, shapes[field]) for field, hf in GPT_OSS_ATTENTION.items()
                       if field in shapes})
        if spec.expert_bias:
            fields.update(_from_gpt_oss(layer, spec, take, tensors))
        elif spec.num_experts and not spec.gemma4:  # (Gemma 4's: named above)
            fields.update(_experts(layer, spec, tensors, take))
        layers.append(LayerWeights(**{"gate": None, "up": None, "down": None, "v": None, **fields}))
    embed = take(prefix + "embed_tokens.weight", (spec.vocab_size, spec.hidden_size))
    lm_head = embed if spec.tie_embeddings and "lm_head.weight" not in tensors else \
        take("lm_head.weight", (spec.vocab_size, spec.hidden_size))
    weights = Weights(embed, layers, take(prefix + "norm.weight", (spec.hidden_size,)), lm_head)
    # a tensor the engine would not use (a bias, another layer) means another architecture: refused
    unused = sorted(k for k in set(tensors) - used if not k.endswith("rotary_emb.inv_freq")
                    and not (prefix != "model." and set(k.split(".")[:2]) & NOT_TEXT) and not k.startswith(NOT_USED))
    if unused:
        shown = ", ".join(unused[:4]) + (f" and {len(unused) - 4} more" if len(unused) > 4 else "")
        raise ConfigError(f"weights directory {directory}: tensors the model {spec.name!r} does not use: {shown} "
                          f"(another architecture or configuration?)")
    return weights


def _experts(prefix: str, spec: ModelSpec, tensors: dict, take) -> dict[str, torch.Tensor]:
    """One layer's router and experts from a checkpoint's per-expert tensors (Qwen3-MoE's or
    Mixtral's names, whichever the checkpoint has), stacked as the engine holds them."""
    style = "mixtral" if prefix + EXPERT_NAMES["mixtral"][0] in tensors else "qwen"
    router_name, expert, (gate, up, down) = EXPERT_NAMES[style]
    h, W = spec.hidden_size, spec.moe_intermediate_size
    router = take(prefix + router_name, (spec.num_experts, h))
    gates_ups, downs = [], []
    for e in range(spec.num_experts):
        name = prefix + expert.format(e=e)
        gates_ups.append(torch.cat([take(f"{name}{gate}.weight", (W, h)), take(f"{name}{up}.weight", (W, h))]))
        downs.append(take(f"{name}{down}.weight", (h, W)))
    return {"router": router, "expert_gate_up": torch.stack(gates_ups), "expert_down": torch.stack(downs)}
