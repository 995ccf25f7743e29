"""A Llama-family decoder over one packed varlen batch (no padding), with a paged KV cache.

Conventions follow Hugging Face's ``LlamaForCausalLM``: RMSNorm in fp32, rotate-half RoPE with
``inv_freq = theta ** (-2i/d)`` (with Llama 3.1's frequency scaling where the model has it),
grouped-query attention, SwiGLU MLP, optional tied embeddings, optional q/k/v biases (Qwen2),
optional per-head q/k RMSNorm (Qwen3), a mixture of SwiGLU experts in place of the MLP
(Qwen3-MoE, Mixtral: softmax router in fp32, top-k, optionally renormalised), gpt-oss's sinks,
biases and clamped experts, Gemma 3's layer (its norms, GeGLU, scaled embeddings, two RoPE
bases), and Qwen3-Next's and Qwen3.5's (Gated DeltaNet in place of attention in the layers a
model names, engine/linear_state.py; a sigmoid gate on the other layers' attention output, RoPE
over part of each head), Gemma 4's (full layers of their own head size and kv heads whose keys
serve as values, values normalised, RoPE "proportional" there, a scalar per layer, soft-capped
logits); sliding windows on the layers a model names.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from functools import partial

import torch

from scheduler.errors import ConfigError
from scheduler.model_spec import ModelSpec

from .attention import AttentionBackend, AttentionMetadata
from .experts import experts_reference, route
from .kv_cache import PagedKVCache
from .linear_state import linear_attention
from .weights import Weights

NOUNS = {"gemma": "Gemma's norms on the attention's and the MLP's outputs", "gemma4": "Gemma 4's layer scalars"}
ENGINE_KERNELS = ("linear_qkv", "rope_kv_store", "attention", "linear_o", "mlp", "norms", "lm_head_sampling")


class KernelTimer:
    """Time per kernel category. On CPU, wall time around each region. On a GPU, CUDA events
    recorded on the stream around each region, read once the step is done (``times`` after a
    synchronize): synchronising around every region instead (7 categories x layers, twice
    each) would stall the launch queue hundreds of times a step and time the stalls."""

    def __init__(self, device: torch.device, enabled: bool = True) -> None:
        self.cuda = device.type == "cuda"
        self.enabled = enabled
        self._times: dict[str, float] = dict.fromkeys(ENGINE_KERNELS, 0.0)
        self._events: list[tuple[str, object, object]] = []

    @contextmanager
    def __call__(self, name: str):
        if not self.enabled:
            yield
            return
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self._events.append((name, start, end))
            return
        started = time.perf_counter()
        yield
        self._times[name] += time.perf_counter() - started

    @property
    def times(self) -> dict[str, float]:
        """Seconds per category; on a GPU, read after the step's work has finished."""
        for name, start, end in self._events:
            self._times[name] += start.elapsed_time(end) / 1000.0  # milliseconds
        self._events.clear()
        return self._times


def rope_inv_freq(spec: ModelSpec, device: torch.device | str) -> torch.Tensor:
    """RoPE's frequencies [head_dim / 2], fp32. Llama 3.1 scaling (arXiv 2407.21783; the
    model's config.json ``rope_scaling``): frequencies whose wavelength exceeds the original
    context / low_freq_factor are divided by the factor, those shorter than original context /
    high_freq_factor are kept, and the band between blends the two linearly in original
    context / wavelength."""
    d = spec.rotary_dim
    inv_freq = 1.0 / (spec.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64, device=device).float() / d))
    factor = spec.rope_scaling_factor
    if spec.rope_yarn:
        return yarn_inv_freq(spec, inv_freq)
    if factor == 1.0 or spec.rope_linear:  # linear: positions divided by the factor (Gemma 3's full layers)
        return inv_freq / factor
    low, high, original = spec.rope_low_freq_factor, spec.rope_high_freq_factor, spec.rope_original_max_position
    wavelength = 2 * math.pi / inv_freq
    weight = (original / wavelength - low) / (high - low)  # 0 at the long end of the band, 1 at the short end
    blended = (1 - weight) * inv_freq / factor + weight * inv_freq
    scaled = torch.where(wavelength > original / low, inv_freq / factor, inv_freq)
    return torch.where((wavelength <= original / low) & (wavelength >= original / high), blended, scaled)


def yarn_inv_freq(spec: ModelSpec, inv_freq: torch.Tensor) -> torch.Tensor:
    """YaRN's frequencies (arXiv 2309.00071, as transformers computes them): the dimensions that
    turn fewer than beta_slow times over the original context are interpolated (divided by the
    factor), those that turn more than beta_fast times kept, a linear ramp between. (YaRN's
    scale of cos and sin, rope_attention_factor, scales every query-key product by its square:
    the model applies it to the softmax scale.)"""
    d, base, original = spec.rotary_dim, spec.rope_theta, spec.rope_original_max_position

    def dimension(rotations: float) -> float:  # the dimension that turns ``rotations`` times over the context
        return d * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))
    low, high = dimension(spec.rope_beta_fast), dimension(spec.rope_beta_slow)
    if spec.rope_truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, d - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(d // 2, dtype=torch.float32, device=inv_freq.device) - low) / (high - low)).clamp(0, 1)
    return inv_freq / spec.rope_scaling_factor * ramp + inv_freq * (1 - ramp)


def proportional_inv_freq(spec: ModelSpec, device: torch.device | str) -> torch.Tensor:
    """Gemma 4's full layers' RoPE frequencies ("proportional", as transformers computes them):
    over the whole head of ``full_head_dim``, the first partial_rotary_factor of the angles turning
    at theta ** (-2i / head size), the rest not at all (frequency 0); linear scaling divides them."""
    d = spec.layer_attention(True)[1]
    angles = int(spec.partial_rotary_factor * d // 2)
    turning = 1.0 / (spec.rope_theta ** (torch.arange(0, 2 * angles, 2, dtype=torch.int64, device=device).float() / d))
    return torch.cat((turning, torch.zeros(d // 2 - angles, device=device))) / spec.rope_scaling_factor


def local_inv_freq(spec: ModelSpec, device: torch.device | str) -> torch.Tensor | None:
    """The sliding layers' RoPE frequencies where they have a base of their own (Gemma 3: 10,000,
    unscaled; Gemma 4's over the whole head); None where they share the full layers'."""
    if not spec.rope_local_theta:
        return None
    d = spec.head_dim if spec.gemma4 else spec.rotary_dim
    return 1.0 / (spec.rope_local_theta ** (torch.arange(0, d, 2, dtype=torch.int64, device=device).float() / d))


def rope_tables(spec: ModelSpec, positions: torch.Tensor, dtype: torch.dtype, inv_freq: torch.Tensor | None = None):
    if inv_freq is None:
        inv_freq = rope_inv_freq(spec, positions.device)
    freqs = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype)[:, None, :], emb.sin().to(dtype)[:, None, :]


def swiglu(h: torch.Tensor, layer, gelu: bool = False) -> torch.Tensor:
    """The layer's dense SwiGLU MLP (or a mixture's shared expert): down(silu(gate h) * up h);
    ``gelu``: GELU (tanh approximation) in place of SiLU (Gemma's GeGLU)."""
    gate = h @ layer.gate.T
    gate = torch.nn.functional.gelu(gate, approximate="tanh") if gelu else torch.nn.functional.silu(gate)
    return (gate * (h @ layer.up.T)) @ layer.down.T


def experts_mlp(h: torch.Tensor, layer, spec: ModelSpec, backend: AttentionBackend | None = None) -> torch.Tensor:
    """A mixture of SwiGLU experts in place of the MLP: the router's top ``experts_per_token``
    (engine/experts.py), then the experts' work on ``backend`` (the torch reference by default),
    plus a shared expert where the model has one."""
    weights, chosen = route(h, layer.router, spec.experts_per_token, spec.norm_topk_prob, layer.router_bias)
    experts = backend.experts if backend is not None else experts_reference
    gpt_oss = dict(gate_up_bias=layer.expert_gate_up_bias, down_bias=layer.expert_down_bias,
                   limit=spec.swiglu_limit, alpha=spec.swiglu_alpha) if spec.expert_bias or spec.swiglu_limit else {}
    out = experts(h, weights, chosen, layer.expert_gate_up, layer.expert_down, **gpt_oss)
    if layer.shared_gate is not None:  # Qwen2-MoE's shared expert, scaled by its sigmoid gate
        out = out + torch.sigmoid(h @ layer.shared_gate.T) * swiglu(h, layer)
    return out


class LlamaModel:
    def __init__(self, spec: ModelSpec, weights: Weights, backend: AttentionBackend) -> None:
        if spec.head_dim % 2:
            raise ConfigError(f"model {spec.name!r}: head_dim must be even for RoPE")
        spec.check_engine_runs()
        if (spec.sliding_layers or spec.attention_sinks) and not backend.windows_and_sinks:
            raise ConfigError(f"model {spec.name!r}: sliding windows and attention sinks are not implemented by the "
                              f"{backend.name!r} attention backend; backend=torch runs them")
        if (spec.expert_bias or spec.swiglu_limit) and not backend.gpt_oss_experts:
            raise ConfigError(f"model {spec.name!r}: expert biases and the clamped SwiGLU (gpt-oss) are not "
                              f"implemented by the {backend.name!r} backend's experts; backend=torch runs them")
        if spec.gemma4 and spec.num_experts and not backend.gelu_experts:
            raise ConfigError(f"model {spec.name!r}: Gemma 4's GeGLU experts are not implemented by the "
                              f"{backend.name!r} backend's experts; backend=torch runs them")
        first = next(layer for layer in weights.layers if layer.linear is None)  # attention's, not DeltaNet's
        for present, wanted, what in ((first.q_bias is not None, spec.qkv_bias, "qkv_bias"),
                                      (first.o_bias is not None, spec.o_bias, "o_bias"),
                                      (first.sinks is not None, spec.attention_sinks, "attention_sinks"),
                                      (first.router_bias is not None, spec.expert_bias, "expert_bias"),
                                      (first.q_norm is not None, spec.qk_norm, "qk_norm"),
                                      (first.attn_out_norm is not None, spec.gemma, "gemma"),
                                      (first.layer_scalar is not None, spec.gemma4, "gemma4"),
                                      (first.router is not None, bool(spec.num_experts), "num_experts"),
                                      (first.shared_gate is not None,
                                       bool(spec.shared_expert_intermediate_size) and spec.shared_expert_gate,
                                       "shared_expert_intermediate_size")):
            if present != wanted:
                raise ConfigError(f"model {spec.name!r}: {what} is {getattr(spec, what)} but the weights "
                                  f"{'have' if present else 'lack'} {NOUNS.get(what, what.replace('num_', ''))}")
        if (first.router_scale is not None) != (spec.gemma4 and bool(spec.num_experts)):
            raise ConfigError(f"model {spec.name!r}: gemma4 is {spec.gemma4} with {spec.num_experts} experts but the "
                              f"weights {'have' if first.router_scale is not None else 'lack'} Gemma 4's mixture "
                              f"(router scales, experts beside a dense MLP)")
        self.spec = spec
        self.weights = weights
        self.backend = backend
        device = weights.embed.device
        self.inv_freq = proportional_inv_freq(spec, device) if spec.gemma4 else rope_inv_freq(spec, device)
        self.local_inv_freq = local_inv_freq(spec, device)
        # every norm, q/k too; Qwen3.5's and Qwen3-Next's are Gemma's (DeltaNet's gated output norm aside);
        # Gemma 4's multiply by w itself in fp32
        one_plus_w = spec.gemma or spec.zero_centered_norms
        self.norm = partial(backend.rms_norm, gemma=True, offset=0.0 if spec.gemma4 else 1.0) if one_plus_w \
            else backend.rms_norm
        # Gemma 4 normalises its values and its router's input without a weight: one of 1s a size
        sizes = {spec.head_dim, spec.layer_attention(True)[1], spec.hidden_size}
        self.ones = {n: torch.ones(n, dtype=weights.embed.dtype, device=device) for n in sizes} if spec.gemma4 else None
        self.sliding = set(spec.sliding_layers)
        self.linear_index = {layer: i for i, layer in enumerate(spec.linear_layers)}  # -> its state's index
        full = [i for i in range(spec.num_layers) if i not in self.linear_index]
        self.kv_index = {layer: i for i, layer in enumerate(full)}  # the KV cache holds attention layers only

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor, cache: PagedKVCache,
                meta: AttentionMetadata, logit_rows: torch.Tensor, timer: KernelTimer) -> torch.Tensor:
        """Logits of the rows ``logit_rows`` of the packed batch."""
        spec, w, backend, norm = self.spec, self.weights, self.backend, self.norm
        eps = spec.rms_norm_eps
        x = w.embed[tokens]
        if spec.gemma:  # Gemma scales its embeddings by sqrt(hidden), the factor rounded to their dtype
            x = x * torch.tensor(spec.hidden_size ** 0.5, dtype=x.dtype)
        rope = {False: (*rope_tables(spec, positions, x.dtype, self.inv_freq), self.inv_freq)}
        rope[True] = rope[False] if self.local_inv_freq is None else \
            (*rope_tables(spec, positions, x.dtype, self.local_inv_freq), self.local_inv_freq)
        for index, layer in enumerate(w.layers):
            with timer("norms"):
                h = norm(x, layer.input_norm, eps)
            if layer.linear is not None:
                x = x + linear_attention(h, layer.linear, spec, self.linear_index[index], meta.linear_states, eps,
                                         timer, backend.delta_step)
            else:
                rope_of = rope[index in self.sliding]
                x = x + self._attention(index, layer, h, positions, slots, cache, meta, rope_of, timer)
            with timer("norms"):
                h = norm(x, layer.post_norm, eps)
            if layer.router_scale is not None:  # Gemma 4's dense MLP and experts side by side
                out = self._gemma4_mixture(x, h, layer, timer)
            else:
                with timer("mlp"):
                    out = swiglu(h, layer, spec.gemma) if layer.router is None else experts_mlp(h, layer, spec, backend)
            if layer.mlp_out_norm is not None:
                with timer("norms"):
                    out = norm(out, layer.mlp_out_norm, eps)
            x = x + out
            if layer.layer_scalar is not None:  # Gemma 4: the layer's output (the residual stream) scaled
                x = x * layer.layer_scalar
        with timer("lm_head_sampling"):
            final = norm(x[logit_rows].contiguous(), w.norm, eps)
            logits = final @ w.lm_head.T
            cap = spec.final_logit_softcap
            return logits if not cap else torch.tanh(logits / cap) * cap

    def _gemma4_mixture(self, x, h, layer, timer) -> torch.Tensor:
        """Gemma 4 26B-A4B's MLP: its dense GeGLU on ``h`` (the layer's pre-MLP norm of ``x``) and its
        experts side by side, each output normalised, summed. The experts take ``x`` through a norm
        of their own; the router takes ``x`` RMS-normalised (no weight), times its scale and
        1 / sqrt(hidden): the top ``experts_per_token`` of its softmax, renormalised, each times its
        expert's own scale."""
        spec, norm, eps = self.spec, self.norm, self.spec.rms_norm_eps
        with timer("mlp"):
            dense = swiglu(h, layer, gelu=True)
        with timer("norms"):
            dense = norm(dense, layer.dense_out_norm, eps)
            routed = norm(x, self.ones[spec.hidden_size], eps) * layer.router_scale * spec.hidden_size ** -0.5
            into = norm(x, layer.experts_in_norm, eps)
        with timer("mlp"):
            weights, chosen = route(routed, layer.router, spec.experts_per_token, True)
            weights = weights * layer.expert_scale[chosen]
            experts = self.backend.experts(into, weights, chosen, layer.expert_gate_up, layer.expert_down, gelu=True)
        with timer("norms"):
            return dense + norm(experts, layer.experts_out_norm, eps)

    def _attention(self, index, layer, h, positions, slots, cache, meta, rope, timer) -> torch.Tensor:
        """Layer ``index``'s attention (its KV in the cache's layer ``kv_index[index]``), the
        output projection, and Gemma's norm on it."""
        spec, backend, norm, eps = self.spec, self.backend, self.norm, self.spec.rms_norm_eps
        count, kv_layer, full = h.shape[0], self.kv_index[index], index not in self.sliding
        heads, d = spec.layer_attention(full)  # Gemma 4's full layers have their own
        with timer("linear_qkv"):
            q, k = h @ layer.q.T, h @ layer.k.T
            v = k if layer.v is None else h @ layer.v.T  # keys serving as values (Gemma 4's full layers)
            if layer.q_bias is not None:
                q, k, v = q + layer.q_bias, k + layer.k_bias, v + layer.v_bias
            gate = None
            if spec.attn_output_gate:  # each head's queries, then its gate's
                q, gate = q.view(count, spec.num_heads, 2 * d).chunk(2, dim=-1)
                gate = gate.reshape(count, -1)
            q = q.reshape(count, spec.num_heads, d)
            k = k.view(count, heads, d)
            v = v.view(count, heads, d)
        if layer.q_norm is not None:
            with timer("norms"):
                q = norm(q.reshape(-1, d), layer.q_norm, eps).view(count, spec.num_heads, d)
                k = norm(k.reshape(-1, d), layer.k_norm, eps).view(count, heads, d)
                if self.ones is not None:  # Gemma 4: values normalised too
                    v = norm(v.reshape(-1, d), self.ones[d], eps).view(count, heads, d)
        with timer("rope_kv_store"):
            cos, sin, inv_freq = rope
            r = d if spec.gemma4 else spec.rotary_dim  # Gemma 4's frequencies span the head (some 0)
            if r == d:
                q, k = backend.rope(q, k, positions, cos, sin, inv_freq)
            else:  # RoPE over each head's first r dimensions, the rest passed through
                turned = backend.rope(q[..., :r].contiguous(), k[..., :r].contiguous(), positions, cos, sin, inv_freq)
                q, k = (torch.cat((a, b[..., r:]), dim=-1) for a, b in zip(turned, (q, k)))
            backend.store_kv(cache, kv_layer, slots, k, v)
        with timer("attention"):
            # YaRN scales queries and keys; Gemma 3 scales by its query_pre_attn_scalar, not head_dim (Gemma 4: 1)
            meta.scale = (spec.query_pre_attn_scalar or d) ** -0.5 * spec.rope_attention_factor ** 2
            window = spec.sliding_window if index in self.sliding else None
            extra = (window, layer.sinks) if window or layer.sinks is not None else ()  # gpt-oss, Mistral
            attn = backend.forward(kv_layer, q, cache, meta, *extra)
        with timer("linear_o"):
            attn = attn.reshape(count, -1)
            if gate is not None:
                attn = attn * torch.sigmoid(gate)
            out = attn @ layer.o.T
            out = out if layer.o_bias is None else out + layer.o_bias
        if layer.attn_out_norm is not None:  # Gemma: the attention's output normalised too
            with timer("norms"):
                out = norm(out, layer.attn_out_norm, eps)
        return out
