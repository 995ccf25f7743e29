"""SGLang's admission with room for the answers still to come (``new_token_ratio``, reserve.py)."""
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from scheduler import Request, Scheduler, StepResult, schedule_config
from scheduler.cohort import DecodeCohort
from scheduler.errors import ConfigError
from scheduler.reserve import DECAY_STEPS, MIN_FACTOR, RETRACT_STEPS, OutputReserve
from sim.cost_model import CostModel
from sim.simulator import simulate
from traces.synthetic import system_prompt_workload

from test_scheduler_properties import BLOCK, _plans, drive, online, workloads
from test_sim_timeline import fast_forward_identical


def step_once(scheduler, now=0.0):
    plan = scheduler.schedule(now)
    scheduler.update(plan, StepResult(plan.step, 1.0), now + 1.0)
    return plan


def test_a_request_waits_until_the_running_answers_leave_it_room():
    """Worked by hand: 100 blocks of 16 tokens; A (160 prompt, 1,000 answer) runs; B (320, 1,000)
    needs its 20 blocks, and room for 0.7 of both answers still to come, within the free blocks.
    The share falls by (0.7 - 0.098) / 600 each decode step from step 1 on."""
    scheduler = Scheduler(schedule_config("fcfs", new_token_ratio=0.7), 100, 16)
    scheduler.add(Request(0, 0.0, ((1, 160),), 1000))
    scheduler.add(Request(1, 0.0, ((2, 320),), 1000))
    decay = (0.7 - 0.7 * MIN_FACTOR) / DECAY_STEPS
    expected = None
    for k in range(1, 1000):
        ratio = 0.7 - (k - 1) * decay
        free = 100 - -(-(160 + k) // 16)  # A's blocks for the position its step-k decode writes
        if 20 + ratio * ((1000 - k) + 1000) / 16 <= free:
            expected = k
            break
    assert expected is not None and expected > 100  # it waits a while
    admitted = None
    for _ in range(expected + 2):
        plan = step_once(scheduler)
        if any(c.req_id == 1 for c in plan.chunks):
            admitted = plan.step
            break
    assert admitted == expected
    # without the reserve B starts at once, beside A's prompt
    plain = Scheduler(schedule_config("fcfs"), 100, 16)
    plain.add(Request(0, 0.0, ((1, 160),), 1000))
    plain.add(Request(1, 0.0, ((2, 320),), 1000))
    assert {c.req_id for c in step_once(plain).chunks} == {0, 1}


def test_the_share_decays_resets_when_idle_and_is_reestimated_after_a_preemption():
    scheduler = Scheduler(schedule_config("fcfs", new_token_ratio=0.5), 40, 4)
    reserve = scheduler.reserve
    assert reserve.ratio == 0.5 and reserve.min == pytest.approx(0.5 * MIN_FACTOR)
    for req_id in range(3):
        scheduler.add(Request(req_id, 0.0, ((req_id, 8),), 60))
    step_once(scheduler)  # prompts only: no decode, no decay
    assert reserve.ratio == 0.5
    now, preempted_at = 1.0, None
    while scheduler.has_unfinished:
        before = reserve.ratio
        plan = scheduler.schedule(now)
        decoded = bool(plan.decodes.req_ids) or any(c.start >= c.prompt_len for c in plan.chunks)
        if plan.preempted and preempted_at is None:
            preempted_at = plan.step
            scheduler.sync()
            survivors = [s for s in scheduler.running.values() if s.request is not None]
            generated = sum(s.num_output_tokens for s in survivors)
            limits = sum(s.output_len for s in survivors)
            assert reserve.ratio == pytest.approx(min(1.0, (generated + RETRACT_STEPS * len(survivors)) / (limits + 1)))
        elif not plan.preempted and scheduler.running and decoded:
            assert reserve.ratio == pytest.approx(max(before - reserve.decay_per_step, reserve.min))
        scheduler.update(plan, StepResult(plan.step, 1.0), now + 1.0)
        now += 1.0
    assert preempted_at is not None  # 3 x 68 tokens in 160: the decay lets them in, the answers outgrow it
    scheduler.schedule(now)  # nothing runs: back to the start
    assert reserve.ratio == 0.5


def test_bad_ratio_is_refused():
    for bad in (0, 1.5, -0.1, True, "0.7"):
        with pytest.raises(ConfigError, match="new_token_ratio"):
            schedule_config("fcfs", new_token_ratio=bad)
    assert schedule_config("lpm", new_token_ratio=1).new_token_ratio == 1


def clipped(scheduler, clip):
    """Replaces the reserve and the (empty) cohort with ones that count answers up to ``clip``."""
    scheduler.reserve = OutputReserve(scheduler.config.new_token_ratio, clip)
    scheduler.cohort = DecodeCohort(BLOCK, clip)
    return scheduler


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workloads(), st.sampled_from(["fcfs", "batchllm", "prefix_grouped", "lpm"]), st.integers(0, 12),
       st.sampled_from([1, 3, 8, 64]), st.sampled_from([0.7, 0.3, 1.0]), st.sampled_from([1, 2, 3, 4096]),
       st.booleans())
def test_cohort_counts_the_answers_to_come_as_a_sum_over_the_running(requests, name, spare, budget, ratio, clip,
                                                                      mixed):
    """The cohort's running sum of the tokens its members still sample (each up to ``clip``)
    equals the sum over them step by step, and the lazy cohort's plans equal one-by-one
    scheduling's with the reserve on; every request finishes and no block leaks. Also where
    steps of prompts pause the cohort (``mixed``: False)."""
    need = max(-(-(r.prompt_len + r.output_len - 1) // BLOCK) for r in requests)
    config = schedule_config(name, max_num_batched_tokens=budget, new_token_ratio=ratio, mixed_batches=mixed)
    scheduler = clipped(Scheduler(config, need + spare, BLOCK), clip)
    for plan, _ in online(scheduler, requests):
        scheduler.sync()
        step = scheduler.step
        states = scheduler.cohort.states
        assert scheduler.cohort.remaining_outputs(step) == sum(
            min(s.output_len - s.num_output_tokens, clip) for s in states)
        assert scheduler.cohort.remaining_outputs(step, clipped=False) == sum(
            s.output_len - s.num_output_tokens for s in states)
    lazy = _plans(clipped(Scheduler(config, need + spare, BLOCK), clip), requests, False)
    eager = _plans(clipped(Scheduler(config, need + spare, BLOCK, lazy_decodes=False), clip), requests, False)
    assert lazy == eager
    checked = clipped(Scheduler(config, need + spare, BLOCK), clip)
    computed, skipped, discarded, finished = drive(checked, requests)
    assert sorted(finished) == sorted(r.req_id for r in requests)
    assert checked.kv.num_used_blocks == 0
    for r in requests:  # prompt + output - 1, less what was shared, plus what preemption threw away
        assert computed[r.req_id] == r.prompt_len + r.output_len - 1 - skipped[r.req_id] + discarded[r.req_id]


@pytest.mark.parametrize("schedule", ["fcfs", "batchllm"])
def test_fast_forward_is_identical_to_step_by_step_with_the_reserve(schedule):
    config = schedule_config(schedule, max_num_batched_tokens=256, new_token_ratio=0.7)
    slow = fast_forward_identical(config, 300)  # (stretches where nothing waits)
    assert slow.scheduler.stats.num_preemptions < 40  # (a reserve that holds most of the time)


def test_long_answers_preempt_less_with_room_kept_for_them():
    """Answers that outgrow the cache: the reserve admits fewer at a time, and preempts less."""
    from sim.hardware import hardware_spec
    from sim.roofline import build_roofline_profile
    from scheduler.model_spec import model_spec

    model = model_spec("llama-3.1-8b")
    cost = CostModel(build_roofline_profile(model, hardware_spec("h100-sxm")), model)
    workload = system_prompt_workload(1, 200, 100, 500, 500, 2000, 300, seed=1)
    preemptions = {}
    for ratio in (None, 0.7):
        for schedule in ("fcfs", "batchllm"):
            result = simulate(workload, schedule_config(schedule, new_token_ratio=ratio), cost, 3000, 16)
            preemptions[schedule, ratio] = result.scheduler.stats.num_preemptions
    assert preemptions["fcfs", None] > 0 and preemptions["batchllm", None] > 0
    assert preemptions["fcfs", 0.7] < preemptions["fcfs", None] / 2
    assert preemptions["batchllm", 0.7] < preemptions["batchllm", None] / 2


def test_the_engine_computes_the_same_tokens_with_the_reserve():
    from test_engine import tokens_of
    from traces.synthetic import batchllm_microbenchmark

    workload = batchllm_microbenchmark(40, 13, 12, 3, 18, seed=4)
    baseline, _ = tokens_of(workload, "fcfs", max_num_batched_tokens=512)
    for schedule, blocks in (("fcfs", 24), ("batchllm", 24), ("lpm", 256)):
        tokens, outcome = tokens_of(workload, schedule, blocks=blocks, max_num_batched_tokens=64, new_token_ratio=0.7)
        assert tokens == baseline, schedule
    # answers longer than the reserve's share of them, in 12 blocks: preempted, the share re-estimated
    workload = batchllm_microbenchmark(24, 8, 40, 3, 12, seed=4)
    baseline, _ = tokens_of(workload, "fcfs", max_num_batched_tokens=512)
    tokens, outcome = tokens_of(workload, "fcfs", blocks=12, max_num_batched_tokens=64, new_token_ratio=0.1,
                                caching="off")
    assert outcome.scheduler.stats.num_preemptions > 0 and tokens == baseline


def test_simulate_names_sglangs_admission_where_schedules_preempt_often(tmp_path):
    from cli_runs import batchlab

    common = ("workload=system_prompts", "workload.params.num_system_prompts=1", "workload.params.system_len=200",
              "workload.params.user_len_min=100", "workload.params.user_len_max=500",
              "workload.params.output_len_min=500", "workload.params.output_len_max=4000",
              "workload.params.num_requests=600", "schedule.names=[fcfs,batchllm]", "report=false")
    result = batchlab("simulate", *common, f"hydra.run.dir={tmp_path / 'a'}")
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if "preempted" in line)
    assert line.startswith("fcfs, batchllm preempted ") and "schedule.overrides.new_token_ratio=0.7" in line
    # the prompts recomputed after preemptions are not blamed on the groups' one level
    assert "computed more of the prompts" not in result.stdout
    result = batchlab("simulate", *common, "schedule.overrides.new_token_ratio=0.7", f"hydra.run.dir={tmp_path / 'b'}")
    assert result.returncode == 0, result.stderr
    # with the room kept, fcfs no longer preempts often; batchllm still does, and is told what keeps more
    lines = [line for line in result.stdout.splitlines() if " preempted " in line]
    assert [line.split()[0] for line in lines] == ["batchllm"] and "with room kept" in lines[0]
