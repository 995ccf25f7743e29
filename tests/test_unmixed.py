"""SGLang's steps: prompt chunks and decodes apart (``mixed_batches=False``, unmixed.py)."""
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from scheduler import Request, Scheduler, StepResult, schedule_config
from scheduler.errors import ConfigError
from scheduler.model_spec import WindowBlocks

from test_scheduler_properties import BLOCK, holds_and_equals_one_by_one, most_held, watched, workloads
from test_sim_timeline import fast_forward_identical


def test_a_prompt_waits_for_no_decode_and_the_decodes_wait_for_it():
    """A (prompt 8, answer 6) runs alone; B (prompt 40, answer 2) arrives at t=2.5. Budget 16:
    B's prompt takes three steps of 16, 16 and 8 tokens. Mixed (vLLM), A decodes in each of them
    beside B's chunk of 15 tokens, 15 and 10; apart (SGLang), A waits three steps."""
    def run(mixed: bool) -> list:
        config = schedule_config("fcfs", max_num_batched_tokens=16, mixed_batches=mixed)
        scheduler = Scheduler(config, 64, 4)
        pending = [Request(0, 0.0, ((1, 8),), 6), Request(1, 2.5, ((2, 40),), 2)]
        steps = []
        now = 0.0
        while scheduler.has_unfinished or pending:
            while pending and pending[0].arrival_s <= now:
                scheduler.add(pending.pop(0))
            plan = scheduler.schedule(now)
            steps.append(sorted((c.req_id, c.num_tokens) for c in plan.chunks))
            now += 1.0
            scheduler.update(plan, StepResult(plan.step, 1.0), now)
        return steps

    apart = run(False)
    assert apart[:7] == [[(0, 8)], [(0, 1)], [(0, 1)], [(1, 16)], [(1, 16)], [(1, 8)], [(0, 1), (1, 1)]]
    assert apart[7:] == [[(0, 1)], [(0, 1)]]  # A's sixth token two steps after B's second
    mixed = run(True)
    assert mixed[:6] == [[(0, 8)], [(0, 1)], [(0, 1)], [(0, 1), (1, 15)], [(0, 1), (1, 15)], [(0, 1), (1, 10)]]
    assert mixed[6:] == [[(1, 1)]]


def test_bad_mixed_batches_is_refused():
    with pytest.raises(ConfigError, match="mixed_batches is 'no'"):
        schedule_config("fcfs", mixed_batches="no")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workloads(), st.sampled_from(["fcfs", "batchllm", "prefix_grouped", "lpm", "decode_first", "sorted"]),
       st.integers(0, 12), st.sampled_from([1, 3, 8, 64]), st.sampled_from([(None, "vllm"), (0.7, "sglang"),
                                                                             (None, "sglang"), (0.2, "vllm")]),
       st.sampled_from([0, 0, 2, WindowBlocks(2, 3, 1)]))
def test_steps_apart_keep_the_invariants_and_the_cohort_equals_one_by_one(requests, name, spare, budget, sglang,
                                                                          window):
    """No step runs a prompt chunk beside a decode; a step of decodes comes only where no prompt
    chunk could run; every request finishes, no block leaks, the tokens computed add up; plans
    (block ids included) equal one-by-one scheduling's."""
    ratio, preemption = sglang
    need = max(-(-(r.prompt_len + r.output_len - 1) // BLOCK) for r in requests) + most_held(window)
    config = schedule_config(name, max_num_batched_tokens=budget, new_token_ratio=ratio, preemption=preemption,
                             mixed_batches=False)
    holds_and_equals_one_by_one(config, requests, need + spare, window)
    for decoding, _, plan in watched(Scheduler(config, need + spare, BLOCK, window_blocks=window), requests):
        ran, decoding = {c.req_id for c in plan.chunks}, {s.req_id for s in decoding}
        assert ran <= decoding or not ran & decoding, plan.chunks  # decodes, or prompt chunks (recomputed too)


@pytest.mark.parametrize("schedule,ratio,preemption", [("fcfs", None, "vllm"), ("fcfs", 0.7, "sglang"),
                                                       ("batchllm", None, "vllm"), ("lpm", 0.7, "sglang")])
def test_fast_forward_is_identical_to_step_by_step_with_steps_apart(schedule, ratio, preemption):
    fast_forward_identical(schedule_config(schedule, max_num_batched_tokens=256, new_token_ratio=ratio,
                                           preemption=preemption, mixed_batches=False), 150)


def test_the_engine_computes_the_same_tokens_with_steps_apart():
    from test_engine import tokens_of
    from traces.synthetic import batchllm_microbenchmark

    workload = batchllm_microbenchmark(24, 8, 40, 3, 12, seed=4)
    baseline, _ = tokens_of(workload, "fcfs", max_num_batched_tokens=512)
    for schedule, ratio, preemption, blocks in (("fcfs", None, "vllm", 256), ("batchllm", None, "vllm", 14),
                                                ("fcfs", 0.7, "sglang", 12), ("lpm", None, "sglang", 12)):
        tokens, outcome = tokens_of(workload, schedule, blocks=blocks, max_num_batched_tokens=64,
                                    new_token_ratio=ratio, preemption=preemption, mixed_batches=False)
        assert tokens == baseline, schedule
    tokens, _ = tokens_of(workload, "fcfs", max_num_batched_tokens=64, cache_in_step=False)
    assert tokens == baseline
    for blocks in (256, 12):  # the sglang schedule as it is, and short of blocks
        tokens, outcome = tokens_of(workload, "sglang", blocks=blocks)
        assert tokens == baseline, blocks
    assert outcome.scheduler.stats.num_preemptions > 0


def test_simulate_says_what_keeps_more_room_where_a_schedule_with_the_reserve_preempts_often(tmp_path):
    from cli_runs import batchlab

    result = batchlab("simulate", "workload=system_prompts", "workload.params.num_system_prompts=1",
                      "workload.params.system_len=200", "workload.params.user_len_min=100",
                      "workload.params.user_len_max=500", "workload.params.output_len_min=500",
                      "workload.params.output_len_max=4000", "workload.params.num_requests=600",
                      "schedule.names=[fcfs,sglang]", "report=false", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if " preempted " in line]
    assert len(lines) == 2
    assert lines[0].startswith("fcfs preempted ") and "schedule.overrides.new_token_ratio=0.7" in lines[0]
    assert lines[1].startswith("sglang preempted ") and "with room kept" in lines[1]
    assert "new_token_ratio=1.0" in lines[1] and "smaller schedule.overrides.max_num_seqs" in lines[1]


def test_the_preemption_hint_reads_only_the_ratio_from_the_overrides():
    """A host tier's options are complete only once simulate sizes the tier from host_kv_gb: the
    hint, which runs after, must not build schedules from them (it raised on host_load_async)."""
    from omegaconf import OmegaConf

    from batchlab.simulate import preemption_hint

    summaries = {name: {"num_preemptions": 50, "num_requests": 100} for name in ("fcfs", "sglang", "fcfs:max_num_seqs=8")}
    cfg = OmegaConf.create({"schedule": {"overrides": {"host_load_async": True}}})
    lines = preemption_hint(cfg, summaries).splitlines()
    assert lines[0].startswith("fcfs, fcfs:max_num_seqs=8 preempted 50, 50 times:")
    assert lines[1].startswith("sglang preempted 50 times with room kept")
    cfg = OmegaConf.create({"schedule": {"overrides": {"new_token_ratio": 0.5, "host_load_async": True}}})
    assert preemption_hint(cfg, summaries).startswith("fcfs, sglang, fcfs:max_num_seqs=8 preempted 50, 50, 50 times with")


def test_a_decode_stretch_asks_the_head_with_a_whole_step_of_prompts():
    """Apart, a prompt is admitted in a step of its own, with the whole token budget: without
    chunked prefill, a head of 14 tokens fits a budget of 16, not the 13 beside three decodes,
    and a decode stretch must not take it as blocked."""
    config = schedule_config("fcfs", max_num_batched_tokens=16, enable_chunked_prefill=False, mixed_batches=False)
    scheduler = Scheduler(config, 64, 4)
    for req_id in range(3):
        scheduler.add(Request(req_id, 0.0, ((req_id, 4),), 30))
    for now in range(3):  # their prompts, then decodes
        plan = scheduler.schedule(float(now))
        scheduler.update(plan, StepResult(plan.step, 1.0), now + 1.0)
    assert scheduler.decode_stretch() is not None  # nothing waits: decodes ahead
    scheduler.add(Request(3, 3.0, ((9, 14),), 2))
    assert scheduler.decode_stretch() is None
    plan = scheduler.schedule(3.0)
    assert [(c.req_id, c.num_tokens) for c in plan.chunks] == [(3, 14)]


def test_blocks_cached_after_their_step_are_not_shared_within_it():
    """A and B share 8 prompt tokens (two blocks of 4) and start in one step; C, with the same 8,
    starts in the next. vLLM caches a step's blocks as it schedules them: B reads A's two blocks
    in that very step. SGLang inserts them into its radix tree after the step: B computes its
    own, and only C finds them."""
    def first_chunks(cache_in_step: bool) -> dict:
        scheduler = Scheduler(schedule_config("fcfs", cache_in_step=cache_in_step), 64, 4)
        scheduler.add(Request(0, 0.0, ((1, 8), (2, 4)), 3))
        scheduler.add(Request(1, 0.0, ((1, 8), (3, 4)), 3))
        starts = {}
        for now in range(2):
            if now == 1:
                scheduler.add(Request(2, 1.0, ((1, 8), (4, 4)), 3))
            plan = scheduler.schedule(float(now))
            starts.update({c.req_id: (plan.step, c.start) for c in plan.chunks if c.req_id not in starts})
            scheduler.update(plan, StepResult(plan.step, 1.0), now + 1.0)
        return starts

    assert first_chunks(True) == {0: (0, 0), 1: (0, 8), 2: (1, 8)}
    assert first_chunks(False) == {0: (0, 0), 1: (0, 0), 2: (1, 8)}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workloads(), st.sampled_from(["fcfs", "batchllm", "lpm", "sorted", "sglang"]), st.integers(0, 12),
       st.sampled_from([1, 3, 8, 64]), st.booleans(), st.sampled_from([0, 0, 2, WindowBlocks(2, 3, 1)]))
def test_caching_after_the_step_keeps_the_invariants_and_the_cohort_equals_one_by_one(requests, name, spare, budget,
                                                                                     mixed, window):
    need = max(-(-(r.prompt_len + r.output_len - 1) // BLOCK) for r in requests) + most_held(window)
    config = schedule_config(name, max_num_batched_tokens=budget, mixed_batches=mixed, cache_in_step=False)
    holds_and_equals_one_by_one(config, requests, need + spare, window)
