import pytest

from scheduler import ConfigError, Request, Scheduler, WorkloadError, schedule_config


@pytest.mark.parametrize("prompt, message", [
    ((), "prompt is empty"),
    (((1, 0),), "segment 0 has length 0"),
    (((1, -3),), "segment 0 has length -3"),
    (((1, 2), (2,)), "segment 1"),
    ([(1, 2)], "prompt is empty"),
])
def test_bad_prompts_name_the_request(prompt, message):
    with pytest.raises(WorkloadError, match=f"request 7: .*{message}"):
        Request(7, 0.0, prompt, 1)


@pytest.mark.parametrize("output_len", [0, -1])
def test_bad_output_length(output_len):
    with pytest.raises(WorkloadError, match="request 3: output_len"):
        Request(3, 0.0, ((1, 4),), output_len)


def test_negative_arrival():
    with pytest.raises(WorkloadError, match="request 3: arrival_s"):
        Request(3, -1.0, ((1, 4),), 1)


def test_request_larger_than_kv_capacity_names_request_and_limit():
    scheduler = Scheduler(schedule_config("fcfs"), num_kv_blocks=4, block_size=16)
    with pytest.raises(WorkloadError, match=r"request 9: needs 5 KV blocks .* holds only 4 blocks"):
        scheduler.add(Request(9, 0.0, ((1, 60),), 10))


def test_a_request_that_exactly_fills_the_kv_cache_fits():
    scheduler = Scheduler(schedule_config("fcfs"), num_kv_blocks=4, block_size=16)
    scheduler.add(Request(1, 0.0, ((1, 60),), 5))  # holds 60 + 5 - 1 = 64 tokens: 4 blocks
    with pytest.raises(WorkloadError, match=r"request 2: needs 5 KV blocks"):
        scheduler.add(Request(2, 0.0, ((1, 60),), 6))


def test_simulator_names_the_first_request_that_cannot_fit_before_simulating():
    from sim.simulator import simulate
    from tests.test_sim_timeline import constant_cost
    from traces.workload import Workload

    requests = (Request(0, 2.0, ((1, 90),), 5), Request(1, 0.0, ((2, 8),), 2), Request(2, 1.0, ((3, 70),), 1),
                Request(3, 0.5, ((4, 10),), 1))
    with pytest.raises(WorkloadError, match=r"request 2: needs 5 KV blocks"):  # arrives before request 0
        simulate(Workload("w", requests), schedule_config("fcfs"), constant_cost(), 4, 16)


def test_duplicate_request_id():
    scheduler = Scheduler(schedule_config("fcfs"), num_kv_blocks=4)
    scheduler.add(Request(1, 0.0, ((1, 4),), 1))
    with pytest.raises(WorkloadError, match="request 1: id added twice"):
        scheduler.add(Request(1, 0.0, ((1, 4),), 1))


def test_unknown_schedule_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown schedule 'fifo'; expected one of \['batchllm'"):
        schedule_config("fifo")


def test_unknown_option_and_bad_values():
    with pytest.raises(ConfigError, match="unknown option"):
        schedule_config("fcfs", chunk=3)
    with pytest.raises(ConfigError, match="kv_threshold"):
        schedule_config("batchllm", kv_threshold=1.5)
    with pytest.raises(ConfigError, match="positive integer"):
        Scheduler(schedule_config("fcfs"), num_kv_blocks=0)


def _outcome(check, prompt):
    try:
        return check(prompt, "request 7")
    except WorkloadError as error:
        return str(error)


def test_prompt_check_fast_path_agrees_with_the_segment_loop():
    """``validate_prompt`` checks plain-int chains in C-level passes and sends everything else
    through the segment loop; on any chain, both give the same length or the same error."""
    from hypothesis import given, settings, strategies as st

    from scheduler.prompt import MAX_SEGMENT_LEN, _validate_segments, validate_prompt

    value = st.one_of(st.integers(-2, 5), st.sampled_from([MAX_SEGMENT_LEN, MAX_SEGMENT_LEN + 1, 1 << 40]),
                      st.booleans(), st.floats(0, 4), st.none())
    segment = st.one_of(st.tuples(value, value), st.tuples(value), st.tuples(value, value, value),
                        st.lists(value, min_size=2, max_size=2), value)
    chain = st.one_of(st.lists(segment, max_size=6).map(tuple), st.lists(segment, max_size=3))

    @settings(max_examples=400, deadline=None)
    @given(chain)
    def agree(prompt):
        assert _outcome(validate_prompt, prompt) == _outcome(_validate_segments, prompt)

    agree()
    assert validate_prompt(((3, 4), (9, MAX_SEGMENT_LEN)), "r") == 4 + MAX_SEGMENT_LEN


def test_a_prompt_over_the_step_budget_without_chunked_prefill_is_refused_before_any_work():
    """Without chunked prefill a prompt goes into one step: one longer than the budget could never
    start (the run used to stop mid-way blaming the KV cache: "the head of the queue does not fit
    in N free KV blocks")."""
    config = schedule_config("fcfs", max_num_batched_tokens=32, enable_chunked_prefill=False)
    scheduler = Scheduler(config, num_kv_blocks=64, block_size=4)
    scheduler.add(Request(1, 0.0, ((1, 32),), 40))  # the prompt fits the step; its answer needs no budget
    with pytest.raises(WorkloadError, match=r"request 2: its prompt of 33 tokens goes into one step without chunked "
                                            r"prefill, and schedule 'fcfs' takes at most 32 tokens a step: set "
                                            r"enable_chunked_prefill=true or max_num_batched_tokens >= 33"):
        scheduler.add(Request(2, 0.0, ((1, 33),), 1))
    chunked = Scheduler(schedule_config("fcfs", max_num_batched_tokens=32), num_kv_blocks=64, block_size=4)
    chunked.add(Request(2, 0.0, ((1, 33),), 1))  # in chunks it runs


def test_a_preempted_request_too_long_to_recompute_in_one_step_says_so():
    """Its prompt fits a step, but preempted (recompute, caching off) it must compute its answer
    so far with it in one step: without chunked prefill it never can. The run stops saying that,
    not that the KV cache is short (it has room: nothing runs)."""
    from fake_executor import run_to_completion
    from scheduler import SchedulerStuck

    config = schedule_config("fcfs", max_num_batched_tokens=32, enable_chunked_prefill=False, caching="off")
    scheduler = Scheduler(config, num_kv_blocks=20, block_size=4)
    for req_id in range(3):
        scheduler.add(Request(req_id, 0.0, ((req_id + 1, 30),), 40))
    with pytest.raises(SchedulerStuck, match=r"request 1, preempted after 10 output tokens, must recompute its 40 "
                                             r"tokens in one step without chunked prefill, .* at most 32 tokens a "
                                             r"step: set enable_chunked_prefill=true or max_num_batched_tokens >= 69"):
        run_to_completion(scheduler, max_steps=1000)
    assert scheduler.stats.num_preemptions == 1


def test_the_simulator_refuses_a_late_prompt_over_the_budget_before_simulating_anything():
    """The simulator checks the longest request (prompt + answer) up front; without chunked
    prefill the longest prompt, which need not be it, is checked too: arriving late, it stopped the
    simulation where it arrived."""
    from scheduler.model_spec import model_spec
    from sim.cost_model import CostModel
    from sim.profile import constant_profile
    from sim.simulator import simulate
    from traces.workload import Workload

    requests = (Request(0, 0.0, ((1, 10),), 200), Request(1, 50.0, ((2, 40),), 1))  # 209 tokens; a prompt of 40
    config = schedule_config("fcfs", max_num_batched_tokens=32, enable_chunked_prefill=False)
    plans = []
    with pytest.raises(WorkloadError, match=r"request 1: its prompt of 40 tokens goes into one step"):
        simulate(Workload("late", requests), config, CostModel(constant_profile(), model_spec("tiny")), 64, 16,
                 on_plan=plans.append)
    assert plans == []
