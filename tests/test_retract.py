"""SGLang's retraction (``preemption="sglang"``, retract.py) against vLLM's preemption."""
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from scheduler import Request, Scheduler, StepResult, schedule_config
from scheduler.errors import ConfigError
from scheduler.model_spec import WindowBlocks

from test_scheduler_properties import BLOCK, holds_and_equals_one_by_one, most_held, watched, workloads
from test_sim_timeline import fast_forward_identical


def three_running_and_one_waiting(preemption: str) -> tuple[Scheduler, list]:
    """Blocks of 4 tokens, 6 of them, at most 3 running: A (prompt 4), B (prompt 8) and C
    (prompt 4) run their prompts in step 0 (4 blocks) while D (prompt 4, answer 2) waits for a
    seat. In step 1 each decode writes the first position of a new block: 3 needed, 2 free."""
    config = schedule_config("fcfs", max_num_seqs=3, caching="off", preemption=preemption)
    scheduler = Scheduler(config, 6, 4)
    for req_id, (segment, length, output) in enumerate(((1, 4, 12), (2, 8, 12), (3, 4, 12), (4, 4, 2))):
        scheduler.add(Request(req_id, 0.0, ((segment, length),), output))
    plans = []
    for now in range(4):
        plan = scheduler.schedule(float(now))
        scheduler.update(plan, StepResult(plan.step, 1.0), now + 1.0)
        plans.append(plan)
    return scheduler, plans


def test_sglang_retracts_the_fewest_sampled_longest_prompt_and_queues_it_behind():
    scheduler, plans = three_running_and_one_waiting("sglang")
    assert {c.req_id for c in plans[0].chunks} == {0, 1, 2}
    # all three sampled one token: B's prompt is the longest, so B goes, before any decode runs
    assert plans[1].preempted == (1,)
    assert sorted(c.req_id for c in plans[1].chunks) == [0, 2]
    # appended to the queue: D, waiting since time 0, is admitted first (step 1 admits nothing)
    assert [c.req_id for c in plans[2].chunks if c.start == 0] == [3]
    assert 1 in {s.req_id for s in scheduler.waiting.take_ordered()}  # B still waits (its 9 tokens need 3 blocks)
    # vLLM: A and B take the free blocks in turn, C (the newest) gives way and goes back to the
    # front, where its 5 tokens (2 blocks, 1 free) hold D back
    scheduler, plans = three_running_and_one_waiting("vllm")
    assert plans[1].preempted == (2,)
    assert scheduler.waiting.peek().req_id == 2
    assert not [c for p in plans[2:] for c in p.chunks if c.start == 0]


def test_bad_preemption_is_refused():
    with pytest.raises(ConfigError, match="preemption is 'sglang2'.*'vllm', 'sglang'"):
        schedule_config("fcfs", preemption="sglang2")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workloads(), st.sampled_from(["fcfs", "batchllm", "prefix_grouped", "lpm", "decode_first"]),
       st.integers(0, 12), st.sampled_from([1, 3, 8, 64]), st.sampled_from([None, 0.7, 0.2]),
       st.sampled_from([0, 0, 2, WindowBlocks(2, 3, 1)]))
def test_retraction_keeps_the_invariants_and_the_cohort_equals_one_by_one(requests, name, spare, budget, ratio,
                                                                          window):
    """Every request finishes, no block leaks, the tokens computed add up; plans (block ids
    included) equal one-by-one scheduling's; and where every running request decoded, the ones
    retracted come first in SGLang's order before every one kept."""
    need = max(-(-(r.prompt_len + r.output_len - 1) // BLOCK) for r in requests) + most_held(window)
    config = schedule_config(name, max_num_batched_tokens=budget, new_token_ratio=ratio, preemption="sglang")
    holds_and_equals_one_by_one(config, requests, need + spare, window)
    scheduler = Scheduler(config, need + spare, BLOCK, window_blocks=window)
    for before, all_decoding, plan in watched(scheduler, requests):
        # SGLang's order, spelled out here: fewest sampled, then longest prompt, then newest
        keys = {s.req_id: (s.num_output_tokens, -s.prompt_len, -s.admit_seq) for s in before}
        victims = [r for r in plan.preempted if r in keys]
        kept = [r for r in keys if r in scheduler.running]
        if all_decoding and victims and kept:
            assert max(keys[r] for r in victims) < min(keys[r] for r in kept)


@pytest.mark.parametrize("schedule,ratio", [("fcfs", None), ("fcfs", 0.7), ("batchllm", 0.7), ("lpm", None)])
def test_fast_forward_is_identical_to_step_by_step_with_retraction(schedule, ratio):
    config = schedule_config(schedule, max_num_batched_tokens=256, new_token_ratio=ratio, preemption="sglang")
    assert fast_forward_identical(config, 150).scheduler.stats.num_preemptions > 0  # retractions happened


def test_the_engine_computes_the_same_tokens_with_retraction():
    from test_engine import tokens_of
    from traces.synthetic import batchllm_microbenchmark

    workload = batchllm_microbenchmark(24, 8, 40, 3, 12, seed=4)
    baseline, _ = tokens_of(workload, "fcfs", max_num_batched_tokens=512)
    for schedule, ratio, blocks in (("fcfs", None, 12), ("fcfs", 0.1, 12), ("batchllm", None, 14), ("lpm", 0.7, 12)):
        tokens, outcome = tokens_of(workload, schedule, blocks=blocks, max_num_batched_tokens=64,
                                    new_token_ratio=ratio, preemption="sglang")
        assert tokens == baseline, schedule
        if ratio != 0.7:
            assert outcome.scheduler.stats.num_preemptions > 0, schedule
