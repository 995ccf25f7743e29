"""A Gated DeltaNet layer's weights (Qwen3-Next, Qwen3.5): seeded random, from a checkpoint in
either model's layout, and under transformers' names."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from scheduler.model_spec import ModelSpec


@dataclass
class LinearWeights:
    qkv: torch.Tensor      # [2 keys + values, hidden]: every head's queries, then keys, then values
    z: torch.Tensor        # [values, hidden]: the output norm's gate
    b: torch.Tensor        # [value heads, hidden]: beta = sigmoid(b h)
    a: torch.Tensor        # [value heads, hidden]: the decay, g = -exp(A_log) softplus(a h + dt_bias)
    conv: torch.Tensor     # [2 keys + values, kernel]: the causal depthwise convolution over qkv
    dt_bias: torch.Tensor  # [value heads]
    a_log: torch.Tensor    # [value heads]
    norm: torch.Tensor     # [value head dim]: the gated output norm's weight (plain, not 1 + w)
    out: torch.Tensor      # [hidden, values]


def sizes(spec: ModelSpec) -> tuple[int, int, int]:
    """(keys, values, value heads): widths of all heads' keys and values, and the value heads."""
    return (spec.linear_key_heads * spec.linear_key_dim, spec.linear_value_heads * spec.linear_value_dim,
            spec.linear_value_heads)


def shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    keys, values, heads = sizes(spec)
    h = spec.hidden_size
    return {"qkv": (2 * keys + values, h), "z": (values, h), "b": (heads, h), "a": (heads, h),
            "conv": (2 * keys + values, spec.linear_conv_kernel), "dt_bias": (heads,), "a_log": (heads,),
            "norm": (spec.linear_value_dim,), "out": (h, values)}


def random_linear(spec: ModelSpec, generator: torch.Generator, dtype, device) -> LinearWeights:
    """Projections large enough that every part shows in the logits; decays between 0.5 % and 50 %
    a token (A in [0.01, 1)), so that a state carries far, and a gate, beta and decay that vary."""
    def draw(*shape, uniform=False):  # where the generator lives (random_weights: on a GPU there)
        return (torch.rand if uniform else torch.randn)(*shape, generator=generator, device=generator.device)

    def normal(*shape, std):
        return (draw(*shape) * std).to(dtype=dtype, device=device)
    table = shapes(spec)
    tensors = {name: normal(*table[name], std=0.125) for name in ("qkv", "z", "b", "a", "out")}
    a = 0.01 + 0.99 * draw(table["a_log"], uniform=True)
    return LinearWeights(**tensors, conv=normal(*table["conv"], std=0.5), dt_bias=normal(*table["dt_bias"], std=0.5),
                         a_log=a.log().to(dtype=dtype, device=device),
                         norm=(1.0 + 0.1 * draw(table["norm"])).to(dtype=dtype, device=device))


# transformers' names under "linear_attn." (Qwen3.5's; Qwen3-Next fuses qkv with z and b with a)
NAMES = {"qkv": "in_proj_qkv.weight", "z": "in_proj_z.weight", "b": "in_proj_b.weight", "a": "in_proj_a.weight",
         "dt_bias": "dt_bias", "a_log": "A_log", "norm": "norm.weight", "out": "out_proj.weight"}


def hf_linear_state(weights: LinearWeights, prefix: str) -> dict[str, torch.Tensor]:
    p = prefix + "linear_attn."
    state = {p + hf: getattr(weights, field) for field, hf in NAMES.items()}
    state[p + "conv1d.weight"] = weights.conv[:, None, :]
    return state


def load_linear(prefix: str, spec: ModelSpec, take, tensors: dict) -> LinearWeights:
    """One layer's DeltaNet from a checkpoint: Qwen3.5's separate projections, or Qwen3-Next's
    fused ones (per key head: its query, key, values and gates; then its betas and decay inputs),
    split into Qwen3.5's layout."""
    p = prefix + "linear_attn."
    table = shapes(spec)
    fields = {field: take(p + hf, table[field]) for field, hf in NAMES.items()
              if field not in ("qkv", "z", "b", "a") or p + "in_proj_qkvz.weight" not in tensors}
    if p + "in_proj_qkvz.weight" in tensors:
        heads, dk, dv = spec.linear_key_heads, spec.linear_key_dim, spec.linear_value_dim
        per = spec.linear_value_heads // heads  # value heads a key head serves
        h = spec.hidden_size
        qkvz = take(p + "in_proj_qkvz.weight", (heads * (2 * dk + 2 * per * dv), h)).view(heads, -1, h)
        q, k, v, z = qkvz.split((dk, dk, per * dv, per * dv), dim=1)
        b, a = take(p + "in_proj_ba.weight", (heads * 2 * per, h)).view(heads, 2 * per, h).split((per, per), dim=1)
        flat = lambda x: x.reshape(-1, h)  # noqa: E731  (heads in order, each key head's value heads together)
        fields.update(qkv=torch.cat((flat(q), flat(k), flat(v))), z=flat(z), b=flat(b), a=flat(a))
    kernel = spec.linear_conv_kernel
    fields["conv"] = take(p + "conv1d.weight", (table["conv"][0], 1, kernel))[:, 0, :]
    return LinearWeights(**{name: tensor.contiguous() for name, tensor in fields.items()})
