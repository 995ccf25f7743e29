"""Gemma 3 (its text model): the engine against transformers' Gemma3ForCausalLM, the presets
against the published configs and the Gemma 3 technical report, and vLLM's hybrid KV cache
layout (pages of a group of layers, the sliding groups padded) against its own examples. (That
scheduling never changes its tokens: tests/test_gpt_oss.py, with gpt-oss's.)"""
from dataclasses import replace

import pytest
import torch

from engine.weights import load_safetensors
from scheduler.errors import ConfigError
from scheduler.model_spec import ModelSpec, WindowBlocks, model_spec
from test_engine import saved_checkpoint, teacher_forced_difference

torch.set_num_threads(1)
TINY = model_spec("tiny-gemma3")  # windows of 8 in layers 0 and 1, two RoPE bases, linear x8, query scalar 24


@pytest.mark.parametrize("engine_change", [
    None, {"sliding_layers": ()}, {"rope_local_theta": 0.0}, {"rope_linear": False, "rope_scaling_factor": 1.0},
    {"query_pre_attn_scalar": 0.0}], ids=["gemma3", "window", "local-rope", "linear-rope", "query-scalar"])
def test_the_engine_computes_what_transformers_does(engine_change):
    """Teacher-forced logits within 1e-4 of transformers' Gemma3ForCausalLM over a batchllm run
    with 7-token chunks and shared prefixes (the windows cut most prompts; chunks straddle them);
    without each of Gemma 3's features (its window, the sliding layers' own RoPE base, the full
    layers' linear scaling, the query scalar) the engine is far off."""
    if engine_change is None:
        assert teacher_forced_difference(TINY, "batchllm", 7) <= 1e-4
    else:
        assert teacher_forced_difference(TINY, "batchllm", 7, engine_spec=replace(TINY, **engine_change)) > 1e-3


def test_checkpoints_load_as_saved_and_as_released(tmp_path):
    """save_pretrained's checkpoint and config.json (transformers 5: RoPE per layer type) read
    back as the same model and weights; a multimodal checkpoint's text model (under
    ``language_model.model.``, as the 4B-27B are released) loads without its vision tower."""
    from safetensors.torch import load_file, save_file

    weights = saved_checkpoint(TINY, tmp_path / "saved")
    state = load_file(tmp_path / "saved" / "model.safetensors")
    released = {k.replace("model.", "language_model.model.", 1): v for k, v in state.items()}
    released["vision_tower.vision_model.embeddings.patch_embedding.weight"] = torch.ones(2, 2)
    released["multi_modal_projector.mm_input_projection_weight"] = torch.ones(2, 2)
    (tmp_path / "released").mkdir()
    save_file(released, tmp_path / "released" / "model.safetensors")
    for directory in ("saved", "released"):
        loaded = load_safetensors(tmp_path / directory, TINY)
        for mine, theirs in zip(weights.layers, loaded.layers):
            for field in ("q", "k_norm", "input_norm", "attn_out_norm", "post_norm", "mlp_out_norm", "gate", "down"):
                assert torch.equal(getattr(mine, field), getattr(theirs, field)), (directory, field)
        assert torch.equal(loaded.embed, weights.embed) and torch.equal(loaded.norm, weights.norm)
    # read as Llama's layer, its norms are misnamed: refused, not run
    with pytest.raises(ConfigError, match="does not use: model.layers.0.post_feedforward_layernorm"):
        load_safetensors(tmp_path / "saved", replace(TINY, gemma=False))


# google/gemma-3-27b-it's config.json (its text part; the multimodal config names only what
# differs from transformers' Gemma3TextConfig defaults) and google/gemma-3-1b-it's
GEMMA3_27B = {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3", "text_config": {
    "head_dim": 128, "hidden_size": 5376, "intermediate_size": 21504, "model_type": "gemma3_text",
    "num_attention_heads": 32, "num_hidden_layers": 62, "num_key_value_heads": 16, "query_pre_attn_scalar": 168,
    "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "sliding_window": 1024},
    "vision_config": {"model_type": "siglip_vision_model"}}
GEMMA3_1B = {"architectures": ["Gemma3ForCausalLM"], "attn_logit_softcapping": None, "final_logit_softcapping": None,
             "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 1152, "intermediate_size": 6912,
             "max_position_embeddings": 32768, "model_type": "gemma3_text", "num_attention_heads": 4,
             "num_hidden_layers": 26, "num_key_value_heads": 1, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06,
             "rope_local_base_freq": 10000, "rope_scaling": None, "rope_theta": 1000000, "sliding_window": 512,
             "sliding_window_pattern": 6, "vocab_size": 262144}


@pytest.mark.parametrize("preset, non_embedding", [
    # the Gemma 3 technical report (arXiv 2503.19786), Table 1: non-embedding parameters
    ("gemma-3-1b", 698e6), ("gemma-3-4b", 3209e6), ("gemma-3-12b", 10759e6), ("gemma-3-27b", 25600e6)])
def test_gemma3_presets_are_the_published_models(preset, non_embedding):
    spec = model_spec(preset)
    assert spec.num_params - spec.vocab_size * spec.hidden_size == pytest.approx(non_embedding, rel=0.001)
    assert len(spec.sliding_layers) == spec.num_layers - spec.num_layers // 6  # every sixth layer full
    if preset in ("gemma-3-1b", "gemma-3-27b"):
        published = ModelSpec.from_hf_config(GEMMA3_1B if preset == "gemma-3-1b" else GEMMA3_27B)
        assert spec.architecture_differences(published) == []
        assert published.vocab_size == spec.vocab_size and published.max_position == spec.max_position


@pytest.mark.parametrize("change, message", [
    ({"final_logit_softcapping": 30.0}, "final_logit_softcapping"),
    ({"attn_logit_softcapping": 50.0}, "attn_logit_softcapping"),
    ({"use_bidirectional_attention": True}, "use_bidirectional_attention"),
    ({"hidden_activation": "gelu"}, "hidden_activation"),
])
def test_gemma_configs_the_engine_would_compute_differently_are_refused(change, message):
    with pytest.raises(ConfigError, match=message):
        ModelSpec.from_hf_config({**GEMMA3_1B, **change})
    assert ModelSpec.from_hf_config({**GEMMA3_1B, **change}, costs_only=True).gemma  # simulated, it costs the same


@pytest.mark.parametrize("full, sliding, layout", [
    (18, 18, (18, 1, 1)),  # gpt-oss-120b
    (10, 20, (10, 1, 2)),  # vLLM's docstring example: three groups of ten
    (13, 12, (13, 1, 1)),  # vLLM's: gpt-oss-20b with an EAGLE layer, padded to 13 + 13, not 12 + 24
    (10, 52, (10, 1, 6)),  # gemma-3-27b: 52 sliding layers in six groups of ten, eight of them padding
    (24, 4, (4, 6, 1)),    # few sliding layers (Qwen2's max_window_layers): the full ones in groups of four
])
def test_kv_groups_follow_vllms_hybrid_layout(full, sliding, layout):
    """vLLM's hybrid KV manager groups each kind of layer by the fewer kind's count (or the more
    numerous one's where that is under 1.5 times it), padding a kind's last group; a page holds
    one group's layers for a block of tokens. A scheduler block here is the full groups' pages,
    and a running request holds its window's blocks in every sliding group."""
    spec = model_spec("tiny", num_layers=full + sliding, sliding_window=40, sliding_layers=tuple(range(sliding)))
    assert spec.kv_groups == layout
    size, full_groups, sliding_groups = layout
    assert spec.kv_bytes_per_token == spec.kv_bytes_every_layer // spec.num_layers * size * full_groups
    window = spec.window_blocks(16)
    assert window == (4, sliding_groups, full_groups)  # ceil(39 / 16) + 1 blocks a window can touch
    assert window.held(100) == -(-4 * sliding_groups // full_groups) and window.held(1) == -(-sliding_groups // full_groups)


def test_gemma3_27b_caches_ten_layers_a_token_and_390_window_blocks():
    from sim.hardware import window_blocks_note

    spec = model_spec("gemma-3-27b")
    assert spec.kv_bytes_every_layer == 62 * 2 * 16 * 128 * 2
    assert spec.kv_bytes_per_token == 10 * 2 * 16 * 128 * 2  # 80 KiB: the ten full layers
    assert spec.window_blocks(16) == (65, 6, 1)  # ceil(1023 / 16) + 1 in each of six sliding groups
    assert "holds up to 390 blocks for its sliding layers' last 1,024 tokens (65 in each of 6 groups of 10" \
        in window_blocks_note(spec, 16)
    assert window_blocks_note(model_spec("llama-3.1-8b"), 16) == ""
    assert window_blocks_note(replace(spec, sliding_kv_full=True), 16) == ""


def test_short_requests_hold_what_their_tokens_fill_in_every_sliding_group():
    from scheduler import Request, Scheduler, schedule_config

    scheduler = Scheduler(schedule_config("fcfs"), 40, 16, window_blocks=WindowBlocks(3, 2, 1))
    scheduler.add(Request(0, 0.0, ((0, 20),), 5))  # 24 tokens: 2 blocks, and 2 in each of 2 sliding groups
    scheduler.schedule(0.0)
    # its window: the pages of its full block (cached by it) and a reserve for the rest
    assert scheduler.pages.held_blocks(0) == 2 and len(scheduler.states[0].window_blocks) == 2
    assert scheduler.kv.num_free_blocks == 34


def test_a_window_in_a_prefix_running_requests_hold_is_shared():
    """vLLM shares a cached block in every group, the sliding ones too: a request whose window
    reaches back into a prefix another running request holds is charged only the rest of its
    window; one whose prefix hit nobody running holds (a cached, free block) pays it all."""
    from scheduler import Request, Scheduler, StepResult, schedule_config

    def admitted(scheduler, request, now):
        scheduler.add(request)
        plan = scheduler.schedule(now)
        scheduler.update(plan, StepResult(plan.step, 1.0), now)
        return scheduler.states[request.req_id]

    # a window of 4 blocks in each of 2 sliding groups; 96 shared tokens (6 blocks), 16 own, 4 out
    scheduler = Scheduler(schedule_config("fcfs", max_num_batched_tokens=512), 64, 16,
                          window_blocks=WindowBlocks(4, 2, 1))
    pages = scheduler.pages
    first = admitted(scheduler, Request(0, 0.0, ((7, 96), (8, 16)), 4), 0.0)
    # 115 tokens fill 8 blocks: a window of 4 in each group, the pages of its last 3 full
    # blocks and of the block it is in (the 4 before them freed, cached, as the window moved on)
    assert pages.held_blocks(0) == 3 * 2 and len(first.window_blocks) == 2
    second = admitted(scheduler, Request(1, 0.0, ((7, 96), (9, 16)), 4), 1.0)
    assert second.num_cached_tokens == 96  # the prefix hit, held by the first
    # the window pages of the hit's last 3 blocks are the first's; those of the 2 blocks its
    # own tokens fill are its own (the first has taken a block for its decode): 8 + 8 for the
    # first, 1 + 2 * 2 for the second
    assert pages.held_blocks(1) == 3 * 2 and scheduler.kv.num_used_blocks == 8 + 8 + 1 + 2 * 2
    while scheduler.has_unfinished:
        plan = scheduler.schedule(2.0)
        scheduler.update(plan, StepResult(plan.step, 1.0), 2.0)
    assert scheduler.kv.num_used_blocks == 0
    third = admitted(scheduler, Request(2, 0.0, ((7, 96), (10, 16)), 4), 3.0)
    assert third.num_cached_tokens == 96  # a hit on free cached blocks: all of its window paid
    # its whole window, no more: the hit's 3 sets (6 blocks, taken from the cache) and 1 set reserved
    assert pages.held_blocks(2) + len(third.window_blocks) == 8 and scheduler.kv.num_used_blocks == 6 + 1 + 4 * 2
