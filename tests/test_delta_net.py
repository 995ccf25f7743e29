"""Gated DeltaNet in the engine (Qwen3.5, Qwen3-Next): the chunked delta rule against
transformers' token-by-token recurrence, the engine against transformers' Qwen3_5ForCausalLM,
and scheduling (prefix hits, groups, chunks, preemption) that never changes its tokens, though
a request that starts at a shared prefix starts from a state kept for a block."""
import json
from dataclasses import replace

import pytest
import torch

from engine.delta_net import delta_rule_chunk, delta_rule_step, l2_normalise
from engine.weights import load_safetensors, random_weights
from scheduler.model_spec import ModelSpec, model_spec
from test_engine import saved_checkpoint, teacher_forced_difference, tokens_of

torch.set_num_threads(1)
TINY = model_spec("tiny-qwen3.5")  # DeltaNet in layers 0-2, gated attention with RoPE on 8 of 32 dims in 3


def test_the_chunked_delta_rule_is_the_recurrence():
    """``delta_rule_chunk`` (blocks of 64 solved as one triangular system) against transformers'
    token-by-token reference, from a non-zero state, 150 tokens (not a multiple of 64), grouped
    value heads; the states it hands out at cuts are the recurrence's at those tokens; the
    one-token step for a batch is the same recurrence."""
    recurrent = pytest.importorskip("transformers.models.qwen3_5.modeling_qwen3_5").torch_recurrent_gated_delta_rule
    generator = torch.Generator().manual_seed(0)
    n, heads, dk, dv = 150, 3, 16, 8
    q, k = torch.randn(n, heads, dk, generator=generator), torch.randn(n, heads, dk, generator=generator)
    v = torch.randn(n, heads, dv, generator=generator)
    g, beta = -2 * torch.rand(n, heads, generator=generator), torch.rand(n, heads, generator=generator)
    start = 0.1 * torch.randn(heads, dk, dv, generator=generator)

    def reference(upto):
        return recurrent(q[None, :upto], k[None, :upto], v[None, :upto], g[None, :upto], beta[None, :upto],
                         initial_state=start[None], output_final_state=True, use_qk_l2norm_in_kernel=True)
    expected, final = reference(n)
    qn, kn = l2_normalise(q) * dk ** -0.5, l2_normalise(k)
    out, state, saved = delta_rule_chunk(qn, kn, v, g, beta, start, cuts=(37, 64, 100))
    assert (out - expected[0]).abs().max() < 1e-5 and (state - final[0]).abs().max() < 1e-5
    for cut, kept in zip((37, 64, 100), saved):
        assert (kept - reference(cut)[1][0]).abs().max() < 1e-5
    # two requests from the same state, each its own first token: the first is the recurrence's
    one, after = delta_rule_step(qn[:2], kn[:2], v[:2], g[:2], beta[:2], start.expand(2, -1, -1, -1))
    assert (one[0] - expected[0, 0]).abs().max() < 1e-6 and (after[0] - reference(1)[1][0]).abs().max() < 1e-6
    assert (one[1] - expected[0, 0]).abs().max() > 1e-2  # the second's token differs, so does its output


MOE = replace(TINY, num_experts=8, experts_per_token=2, moe_intermediate_size=24, shared_expert_intermediate_size=40)


@pytest.mark.parametrize("spec, engine_change", [
    (TINY, None), (TINY, {"partial_rotary_factor": 1.0}), (TINY, {"zero_centered_norms": False}),
    (MOE, None), (MOE, {"norm_topk_prob": False})],
    ids=["qwen3.5", "full-rope", "plain-norms", "moe", "moe-unnormalised"])
def test_the_engine_computes_what_transformers_does(spec, engine_change):
    """Teacher-forced logits against transformers' Qwen3_5ForCausalLM (and Qwen3_5MoeForCausalLM:
    experts and a gated shared expert) with the same weights, over a batchllm run with 7-token
    chunks and shared prefixes (a group starts from the state kept for its prefix's last block).
    Within 3e-4 (measured 1.2e-4 and 2.6e-5; logits reach 26, and the engine's own fp32 run
    differs from its fp64 run by 8e-5: transformers' DeltaNet runs in fp32 whatever the model's
    dtype); RoPE over whole heads, Llama's norms or unrenormalised routing put it far off."""
    if engine_change is None:
        assert teacher_forced_difference(spec, "batchllm", 7) <= 3e-4
    else:
        assert teacher_forced_difference(spec, "batchllm", 7, engine_spec=replace(spec, **engine_change)) > 1e-2


def test_qwen35_moe_configs_read_as_transformers_runs_them():
    """transformers' default Qwen3_5MoeTextConfig (Qwen3.5-35B-A3B's, its docstring says) names
    no dense width and no norm_topk_prob: it reads (the experts' width stands in), as the preset
    (with the released RoPE base), and its router renormalises the top k, as transformers' always
    does; Qwen3-Next's renormalises unless its config says otherwise."""
    transformers = pytest.importorskip("transformers")
    config = transformers.Qwen3_5MoeTextConfig().to_dict()
    assert "intermediate_size" not in config and "norm_topk_prob" not in config
    config["rope_parameters"] = {**config["rope_parameters"], "rope_theta": 1e7}
    spec = ModelSpec.from_hf_config(config)
    assert spec.norm_topk_prob and spec.architecture_differences(model_spec("qwen3.5-35b-a3b")) == []
    nxt = transformers.Qwen3NextConfig().to_dict()
    assert ModelSpec.from_hf_config(nxt).norm_topk_prob and nxt["norm_topk_prob"]
    assert not ModelSpec.from_hf_config({**nxt, "norm_topk_prob": False}).norm_topk_prob
    del nxt["norm_topk_prob"]
    assert ModelSpec.from_hf_config(nxt).norm_topk_prob


def test_scheduling_never_changes_its_tokens():
    """The same greedy tokens under every schedule and chunk size, and with too few blocks for
    the batch (preempted requests start again from a hit's state or from nothing); prefixes were
    shared, and requests started from states kept for blocks."""
    from traces.synthetic import batchllm_microbenchmark

    from engine.linear_state import LinearStates

    workload = batchllm_microbenchmark(40, 13, 10, 3, 18, seed=4)
    baseline, outcome = tokens_of(workload, "fcfs", spec=TINY, max_num_batched_tokens=512, caching="off")
    assert all(len(t) == 10 for t in baseline.values())
    starts = []
    original = LinearStates.finish

    def counting(self, steps, done):  # how many chunks started from a block's state, per run
        original(self, steps, done)
        starts[-1] = self.block_starts
    LinearStates.finish = counting
    try:
        # fcfs and lpm in 16 blocks keep every state snapshot (vLLM 0.28): with only those at
        # prompts' ends and junctions (0.29) their hits on this batch are lost
        runs = (("batchllm", 16, 256, 0), ("prefix_grouped", 5, 256, 0), ("decode_first", 7, 256, 0),
                ("lpm", 512, 256, 0), ("fcfs", 16, 16, None), ("lpm", 16, 16, None), ("prefix_grouped", 16, 13, 0))
        for schedule, chunk, blocks, retention in runs:
            starts.append(0)
            tokens, outcome = tokens_of(workload, schedule, blocks, spec=TINY, max_num_batched_tokens=chunk,
                                        retention_interval=retention)
            assert tokens == baseline, (schedule, chunk, blocks)
            stats = outcome.scheduler.stats
            assert starts[-1] > 0, schedule
            if blocks < 20:  # preempted requests computed again, from their hits
                assert stats.num_preemptions > 0, schedule
            else:
                assert stats.computed_prefill_tokens < stats.logical_prefill_tokens, schedule  # prefixes were shared
    finally:
        LinearStates.finish = original


def test_a_request_without_a_state_to_start_from_is_refused():
    """A request that would start past a block whose state was not kept is an error, not a
    silent start from zeros (the test drops every kept state after each step)."""
    from engine.linear_state import LinearStates
    from traces.synthetic import batchllm_microbenchmark

    original = LinearStates.finish

    def forgetful(self, steps, done):
        original(self, steps, done)
        self.blocks.clear()
    LinearStates.finish = forgetful
    try:
        with pytest.raises(AssertionError, match="no linear-attention state there"):
            tokens_of(batchllm_microbenchmark(40, 13, 10, 3, 18, seed=4), "batchllm", spec=TINY,
                      max_num_batched_tokens=16)
    finally:
        LinearStates.finish = original


def test_qwen3_next_checkpoints_run_as_transformers_does(tmp_path):
    """Qwen3-Next's layout (each key head's query, key, values and gates fused in one projection,
    its betas and decay inputs in another; experts and a gated shared expert) read from
    save_pretrained's checkpoint of transformers' own Qwen3NextForCausalLM, its weights drawn at
    scales where every part shows: the engine's teacher-forced logits match that model's."""
    transformers = pytest.importorskip("transformers")
    config = transformers.Qwen3NextConfig(
        vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16,
        linear_value_head_dim=8, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=24,
        shared_expert_intermediate_size=40, max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "partial_rotary_factor": 0.25})
    torch.manual_seed(0)
    model = transformers.Qwen3NextForCausalLM(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "A_log" not in name:  # its own decays kept
                big = "embed" in name or "lm_head" in name or name.endswith("mlp.gate.weight")
                parameter.normal_(0, 0.5 if big else 0.15 if parameter.dim() > 1 else 0.1)
    model.save_pretrained(tmp_path)
    spec = ModelSpec.from_hf_config(json.loads((tmp_path / "config.json").read_text()))
    assert spec.linear_layers == (0, 1, 2) and spec.num_experts == 8 and spec.zero_centered_norms
    loaded = (load_safetensors(tmp_path, spec), model)
    assert teacher_forced_difference(spec, "batchllm", 7, loaded=loaded) <= 3e-4  # measured 5.3e-5


def test_vllms_larger_blocks_give_the_same_tokens():
    """A state too large for a 16-token page: vLLM's block (and batchlab run's) is 48 tokens; the
    engine keeps a state per 48-token block (groups share 96 of their 100 prefix tokens), chunks of
    16 end inside them, and the tokens are the 16-token blocks'."""
    from engine.loop import run_engine
    from engine.runner import ModelRunner
    from scheduler import schedule_config
    from traces.synthetic import batchllm_microbenchmark

    spec = replace(TINY, linear_value_dim=32)
    assert spec.vllm_block_size(16) == 48
    workload = batchllm_microbenchmark(100, 13, 6, 3, 9, seed=5)
    tokens = {}
    for block in (16, 48):
        runner = ModelRunner(spec, 4096 // block, block, weights=random_weights(spec, seed=2))
        outcome = run_engine(workload, schedule_config("batchllm", max_num_batched_tokens=16), runner, 4096 // block,
                             block)
        tokens[block] = runner.outputs
        assert runner.states.block_starts > 0 and outcome.scheduler.stats.computed_prefill_tokens < 9 * 113
    assert tokens[48] == tokens[16]


def test_checkpoints_load_as_saved_and_as_released(tmp_path):
    """save_pretrained's checkpoint (Qwen3.5's names: in_proj_qkv, in_proj_z, conv1d, A_log, ...)
    and config.json read back as the same model and weights. Qwen3.5 is released multimodal: its
    text model under ``model.language_model.``, a vision tower under ``model.visual.``, and
    multi-token prediction layers under ``mtp.`` (for speculative decoding, which the engine does
    not do); the text model loads, the rest unused, and another stray tensor is still refused."""
    from safetensors.torch import load_file, save_file

    from scheduler.errors import ConfigError

    weights = saved_checkpoint(TINY, tmp_path / "saved")
    state = load_file(tmp_path / "saved" / "model.safetensors")
    released = {k.replace("model.", "model.language_model.", 1): v for k, v in state.items()}
    released.update({"model.visual.blocks.0.attn.qkv.weight": torch.ones(2, 2), "mtp.fc.weight": torch.ones(2, 2),
                     "mtp.layers.0.self_attn.q_proj.weight": torch.ones(2, 2)})
    (tmp_path / "released").mkdir()
    save_file(released, tmp_path / "released" / "model.safetensors")
    for directory in ("saved", "released"):
        loaded = load_safetensors(tmp_path / directory, TINY)
        assert torch.equal(loaded.embed, weights.embed)
        for mine, theirs in zip(weights.layers, loaded.layers):
            if mine.linear is None:
                assert torch.equal(mine.q, theirs.q) and torch.equal(mine.q_norm, theirs.q_norm)
            else:
                for field in ("qkv", "z", "b", "a", "conv", "dt_bias", "a_log", "norm", "out"):
                    assert torch.equal(getattr(mine.linear, field), getattr(theirs.linear, field)), field
    save_file({**released, "model.language_model.layers.0.linear_attn.extra": torch.ones(2)},
              tmp_path / "released" / "model.safetensors")
    with pytest.raises(ConfigError, match="does not use: model.language_model.layers.0.linear_attn.extra"):
        load_safetensors(tmp_path / "released", TINY)


def test_a_host_tier_carries_the_states_with_the_blocks():
    """With a host tier (fcfs, a 12-block cache, evictions copied out and loaded back into other
    blocks), every logits row equals a run whose cache never evicts: the block states travel
    with the KV (without their copies a request finds no state to start from, or a stale one)."""
    from engine.linear_state import LinearStates
    from test_host_tier import engine_logits
    from traces.synthetic import batchllm_microbenchmark

    workload = batchllm_microbenchmark(40, 13, 12, 3, 18, seed=4)
    baseline, _ = engine_logits(workload, 256, spec=TINY, max_num_batched_tokens=512)

    def worst(logits):
        return max((logits[r] - baseline[r]).abs().max().item() for r in baseline)
    logits, outcome = engine_logits(workload, 12, spec=TINY, max_num_batched_tokens=16, host_cache_blocks=256)
    assert outcome.scheduler.stats.host_loaded_blocks > 0 and worst(logits) < 3e-4
    original = LinearStates.host_transfers
    LinearStates.host_transfers = lambda self, stores, loads, drops=(): None
    try:
        logits, _ = engine_logits(workload, 12, spec=TINY, max_num_batched_tokens=16, host_cache_blocks=256)
        assert worst(logits) > 1e-2
    except AssertionError as error:
        assert "no linear-attention state there" in str(error)
    finally:
        LinearStates.host_transfers = original


def test_a_step_loads_nothing_from_the_host_tier_that_it_writes_there_itself():
    """Prompts sharing 35 tokens, all admitted in one step (the budget takes them): the first
    writes its blocks through to the tier as it is scheduled, and the GPU hit of the others, cut
    to none by the linear layers' states (none at that point yet), let them load those very blocks
    from the tier in the same step, before anything had computed them: the engine had no copy
    (KeyError; found by benchmarks/soak.py). Blocks written through while a step is scheduled are
    not loadable in it."""
    from test_host_tier import engine_logits
    from traces.synthetic import prefix_tree_workload

    workload = prefix_tree_workload((2, 3), (25, 10), 7, 1, 3, seed=895)  # 6 prompts of 42 tokens
    baseline, _ = engine_logits(workload, 4096, spec=TINY, max_num_batched_tokens=512)
    logits, outcome = engine_logits(workload, 4096, spec=TINY, host_cache_blocks=32)
    assert outcome.scheduler.stats.host_loaded_blocks == 0  # nothing else was ever in the tier to load
    assert max((logits[r] - baseline[r]).abs().max().item() for r in baseline) < 3e-4


def test_a_profile_of_a_linear_attention_model_keeps_no_states(tmp_path):
    """The profiler's synthetic requests start mid-sequence: from zero states, doing the work a
    run does (states kept at block ends, each request's kept), then none kept; the profile loads
    and names the model."""
    from conftest import SMALL_GRIDS
    from engine.profiler import profile_engine
    from engine.runner import ModelRunner
    from sim.profile import Profile

    runner = ModelRunner(TINY, 64, 16)
    profile = Profile.load(profile_engine(runner, tmp_path, "float32", "torch", repeats=1, grids=SMALL_GRIDS))
    assert profile.tables["attn_prefill"].values.min() > 0 and profile.tables["attn_decode"].values.min() > 0
    assert runner.states.missing_ok and not runner.states.running and not runner.states.blocks
