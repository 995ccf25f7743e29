"""Gemma 4 in the engine (31B's layer and 26B-A4B's, tiny): against transformers' own
Gemma4ForCausalLM, its checkpoints as saved and as released, and scheduling that never changes
its tokens. (The presets, their costs and vLLM's pages for them: tests/test_gemma4.py.)"""
from dataclasses import replace

import pytest
import torch

from engine.weights import load_safetensors
from scheduler.errors import ConfigError
from scheduler.model_spec import ModelSpec, model_spec
from test_engine import saved_checkpoint, teacher_forced_difference, tokens_of
from test_gemma4 import GEMMA4_26B, GEMMA4_31B

torch.set_num_threads(1)
# windows of 8 in layers 0 and 1; layer 2 full: one kv head of 32 (the sliding ones: four of 16)
# whose keys serve as values, RoPE on a quarter of its angles; logits soft-capped at 5
TINY = model_spec("tiny-gemma4")
TINY_MOE = model_spec("tiny-gemma4-moe")  # and 2 of 4 experts beside the dense MLP in every layer


def _gemma4_available():
    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, "Gemma4ForCausalLM"):
        pytest.skip("transformers without Gemma 4")


@pytest.mark.parametrize("spec, engine_change", [
    (TINY, None), (TINY_MOE, None), (TINY, {"final_logit_softcap": 0.0}), (TINY, {"partial_rotary_factor": 1.0}),
    (TINY, {"rope_local_theta": 1e6}), (TINY, {"query_pre_attn_scalar": 0.0}), (TINY, {"sliding_window": 4096})],
    ids=["gemma4", "gemma4-moe", "softcap", "proportional-rope", "local-rope", "unscaled-softmax", "window"])
def test_the_engine_computes_what_transformers_does(spec, engine_change):
    """Teacher-forced logits within 1e-4 of transformers' Gemma4ForCausalLM over a batchllm run
    with 7-token chunks and shared prefixes (the windows cut most prompts; chunks straddle them);
    without each of Gemma 4's features (the soft cap, the full layers' proportional RoPE, the
    sliding layers' own base, the softmax's scale of 1, the window) the engine is far off."""
    _gemma4_available()
    if engine_change is None:
        assert teacher_forced_difference(spec, "batchllm", 7) <= 1e-4
    else:
        assert teacher_forced_difference(spec, "batchllm", 7, engine_spec=replace(spec, **engine_change)) > 1e-3


@pytest.mark.parametrize("field, value", [("layer_scalar", torch.ones_like), ("expert_scale", torch.ones_like),
                                          ("experts_out_norm", torch.ones_like)])
def test_each_of_its_weights_counts(field, value):
    """The engine without one of Gemma 4's own weights (each layer's scalar, each expert's scale,
    the norm on the experts' output: set to 1, as transformers initialises them) is far off."""
    from engine.weights import random_weights

    _gemma4_available()
    from test_engine import hf_model

    weights = random_weights(TINY_MOE, seed=1)
    altered = replace(weights, layers=[replace(layer, **{field: value(getattr(layer, field))})
                                       for layer in weights.layers])
    assert teacher_forced_difference(TINY_MOE, "batchllm", 7, loaded=(altered, hf_model(weights, TINY_MOE))) > 1e-3


def test_checkpoints_load_as_saved_and_as_released(tmp_path):
    """save_pretrained's checkpoint and config.json (transformers 5 writes the full layers' shape
    as a per_layer_config) read back as the same model and weights, and the engine on them
    computes what transformers' from_pretrained does; a multimodal checkpoint's text model
    (under ``model.language_model.``, as Gemma 4 is released) loads without its vision and
    audio parts; keys read as values need no v_proj, and one there is refused."""
    _gemma4_available()
    import transformers
    from safetensors.torch import load_file, save_file

    weights = saved_checkpoint(TINY_MOE, tmp_path / "saved")
    state = load_file(tmp_path / "saved" / "model.safetensors")
    assert "model.layers.2.self_attn.v_proj.weight" not in state and "model.layers.1.self_attn.v_proj.weight" in state
    released = {k.replace("model.", "model.language_model.", 1): v for k, v in state.items()}
    for part in ("vision_tower.encoder.layers.0.mlp.fc1.weight", "embed_vision.embedding_projection.weight",
                 "audio_tower.layers.0.fc.weight", "embed_audio.embedding_projection.weight"):
        released["model." + part] = torch.ones(2, 2)
    (tmp_path / "released").mkdir()
    save_file(released, tmp_path / "released" / "model.safetensors")
    for directory in ("saved", "released"):
        loaded = load_safetensors(tmp_path / directory, TINY_MOE)
        for mine, theirs in zip(weights.layers, loaded.layers):
            for field in ("q", "k", "v", "layer_scalar", "router", "router_scale", "expert_scale", "expert_gate_up",
                          "dense_out_norm", "experts_in_norm", "experts_out_norm", "mlp_out_norm"):
                a, b = getattr(mine, field), getattr(theirs, field)
                assert (a is None and b is None) or torch.equal(a, b), (directory, field)
    reference = transformers.Gemma4ForCausalLM.from_pretrained(tmp_path / "saved").eval()
    assert teacher_forced_difference(TINY_MOE, "batchllm", 7, loaded=(loaded, reference)) <= 1e-4
    state["model.layers.2.self_attn.v_proj.weight"] = torch.ones(32, 64)
    save_file(state, tmp_path / "saved" / "model.safetensors")
    with pytest.raises(ConfigError, match="does not use: model.layers.2.self_attn.v_proj.weight"):
        load_safetensors(tmp_path / "saved", TINY_MOE)


@pytest.mark.parametrize("preset", ["tiny-gemma4", "tiny-gemma4-moe"])
def test_scheduling_never_changes_its_tokens(preset):
    """The same greedy tokens whatever the schedule, the chunk size and prefix caching, with
    full layers and sliding ones of different shapes in the paged cache; and under preemption
    (a cache of 22 blocks, 8 of each running request's for its windows: requests recomputed)."""
    from traces.synthetic import batchllm_microbenchmark

    spec = model_spec(preset)
    workload = batchllm_microbenchmark(24, 13, 10, 3, 18, seed=4)
    baseline, _ = tokens_of(workload, "fcfs", spec=spec, max_num_batched_tokens=512)
    assert all(len(t) == 10 for t in baseline.values())
    for schedule, chunk, caching in (("batchllm", 16, "lru"), ("prefix_grouped", 5, "lru"),
                                     ("decode_first", 7, "off")):
        tokens = tokens_of(workload, schedule, spec=spec, max_num_batched_tokens=chunk, caching=caching)[0]
        assert tokens == baseline, schedule
    longer = batchllm_microbenchmark(12, 13, 40, 3, 18, seed=4)  # outputs that outgrow the cache
    baseline, _ = tokens_of(longer, "fcfs", spec=spec, max_num_batched_tokens=512)
    tokens, outcome = tokens_of(longer, "fcfs", blocks=22, spec=spec, max_num_batched_tokens=64, caching="off")
    assert outcome.scheduler.stats.num_preemptions > 0 and tokens == baseline


def test_the_released_configs_run_in_the_engine():
    """The published 31B and 26B-A4B configs parse for the engine as the presets (softmax scale 1,
    logits capped at 30); transformers' per_layer_config reads as the released names; the
    E2B/E4B layout, bidirectional attention, a per_layer_config that gives the full layers
    different shapes, weights without Gemma 4's mixture, and the 26B-A4B's GeGLU experts on a
    backend without them are refused."""
    from engine.model import LlamaModel
    from engine.weights import random_weights
    from engine.attention import TorchAttentionBackend

    for preset, published in (("gemma-4-31b", GEMMA4_31B), ("gemma-4-26b-a4b", GEMMA4_26B)):
        spec = ModelSpec.from_hf_config(published)
        assert spec.architecture_differences(model_spec(preset)) == [] and spec.final_logit_softcap == 30.0
        spec.check_engine_runs()
    text = {**GEMMA4_31B["text_config"], "num_hidden_layers": 12, "layer_types": GEMMA4_31B["text_config"][
        "layer_types"][:12]}
    del text["global_head_dim"], text["num_global_key_value_heads"]
    saved = {**text, "per_layer_config": {"5": {"head_dim": 512, "num_key_value_heads": 4},
                                          "11": {"head_dim": 512, "num_key_value_heads": 4}}}
    assert ModelSpec.from_hf_config(saved).layer_attention(True) == (4, 512)
    with pytest.raises(ConfigError, match="per_layer_config must give every full-attention layer"):
        ModelSpec.from_hf_config({**saved, "per_layer_config": {"5": {"head_dim": 512}, "11": {"head_dim": 256}}})
    with pytest.raises(ConfigError, match="use_bidirectional_attention 'all': not implemented by the engine"):
        ModelSpec.from_hf_config({**GEMMA4_31B["text_config"], "use_bidirectional_attention": "all"})

    weights = random_weights(TINY_MOE)
    plain = replace(weights, layers=[replace(layer, router_scale=None) for layer in weights.layers])
    with pytest.raises(ConfigError, match="gemma4 is True with 4 experts but the weights lack Gemma 4's mixture"):
        LlamaModel(TINY_MOE, plain, TorchAttentionBackend())

    class SwiGLUOnly(TorchAttentionBackend):
        name, gelu_experts = "swiglu-only", False
    with pytest.raises(ConfigError, match="Gemma 4's GeGLU experts are not implemented by the 'swiglu-only'"):
        LlamaModel(TINY_MOE, random_weights(TINY_MOE), SwiGLUOnly())
