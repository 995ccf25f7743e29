"""The engine against Hugging Face's reference model, and scheduling that never changes tokens."""
import pytest
import torch

from engine.loop import run_engine
from engine.runner import ModelRunner
from engine.tokens import prompt_tokens
from engine.weights import random_weights
from scheduler import Request, WorkloadError, schedule_config
from scheduler.errors import ConfigError
from scheduler.model_spec import model_spec
from sim.cost_model import CostModel
from sim.profile import constant_profile
from sim.simulator import simulate
from traces.synthetic import batchllm_microbenchmark, prefix_tree_workload
from traces.workload import Workload

torch.set_num_threads(1)
SPEC = model_spec("tiny")


def hf_config(spec):
    """The Hugging Face config of ``spec``: Llama (RoPE default, llama3-scaled or YaRN), Qwen2
    with its q/k/v biases, Qwen2-MoE (biases and experts, a shared one), Qwen3 with its q/k
    norms, Qwen3-MoE (q/k norms and experts), Mixtral (experts without q/k norms), Mistral (a
    sliding window in every layer), gpt-oss (expert biases, sinks, alternating windows), Gemma 3 or
    Gemma 4 (dense, or with its experts beside the dense MLP)."""
    transformers = pytest.importorskip("transformers")
    rope = {"rope_type": "default", "rope_theta": spec.rope_theta}
    if spec.rope_yarn:
        rope.update(rope_type="yarn", factor=spec.rope_scaling_factor, beta_fast=spec.rope_beta_fast,
                    beta_slow=spec.rope_beta_slow, truncate=spec.rope_truncate,
                    original_max_position_embeddings=spec.rope_original_max_position)
    elif spec.rope_linear:
        rope.update(rope_type="linear", factor=spec.rope_scaling_factor)
    elif spec.rope_scaling_factor != 1.0:
        rope.update(rope_type="llama3", factor=spec.rope_scaling_factor, low_freq_factor=spec.rope_low_freq_factor,
                    high_freq_factor=spec.rope_high_freq_factor,
                    original_max_position_embeddings=spec.rope_original_max_position)
    common = dict(vocab_size=spec.vocab_size, hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
                  num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
                  num_key_value_heads=spec.num_kv_heads, rms_norm_eps=spec.rms_norm_eps, rope_parameters=rope,
                  max_position_embeddings=spec.max_position, tie_word_embeddings=spec.tie_embeddings)
    experts = dict(num_experts_per_tok=spec.experts_per_token)
    types = ["sliding_attention" if i in spec.sliding_layers else "full_attention" for i in range(spec.num_layers)]
    if spec.gemma4:  # RoPE per layer type: the full layers' proportional, the sliding ones' default
        proportional = {"rope_type": "proportional", "rope_theta": spec.rope_theta,
                        "partial_rotary_factor": spec.partial_rotary_factor}
        if spec.rope_linear:
            proportional["factor"] = spec.rope_scaling_factor
        local = {"rope_type": "default", "rope_theta": spec.rope_local_theta}
        kv, d = spec.layer_attention(True)
        return (transformers.Gemma4TextConfig(**{**common, "rope_parameters": {"full_attention": proportional,
                                                                               "sliding_attention": local}},
                                              head_dim=spec.head_dim, global_head_dim=d,
                                              num_global_key_value_heads=kv, attention_k_eq_v=spec.full_keys_as_values,
                                              sliding_window=spec.sliding_window, layer_types=types,
                                              final_logit_softcapping=spec.final_logit_softcap or None,
                                              hidden_size_per_layer_input=0, enable_moe_block=bool(spec.num_experts),
                                              num_experts=spec.num_experts or None,
                                              top_k_experts=spec.experts_per_token or None,
                                              moe_intermediate_size=spec.moe_intermediate_size or None),
                transformers.Gemma4ForCausalLM)
    if spec.gemma:  # RoPE per layer type: the full layers' (linearly scaled or not), the sliding ones' base
        local = {"rope_type": "default", "rope_theta": spec.rope_local_theta or spec.rope_theta}
        return (transformers.Gemma3TextConfig(**{**common, "rope_parameters": {"full_attention": rope,
                                                                               "sliding_attention": local}},
                                              head_dim=spec.head_dim, sliding_window=spec.sliding_window,
                                              layer_types=types, query_pre_attn_scalar=spec.query_pre_attn_scalar),
                transformers.Gemma3ForCausalLM)
    if spec.linear_layers:  # Qwen3.5 (dense) or Qwen3.5-MoE: Gated DeltaNet and gated attention, RoPE on part of a head
        types = ["linear_attention" if i in spec.linear_layers else "full_attention" for i in range(spec.num_layers)]
        linear = dict(layer_types=types, head_dim=spec.head_dim, linear_num_key_heads=spec.linear_key_heads,
                      linear_num_value_heads=spec.linear_value_heads, linear_key_head_dim=spec.linear_key_dim,
                      linear_value_head_dim=spec.linear_value_dim, linear_conv_kernel_dim=spec.linear_conv_kernel)
        rope = {**rope, "partial_rotary_factor": spec.partial_rotary_factor}
        if spec.num_experts:
            return (transformers.Qwen3_5MoeTextConfig(**{**common, "rope_parameters": rope}, **linear,
                                                      num_experts=spec.num_experts,
                                                      moe_intermediate_size=spec.moe_intermediate_size,
                                                      shared_expert_intermediate_size=spec.shared_expert_intermediate_size,
                                                      **experts), transformers.Qwen3_5MoeForCausalLM)
        return (transformers.Qwen3_5TextConfig(**{**common, "rope_parameters": rope}, **linear),
                transformers.Qwen3_5ForCausalLM)
    if spec.expert_bias:
        assert spec.qkv_bias and spec.o_bias and spec.attention_sinks and spec.norm_topk_prob
        return (transformers.GptOssConfig(**{**common, "intermediate_size": spec.moe_intermediate_size},
                                          head_dim=spec.head_dim, num_local_experts=spec.num_experts,
                                          sliding_window=spec.sliding_window, layer_types=types,
                                          swiglu_limit=spec.swiglu_limit, swiglu_alpha=spec.swiglu_alpha,
                                          attention_bias=True, **experts), transformers.GptOssForCausalLM)
    if spec.sliding_layers:
        assert len(spec.sliding_layers) == spec.num_layers and not spec.num_experts  # Mistral's way
        return (transformers.MistralConfig(**common, head_dim=spec.head_dim, sliding_window=spec.sliding_window),
                transformers.MistralForCausalLM)
    if spec.qkv_bias and spec.num_experts:
        return (transformers.Qwen2MoeConfig(**common, num_experts=spec.num_experts,
                                            moe_intermediate_size=spec.moe_intermediate_size,
                                            shared_expert_intermediate_size=spec.shared_expert_intermediate_size,
                                            norm_topk_prob=spec.norm_topk_prob, **experts),
                transformers.Qwen2MoeForCausalLM)
    if spec.qkv_bias:
        return transformers.Qwen2Config(**common), transformers.Qwen2ForCausalLM
    if spec.num_experts and spec.qk_norm:
        return (transformers.Qwen3MoeConfig(**common, head_dim=spec.head_dim, num_experts=spec.num_experts,
                                            moe_intermediate_size=spec.moe_intermediate_size,
                                            norm_topk_prob=spec.norm_topk_prob, **experts),
                transformers.Qwen3MoeForCausalLM)
    if spec.num_experts:
        assert spec.norm_topk_prob and spec.moe_intermediate_size == spec.intermediate_size  # Mixtral's way
        return (transformers.MixtralConfig(**common, head_dim=spec.head_dim, num_local_experts=spec.num_experts,
                                           **experts), transformers.MixtralForCausalLM)
    if spec.qk_norm:
        return transformers.Qwen3Config(**common, head_dim=spec.head_dim), transformers.Qwen3ForCausalLM
    return (transformers.LlamaConfig(**common, head_dim=spec.head_dim, attention_bias=False, mlp_bias=False),
            transformers.LlamaForCausalLM)


def hf_model(weights, spec=SPEC):
    config, model_class = hf_config(spec)
    model = model_class(config).eval()
    state = weights.hf_state_dict()
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    assert torch.equal(model.lm_head.weight, weights.lm_head)
    return model


def saved_checkpoint(spec, directory):
    """Seeded weights (seed 3) that transformers' save_pretrained writes into ``directory``, its
    config.json checked to read back as ``spec``; the weights."""
    import json

    from scheduler.model_spec import ModelSpec

    weights = random_weights(spec, seed=3)
    hf_model(weights, spec).save_pretrained(directory)
    assert spec.architecture_differences(ModelSpec.from_hf_config(json.loads((directory / "config.json").read_text()))) == []
    return weights


def shared_workload():
    # shared prefixes of different depths, a strict-prefix prompt, lengths not multiples of 16
    return prefix_tree_workload((2, 2), (37, 11), 9, 2, 6, shuffle=True, seed=3)


@pytest.mark.parametrize("schedule, chunk", [("fcfs", 16), ("prefix_grouped", 16), ("batchllm", 7), ("lpm", 512)])
def test_logits_match_huggingface_teacher_forced(schedule, chunk):
    assert teacher_forced_difference(SPEC, schedule, chunk) <= 1e-4


# Llama 3.1's scaled RoPE (an original context of 64 puts 7 of tiny's 8 frequencies in the scaled
# or blended band) and Qwen2's q/k/v biases, against transformers' own Llama and Qwen2 models
LLAMA31_LIKE = model_spec("tiny", rope_theta=500000.0, rope_scaling_factor=8.0, rope_original_max_position=64)
QWEN2_LIKE = model_spec("tiny", rope_theta=1000000.0, rms_norm_eps=1e-6, qkv_bias=True)


@pytest.mark.parametrize("spec", [LLAMA31_LIKE, QWEN2_LIKE], ids=["llama3-rope", "qwen2-bias"])
def test_real_architectures_match_huggingface(spec):
    from dataclasses import replace

    assert teacher_forced_difference(spec, "batchllm", 7) <= 1e-4
    # the test sees the feature: without it the engine is over ten times the tolerance away
    plain = replace(spec, rope_scaling_factor=1.0) if spec.rope_scaling_factor != 1.0 else None
    if plain is not None:
        assert teacher_forced_difference(spec, "batchllm", 7, engine_spec=plain) > 1e-3
    else:
        assert teacher_forced_difference(spec, "batchllm", 7, drop_bias=True) > 1e-3


def capture_logits(runner) -> dict[int, list[torch.Tensor]]:
    """Every logits row ``runner`` (made with ``keep_logits=True``) samples from, by request, as
    it runs: the dict it fills."""
    seen: dict[int, list[torch.Tensor]] = {}
    original = runner.execute

    def execute(plan):
        result = original(plan)
        for req_id, row in runner.last_logits.items():
            seen.setdefault(req_id, []).append(row)
        return result

    runner.execute = execute
    return seen


def teacher_forced_difference(spec, schedule, chunk, engine_spec=None, drop_bias=False, drop=None, loaded=None):
    """Largest difference between the engine's logits and Hugging Face's for the same weights,
    teacher-forced with the engine's own tokens. ``drop``: (spec field set False, the layer
    weights it removes) for an engine without that feature; ``loaded``: (the engine's weights,
    the transformers model they were read from) instead of seeded ones."""
    from dataclasses import replace

    weights = random_weights(spec, seed=1) if loaded is None else loaded[0]
    reference = hf_model(weights, spec) if loaded is None else loaded[1]
    if drop_bias:
        drop = ("qkv_bias", ("q_bias", "k_bias", "v_bias"))
    if drop is not None:
        field, removed = drop
        weights = replace(weights, layers=[replace(layer, **dict.fromkeys(removed)) for layer in weights.layers])
        engine_spec = replace(spec, **{field: False})
    engine_spec = engine_spec or spec
    workload = shared_workload()
    runner = ModelRunner(engine_spec, 128, 16, weights=weights, keep_logits=True)
    logits_seen = capture_logits(runner)
    outcome = run_engine(workload, schedule_config(schedule, max_num_batched_tokens=chunk), runner, 128, 16)
    stats = outcome.scheduler.stats
    assert stats.computed_prefill_tokens < stats.logical_prefill_tokens  # prefixes were shared
    steps = outcome.steps.all_steps()
    if chunk < 512:  # chunked prefill mixed with decodes (512 tokens take every prompt at once)
        assert ((steps["num_prefill_tokens"] > 0) & (steps["num_decode_tokens"] > 0)).any()
    worst = 0.0
    for request in workload.requests:
        generated = runner.outputs[request.req_id]
        ids = list(prompt_tokens(request.prompt, 0, request.prompt_len, spec.vocab_size)) + generated[:-1]
        with torch.no_grad():
            expected = reference(torch.tensor([ids])).logits[0, request.prompt_len - 1:]
        mine = torch.stack(logits_seen[request.req_id])
        assert mine.shape == expected.shape
        worst = max(worst, (mine - expected).abs().max().item())
    return worst


def tokens_of(workload, schedule, blocks=256, spec=SPEC, **overrides):
    runner = ModelRunner(spec, blocks, 16, weights=random_weights(spec, seed=2))
    outcome = run_engine(workload, schedule_config(schedule, **overrides), runner, blocks, 16)
    return {r: tuple(t) for r, t in runner.outputs.items()}, outcome


def test_scheduling_never_changes_greedy_tokens():
    workload = batchllm_microbenchmark(40, 13, 12, 3, 18, seed=4)
    baseline, _ = tokens_of(workload, "fcfs", max_num_batched_tokens=512)
    assert all(len(t) == 12 for t in baseline.values())
    for schedule in ("fcfs", "prefix_grouped", "decode_first", "batchllm", "lpm", "sorted", "blend", "priority"):
        for chunk in (16, 64, 512):
            for caching in ("lru", "off"):
                tokens, _ = tokens_of(workload, schedule, max_num_batched_tokens=chunk, caching=caching)
                assert tokens == baseline, (schedule, chunk, caching)
    # KV caches barely larger than one request: preemption (recompute of a request, or of a
    # group's prefix) must not change tokens
    tokens, outcome = tokens_of(workload, "fcfs", blocks=6, max_num_batched_tokens=64, caching="off")
    assert outcome.scheduler.stats.num_preemptions > 0 and tokens == baseline
    tokens, outcome = tokens_of(workload, "batchllm", blocks=5, max_num_batched_tokens=64)
    assert outcome.scheduler.stats.num_group_preemptions > 0 and tokens == baseline


@pytest.mark.parametrize("schedule", ["fcfs", "prefix_grouped", "decode_first", "batchllm", "lpm", "sorted", "blend",
                                      "priority", "sglang"])
def test_engine_executes_exactly_the_simulators_plans(schedule):
    workload = prefix_tree_workload((2, 3), (40, 20), 10, 2, 5, shuffle=True, seed=6)
    config = schedule_config(schedule, max_num_batched_tokens=48)
    simulated = []
    simulate(workload, config, CostModel(constant_profile(), model_spec("tiny", num_layers=1)), 40, 16,
             fast_forward=False, on_plan=lambda p: simulated.append(p.outline()))
    runner = ModelRunner(SPEC, 40, 16)
    outcome = run_engine(workload, config, runner, 40, 16, keep_plans=True)
    assert outcome.plans == simulated


def test_bad_input_fails_before_any_work(tmp_path):
    from engine.weights import load_safetensors
    from scheduler.errors import ConfigError

    with pytest.raises(WorkloadError, match=r"request 0: needs 3 KV blocks .* holds only 2"):
        tokens_of(Workload("big", (Request(0, 0.0, ((1, 40),), 2),)), "fcfs", blocks=2)
    with pytest.raises(ConfigError, match="no \\*.safetensors file"):
        load_safetensors(tmp_path, SPEC)
    from safetensors.torch import save_file
    state = {k: v.contiguous() for k, v in random_weights(model_spec("tiny", hidden_size=32), seed=0).hf_state_dict().items()
             if k != "lm_head.weight"}
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ConfigError, match=r"q_proj.weight has shape \(64, 32\); the model config expects \(64, 64\)"):
        load_safetensors(tmp_path, SPEC)
    (tmp_path / "model.safetensors.index.json").write_text('{"weight_map": {"x": "model-00002.safetensors"}}')
    with pytest.raises(ConfigError, match="missing model-00002.safetensors"):
        load_safetensors(tmp_path, SPEC)


def test_safetensors_round_trip(tmp_path):
    from engine.weights import load_safetensors
    from safetensors.torch import save_file

    weights = random_weights(SPEC, seed=5)
    save_file({k: v.contiguous() for k, v in weights.hf_state_dict().items() if k != "lm_head.weight"},
              str(tmp_path / "model.safetensors"))
    loaded = load_safetensors(tmp_path, SPEC)
    assert torch.equal(loaded.layers[1].down, weights.layers[1].down) and torch.equal(loaded.lm_head, weights.embed)


def test_gpu_kernel_timer_reads_cuda_events_once_the_step_is_done(monkeypatch):
    """On a GPU the timer records CUDA events around each region and never synchronises in
    between; ``times`` sums their intervals afterwards. Checked here with stand-in events."""
    from engine.model import KernelTimer

    clock = iter(range(100))
    recorded = []

    class Event:
        def __init__(self, enable_timing):
            assert enable_timing

        def record(self):
            self.at = next(clock)  # milliseconds on the stream
            recorded.append(self)

        def elapsed_time(self, end):
            return float(end.at - self.at)

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: pytest.fail("synchronised inside a step"))
    timer = KernelTimer(torch.device("cuda"))
    for name in ("mlp", "attention", "mlp"):
        with timer(name):
            next(clock)  # the region's kernels take one tick on the stream
    assert len(recorded) == 6
    times = timer.times
    assert times["mlp"] == pytest.approx(0.004) and times["attention"] == pytest.approx(0.002)
    assert timer.times["mlp"] == pytest.approx(0.004)  # read twice: counted once


# the published config.json of each model (Hugging Face hub), as far as the engine reads it
LLAMA_31_8B_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "hidden_act": "silu", "hidden_size": 4096,
    "intermediate_size": 14336, "max_position_embeddings": 131072, "mlp_bias": False, "model_type": "llama",
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": False, "vocab_size": 128256}
QWEN_25_7B_CONFIG = {
    "architectures": ["Qwen2ForCausalLM"], "hidden_act": "silu", "hidden_size": 3584, "intermediate_size": 18944,
    "max_position_embeddings": 131072, "model_type": "qwen2", "num_attention_heads": 28, "num_hidden_layers": 28,
    "num_key_value_heads": 4, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "tie_word_embeddings": False,
    "vocab_size": 152064}
LLAMA_2_7B_CONFIG = {
    "model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32,
    "num_hidden_layers": 32, "num_key_value_heads": 32, "rms_norm_eps": 1e-05, "rope_scaling": None,
    "vocab_size": 32000, "max_position_embeddings": 4096, "tie_word_embeddings": False}


@pytest.mark.parametrize("preset, config", [("llama-3.1-8b", LLAMA_31_8B_CONFIG), ("qwen2.5-7b", QWEN_25_7B_CONFIG),
                                            ("llama-2-7b", LLAMA_2_7B_CONFIG)])
def test_presets_are_the_published_checkpoints(preset, config):
    from scheduler.model_spec import ModelSpec

    checkpoint = ModelSpec.from_hf_config(config)
    assert model_spec(preset).architecture_differences(checkpoint) == []
    # transformers 5 writes the RoPE settings as rope_parameters, theta inside
    moved = {k: v for k, v in config.items() if k not in ("rope_scaling", "rope_theta")}
    moved["rope_parameters"] = {**(config.get("rope_scaling") or {}), "rope_theta": config.get("rope_theta", 10000.0)}
    assert ModelSpec.from_hf_config(moved) == checkpoint


@pytest.mark.parametrize("change, message", [
    ({"rope_scaling": {"rope_type": "longrope", "factor": 4.0}}, "RoPE type 'longrope'"),
    ({"attention_bias": True}, "attention_bias"),
    ({"model_type": "deepseek_v3"}, "model_type 'deepseek_v3'"),  # MLA: not implemented
    ({"model_type": "gpt_oss", "layer_types": ["sliding_attention"]}, "layer_types must list"),
])
def test_checkpoint_configs_the_engine_would_compute_differently_are_refused(change, message):
    from scheduler.model_spec import ModelSpec

    with pytest.raises(ConfigError, match=message):
        ModelSpec.from_hf_config({**LLAMA_31_8B_CONFIG, **change})


def test_weights_with_biases_round_trip_and_unknown_tensors_are_refused(tmp_path):
    from engine.weights import load_safetensors
    from safetensors.torch import save_file

    weights = random_weights(QWEN2_LIKE, seed=5)
    state = {k: v.contiguous() for k, v in weights.hf_state_dict().items() if k != "lm_head.weight"}
    save_file(state, str(tmp_path / "model.safetensors"))
    loaded = load_safetensors(tmp_path, QWEN2_LIKE)
    assert torch.equal(loaded.layers[1].k_bias, weights.layers[1].k_bias)
    with pytest.raises(ConfigError, match=r"does not use: model\.layers\.0\.self_attn\.k_proj\.bias"):
        load_safetensors(tmp_path, SPEC)  # the same checkpoint read as a model without biases
    with pytest.raises(ConfigError, match="tensor 'model.layers.0.self_attn.q_proj.bias' not found"):
        save_file({k: v for k, v in state.items() if "bias" not in k}, str(tmp_path / "model.safetensors"))
        load_safetensors(tmp_path, QWEN2_LIKE)


def test_run_refuses_a_checkpoint_of_another_architecture(tmp_path):
    import json

    from batchlab.run import check_checkpoint_config

    (tmp_path / "config.json").write_text(json.dumps(QWEN_25_7B_CONFIG))
    check_checkpoint_config(tmp_path, model_spec("qwen2.5-7b"))
    with pytest.raises(ConfigError, match=r"qkv_bias: False vs True.*model\.overrides"):
        check_checkpoint_config(tmp_path, model_spec("qwen2.5-7b", qkv_bias=False))
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_31_8B_CONFIG))
    with pytest.raises(ConfigError, match="rope_scaling_factor: 1.0 vs 8.0"):
        check_checkpoint_config(tmp_path, model_spec("llama-3.1-8b", rope_scaling_factor=1.0))
