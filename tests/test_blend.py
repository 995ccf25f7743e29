"""The `blend` schedule: BlendServe's order (arXiv 2411.16102), prefixes kept together and request
shapes mixed, against sorted and the shuffled order on the batch shapes its paper describes."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler import schedule_config
from scheduler.blend import blend_order, dense_first_walk
from scheduler.model_spec import model_spec
from sim.cost_model import CostModel
from sim.hardware import hardware_spec, kv_capacity_blocks
from sim.roofline import build_roofline_profile
from sim.simulator import simulate
from traces.synthetic import mixed_batch

A, B = ((1, 16), (2, 2984)), ((9, 16), (3, 284))  # class templates 1 and 9, distinct tails


def test_two_shapes_by_hand():
    prompts = [A, ((9, 16), (4, 284)), ((1, 16), (5, 2984)), B]
    p, d = [3000, 300, 3000, 300], [30, 600, 30, 600]
    # depth first, the denser subtree (template 1: 6,000 prompt per 60 output tokens) first;
    # equally dense siblings by segment
    assert dense_first_walk(prompts, p, d) == [0, 2, 3, 1]
    # totals 6,600 / 1,260: from the dense end first (nothing taken), then from the far end
    # (3,000 x 1,260 > 6,600 x 30), then the dense end (3,300 x 1,260 = 6,600 x 630: even), last
    assert blend_order(prompts, p, d) == [0, 1, 2, 3]


def test_a_prompt_ending_inside_the_tree_comes_before_its_extensions():
    prompts = [((1, 16), (2, 16)), ((1, 16),), ((1, 16), (3, 16))]
    assert dense_first_walk(prompts, [32, 16, 32], [1, 1, 1]) == [1, 0, 2]


chains = st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=4), min_size=1, max_size=40)


@settings(max_examples=150, deadline=None)
@given(chains, st.data())
def test_the_walk_keeps_subtrees_whole_and_the_scanners_walk_in_from_both_ends(paths, data):
    prompts = [tuple((10 * depth + s, 16) for depth, s in enumerate(path)) for path in paths]
    p = data.draw(st.lists(st.integers(1, 4000), min_size=len(prompts), max_size=len(prompts)))
    d = data.draw(st.lists(st.integers(1, 600), min_size=len(prompts), max_size=len(prompts)))
    walk = dense_first_walk(prompts, p, d)
    assert sorted(walk) == list(range(len(prompts)))
    for k in range(1, 5):  # every prefix of k segments: its prompts are one run of the walk
        for head in {prompt[:k] for prompt in prompts if len(prompt) >= k}:
            places = [i for i, index in enumerate(walk) if prompts[index][:k] == head]
            assert places == list(range(places[0], places[0] + len(places)))
    order = blend_order(prompts, p, d)
    # the order is some front run of the walk, in order, merged with the rest read backwards
    fronts = [k for k in range(len(walk) + 1)
              if [i for i in order if walk.index(i) < k] == walk[:k]
              and [i for i in order if walk.index(i) >= k] == walk[k:][::-1]]
    assert fronts, (walk, order)


MODEL = model_spec("llama-3.1-8b")
HARDWARE = hardware_spec("h100-sxm")
COST = CostModel(build_roofline_profile(MODEL, HARDWARE), MODEL)
BLOCKS = kv_capacity_blocks(MODEL, HARDWARE, 16)


def _run(shared):
    workload = mixed_batch(shared=shared)
    return {name: simulate(workload, schedule_config(name), COST, BLOCKS, 16) for name in ("fcfs", "sorted", "blend")}


def test_blend_keeps_sorted_sharing_and_the_shuffled_mix():
    """BlendServe's two observations on its mix of long-prompt and long-output requests: at 5 %
    sharing the shuffled order beats depth first, and its own order beats both; at 35 %
    depth first beats the shuffled order, and blend beats depth first. Blend saves what sorted
    saves."""
    low = _run(0.05)
    span = {name: outcome.makespan_s for name, outcome in low.items()}
    assert span["fcfs"] < span["sorted"] and span["blend"] < 0.99 * span["fcfs"]
    high = _run(0.35)
    span = {name: outcome.makespan_s for name, outcome in high.items()}
    assert span["sorted"] < 0.95 * span["fcfs"] and span["blend"] < 0.98 * span["sorted"]
    for outcomes in (low, high):
        saved = {name: o.scheduler.stats.prefill_token_saving for name, o in outcomes.items()}
        assert saved["blend"] == pytest.approx(saved["sorted"], abs=0.002) and saved["blend"] > 2 * saved["fcfs"]


def test_blend_reads_output_lengths_only_where_allowed():
    """Blind to outputs, a request counts one output token: the walk orders by prompt length."""
    workload = mixed_batch(prompt_lens=(300, 300), output_lens=(30, 600), counts=(400, 400), shared=0.2)
    aware = simulate(workload, schedule_config("blend"), COST, BLOCKS, 16)
    blind = simulate(workload, schedule_config("blend", use_output_lengths=False), COST, BLOCKS, 16)
    order = lambda outcome: [s.req_id for s in sorted(outcome.scheduler.states.values(),
                                                      key=lambda s: s.first_admission) if s.request is not None]
    outputs = lambda outcome: [workload.requests[i].output_len for i in order(outcome)[:40]]
    assert set(outputs(aware)) == {30, 600}  # the two shapes taken in turns from the start
    assert set(outputs(blind)) == {30}  # blind, the classes are alike: one class's subtree first


def test_fcfs_over_blends_admission_order_is_blend():
    """What `batchlab order --schedule blend` hands an engine serving in arrival order: the
    batch in blend's first admissions, which fcfs then runs exactly as blend did."""
    from scheduler import Request
    from traces.workload import Workload

    workload = mixed_batch(counts=(600, 600), shared=0.35)
    blend = simulate(workload, schedule_config("blend"), COST, BLOCKS, 16)
    order = [s.req_id for s in sorted(blend.scheduler.states.values(), key=lambda s: s.first_admission)]
    sent = Workload("sent", tuple(Request(i, 0.0, workload.requests[j].prompt, workload.requests[j].output_len)
                                  for i, j in enumerate(order)))
    fcfs = simulate(sent, schedule_config("fcfs"), COST, BLOCKS, 16)
    assert fcfs.makespan_s == blend.makespan_s and fcfs.scheduler.stats == blend.scheduler.stats


def test_arrivals_are_ranked_in_batches_not_one_by_one(monkeypatch):
    """Replaying arrivals, the queue is ranked again once the arrivals since its last ranking are
    a tenth of it (or nothing ranked is left), not on each arrival: ranking anew per arrival
    made a 12,000-request replay 80x slower. Until then arrivals wait behind the ranked."""
    import scheduler.waiting as waiting
    from traces.arrivals import with_arrivals

    calls = []
    real = waiting.blend_order
    monkeypatch.setattr(waiting, "blend_order", lambda *args: calls.append(len(args[0])) or real(*args))
    workload = with_arrivals(mixed_batch(counts=(500, 500), shared=0.2), "poisson", rate=40.0)
    outcome = simulate(workload, schedule_config("blend"), COST, BLOCKS, 16)
    assert all(s.finish_s is not None for s in outcome.scheduler.states.values())
    assert 1 < len(calls) < len(workload.requests) / 5
    calls.clear()
    simulate(mixed_batch(counts=(500, 500), shared=0.2), schedule_config("blend"), COST, BLOCKS, 16)
    assert calls == [1000]  # offline: the whole batch ranked once


def test_mixed_batch_says_what_is_wrong():
    from scheduler.errors import ConfigError

    with pytest.raises(ConfigError, match=r"shared is 1.0; expected a fraction of the prompt in \[0, 1\)"):
        mixed_batch(shared=1.0)
    with pytest.raises(ConfigError, match="class 1's prompt of 100 tokens leaves none of its own after the template "
                                          r"\(16\) and the shared prefix \(90\)"):
        mixed_batch(prompt_lens=(3000, 100), shared=0.9)
    with pytest.raises(ConfigError, match="prompt_lens, output_lens and counts need the same"):
        mixed_batch(counts=(10,))
    with pytest.raises(ConfigError, match=r"counts\[1\] is 0; expected an integer >= 1"):
        mixed_batch(counts=(10, 0))
    workload = mixed_batch(prompt_lens=(64, 48), output_lens=(4, 9), counts=(5, 3), shared=0.5, share_degree=2,
                           template_len=8, shuffle=False)
    first, last = workload.requests[0], workload.requests[-1]
    assert first.prompt_len == 64 and first.output_len == 4 and first.prompt[1][1] == 32
    assert last.prompt_len == 48 and last.output_len == 9 and last.prompt[0] != first.prompt[0]
    assert workload.requests[0].prompt[1] == workload.requests[1].prompt[1] != workload.requests[2].prompt[1]


def test_perfect_overlap_widens_blends_lead():
    """benchmarks/blendserve_mix.py --overlap: the same plans costed as if each step overlapped its
    compute and memory time are never slower than summed kernels, and blend's lead over sorted,
    a few percent with summed kernels, grows with the overlap (the README's explanation of
    BlendServe's larger gains)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "blendserve_mix.py"
    spec = importlib.util.spec_from_file_location("blendserve_mix", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    (row,) = bench.overlapped("h100-sxm", "llama-3.1-8b", shared_values=(0.35,), counts=(1000, 1000))
    for name in ("fcfs", "sorted", "blend"):
        summed, overlapped = row[name]
        assert 0.5 * summed < overlapped < summed, name
    lead = lambda index: row["sorted"][index] / row["blend"][index]
    assert lead(0) > 1.0 and lead(1) > lead(0) + 0.05
