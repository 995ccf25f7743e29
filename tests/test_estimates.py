"""Output-length estimates: what a policy that reads output lengths sees, apart from what the
requests generate (traces/estimates.py, Request.output_estimate)."""
import numpy as np
import pytest

from scheduler import Request, schedule_config
from scheduler.errors import ConfigError, WorkloadError
from sim.cost_model import CostModel
from sim.profile import constant_profile
from sim.simulator import simulate
from scheduler.model_spec import model_spec
from traces.estimates import with_output_estimates
from traces.workload import Workload

COST = CostModel(constant_profile(), model_spec("tiny", num_layers=1))


def test_an_estimate_is_a_positive_whole_number_or_none():
    assert Request(0, 0.0, ((1, 8),), 5).output_estimate is None
    assert Request(0, 0.0, ((1, 8),), 5, output_estimate=50).output_estimate == 50
    for bad in (0, -3, 2.5, True):
        with pytest.raises(WorkloadError, match=f"request 0: output_estimate is {bad!r}; expected an integer >= 1"):
            Request(0, 0.0, ((1, 8),), 5, output_estimate=bad)


def test_estimates_are_off_by_a_lognormal_factor_of_mean_one():
    workload = Workload("w", tuple(Request(i, 0.0, ((i, 8),), 200) for i in range(20_000)))
    assert with_output_estimates(workload, 0.0) is workload
    noisy = with_output_estimates(workload, 1.0, seed=4)
    ratios = np.array([r.output_estimate / r.output_len for r in noisy.requests])
    assert abs(ratios.mean() - 1.0) < 0.03 and abs(ratios.std() / ratios.mean() - 1.0) < 0.1
    assert all(r.output_len == 200 for r in noisy.requests)  # what they generate is unchanged
    again = with_output_estimates(workload, 1.0, seed=4)
    assert [r.output_estimate for r in again.requests] == [r.output_estimate for r in noisy.requests]
    assert [r.output_estimate for r in with_output_estimates(workload, 1.0, seed=5).requests] != \
        [r.output_estimate for r in noisy.requests]
    with pytest.raises(ConfigError, match="output_estimate.cv is -1; expected a coefficient of variation >= 0"):
        with_output_estimates(workload, -1)


def _admitted(workload, name, **options):
    outcome = simulate(workload, schedule_config(name, max_num_seqs=1, **options), COST, 64, 16)
    states = sorted((s for s in outcome.scheduler.states.values() if s.request is not None),
                    key=lambda s: s.first_admission)
    return [s.req_id for s in states], outcome


def test_output_aware_policies_read_the_estimate_and_requests_generate_their_length():
    """BatchLLM's decode ratio (output over prompt, decode-heavy first) with output lengths
    allowed: the request estimated longer goes first, whatever it really generates."""
    truth = Workload("w", (Request(0, 0.0, ((1, 32),), 4), Request(1, 0.0, ((2, 32),), 40)))
    assert _admitted(truth, "decode_first", use_output_lengths=True)[0] == [1, 0]
    misled = Workload("w", (Request(0, 0.0, ((1, 32),), 4, output_estimate=400),
                            Request(1, 0.0, ((2, 32),), 40, output_estimate=1)))
    order, outcome = _admitted(misled, "decode_first", use_output_lengths=True)
    assert order == [0, 1]
    assert [outcome.scheduler.states[i].num_output_tokens for i in (0, 1)] == [4, 40]
    # blind to outputs, estimates change nothing
    assert _admitted(misled, "decode_first")[0] == _admitted(truth, "decode_first")[0]


def test_the_engine_generates_the_same_tokens_whatever_the_estimates():
    from test_engine import tokens_of
    from traces.synthetic import mixed_batch

    workload = mixed_batch(prompt_lens=(48, 20), output_lens=(3, 12), counts=(6, 6), shared=0.3, share_degree=3,
                           template_len=4)
    baseline, _ = tokens_of(workload, "fcfs")
    for cv in (0.0, 2.0):
        tokens, outcome = tokens_of(with_output_estimates(workload, cv, seed=2), "blend", max_num_batched_tokens=32)
        assert tokens == baseline, cv
