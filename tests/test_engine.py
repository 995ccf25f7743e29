"""The engine against Hugging Face's reference model, and scheduling that never changes tokens."""
import pytest
import torch

from engine.loop import run_engine
from engine.runner import ModelRunner
from engine.tokens import prompt_tokens
from engine.weights import random_weights
from scheduler import Request, WorkloadError, schedule_config
from scheduler.model_spec import model_spec
from sim.cost_model import CostModel
from sim.profile import constant_profile
from sim.simulator import simulate
from traces.synthetic import batchllm_microbenchmark, prefix_tree_workload
from traces.workload import Workload

torch.set_num_threads(1)
SPEC = model_spec("tiny")


def hf_model(weights):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=SPEC.vocab_size, hidden_size=SPEC.hidden_size, intermediate_size=SPEC.intermediate_size,
        num_hidden_layers=SPEC.num_layers, num_attention_heads=SPEC.num_heads,
        num_key_value_heads=SPEC.num_kv_heads, head_dim=SPEC.head_dim, rms_norm_eps=SPEC.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": SPEC.rope_theta},
        max_position_embeddings=SPEC.max_position, tie_word_embeddings=SPEC.tie_embeddings,
        attention_bias=False, mlp_bias=False)
    model = transformers.LlamaForCausalLM(config).eval()
    state = weights.hf_state_dict()
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    assert torch.equal(model.lm_head.weight, weights.lm_head)
    return model


def shared_workload():
    # shared prefixes of different depths, a strict-prefix prompt, lengths not multiples of 16
    return prefix_tree_workload((2, 2), (37, 11), 9, 2, 6, shuffle=True, seed=3)


@pytest.mark.parametrize("schedule, chunk", [("fcfs", 16), ("prefix_grouped", 16), ("batchllm", 7), ("lpm", 512)])
def test_logits_match_huggingface_teacher_forced(schedule, chunk):
    weights = random_weights(SPEC, seed=1)
    reference = hf_model(weights)
    workload = shared_workload()
    runner = ModelRunner(SPEC, 128, 16, weights=weights, keep_logits=True)
    logits_seen: dict[int, list[torch.Tensor]] = {}
    original = runner.execute

    def execute(plan):
        result = original(plan)
        for req_id, row in runner.last_logits.items():
            logits_seen.setdefault(req_id, []).append(row)
        return result

    runner.execute = execute
    outcome = run_engine(workload, schedule_config(schedule, max_num_batched_tokens=chunk), runner, 128, 16)
    stats = outcome.scheduler.stats
    assert stats.computed_prefill_tokens < stats.logical_prefill_tokens  # prefixes were shared
    steps = outcome.steps.all_steps()
    if chunk < 512:  # chunked prefill mixed with decodes (512 tokens take every prompt at once)
        assert ((steps["num_prefill_tokens"] > 0) & (steps["num_decode_tokens"] > 0)).any()
    worst = 0.0
    for request in workload.requests:
        generated = runner.outputs[request.req_id]
        ids = list(prompt_tokens(request.prompt, 0, request.prompt_len, SPEC.vocab_size)) + generated[:-1]
        with torch.no_grad():
            expected = reference(torch.tensor([ids])).logits[0, request.prompt_len - 1:]
        mine = torch.stack(logits_seen[request.req_id])
        assert mine.shape == expected.shape
        worst = max(worst, (mine - expected).abs().max().item())
    assert worst <= 1e-4, worst


def tokens_of(workload, schedule, blocks=256, **overrides):
    runner = ModelRunner(SPEC, blocks, 16, weights=random_weights(SPEC, seed=2))
    outcome = run_engine(workload, schedule_config(schedule, **overrides), runner, blocks, 16)
    return {r: tuple(t) for r, t in runner.outputs.items()}, outcome


def test_scheduling_never_changes_greedy_tokens():
    workload = batchllm_microbenchmark(40, 13, 12, 3, 18, seed=4)
    baseline, _ = tokens_of(workload, "fcfs", max_num_batched_tokens=512)
    assert all(len(t) == 12 for t in baseline.values())
    for schedule in ("fcfs", "prefix_grouped", "decode_first", "batchllm", "lpm"):
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


@pytest.mark.parametrize("schedule", ["fcfs", "prefix_grouped", "decode_first", "batchllm", "lpm"])
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
