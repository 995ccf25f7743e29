import pytest

from scheduler import Request, group_requests
from scheduler.prefix_tree import build_tree, first_level_groups, maximize_reuse


def chars(text: str):
    return tuple((ord(ch), 1) for ch in text)


def requests_of(*texts, output_len=1):
    return [Request(i, 0.0, chars(t), output_len) for i, t in enumerate(texts)]


def test_batchllm_worked_example():
    reqs = requests_of("a1234", "bxy", "bxz", "bcdefghij", "bcdefghik", "bq")
    root = build_tree([r.prompt for r in reqs])
    before = sorted((length, members) for length, members in first_level_groups(root))
    maximize_reuse(build_tree([r.prompt for r in reqs]))
    assert before == [(1, [1, 2, 3, 4, 5]), (5, [0])]
    grouping = group_requests(reqs, block_size=1)
    assert [(g.prefix_len, g.member_ids) for g in grouping.groups] == [(1, (1, 2, 5)), (8, (3, 4))]
    assert grouping.plain_ids == (0,)
    assert grouping.logical_prefill_tokens - grouping.computed_prefill_tokens == 10
    assert abs(grouping.saving - 10 / 31) < 1e-12


def test_gain_must_be_strictly_positive():
    # 'x' shared by two prompts under 'b' (len 1): gain (2-1)*1 - 1 = 0 -> not lifted
    grouping = group_requests(requests_of("bxy", "bxz", "bq"), block_size=1)
    assert [(g.prefix_len, g.member_ids) for g in grouping.groups] == [(1, (0, 1, 2))]


def test_strict_prefix_prompt_keeps_one_token_of_its_own():
    grouping = group_requests(requests_of("abcd", "abcdef", "abcdxy"), block_size=2)
    # shared "abcd" (4 tokens) but prompt 0 is exactly that: cut to 3 -> whole blocks: 2
    assert [(g.prefix_len, g.member_ids) for g in grouping.groups] == [(2, (0, 1, 2))]
    assert grouping.computed_prefill_tokens == 2 + 2 + 4 + 4


def test_identical_prompts_form_a_group():
    grouping = group_requests(requests_of("abcdef", "abcdef"), block_size=2)
    assert [(g.prefix_len, g.member_ids) for g in grouping.groups] == [(4, (0, 1))]


def test_short_prefix_or_single_member_stay_plain():
    grouping = group_requests(requests_of("abc", "abd", "zzzz"), block_size=4)
    assert grouping.groups == () and grouping.plain_ids == (0, 1, 2)
    assert grouping.saving == 0.0


def test_microbenchmark_shape_reaches_the_analytic_optimum():
    prefix, distinct, degree, groups = 2000, 200, 16, 25
    reqs = []
    for i in range(groups * degree):
        reqs.append(Request(i, 0.0, ((10_000 + i % groups, prefix), (i, distinct)), 100))
    grouping = group_requests(reqs, block_size=16)
    assert len(grouping.groups) == groups and set(grouping.share_degrees) == {degree}
    expected = 1 - (groups * prefix + len(reqs) * distinct) / (len(reqs) * (prefix + distinct))
    assert abs(grouping.saving - expected) < 1e-12 and round(expected, 3) == 0.852


def test_grouping_makes_no_reference_cycles():
    """``group_requests`` pauses the cyclic collector (scheduler/gc_pause.py) while it builds
    and walks its prefix tree; that is only sound if nothing it builds is left as cyclic
    garbage, however many requests it groups."""
    import gc

    from traces.synthetic import prefix_tree_workload

    left_behind = []
    for per_leaf in (2, 8):
        requests = prefix_tree_workload((4, 3), (64, 32), 16, per_leaf, 10, seed=3).requests
        gc.collect()
        gc.disable()
        try:
            grouping = group_requests(requests, 16)
            assert not gc.isenabled()
            left_behind.append(gc.collect())
        finally:
            gc.enable()
        assert sum(len(g.member_ids) for g in grouping.groups) == len(requests) == 12 * per_leaf
    assert left_behind == [0, 0]


def test_grouping_pauses_the_collector_and_restores_it_however_it_ends(monkeypatch):
    """Called with the collector on, grouping runs with it off and turns it back on, also when
    it fails; called with it off (inside the simulator's event loop), it leaves it off."""
    import gc

    import scheduler.grouping as grouping

    seen = []
    monkeypatch.setattr(grouping, "_prefix_groups", lambda prompts, lengths: seen.append(gc.isenabled()) or [])
    assert gc.isenabled()
    group_requests(requests_of("abcd"), 2)
    assert seen == [False] and gc.isenabled()

    def fail(prompts, lengths):
        raise RuntimeError("tree")
    monkeypatch.setattr(grouping, "_prefix_groups", fail)
    with pytest.raises(RuntimeError):
        group_requests(requests_of("abcd"), 2)
    assert gc.isenabled()
    gc.disable()
    try:
        monkeypatch.setattr(grouping, "_prefix_groups", lambda prompts, lengths: [])
        group_requests(requests_of("abcd"), 2)
        assert not gc.isenabled()
    finally:
        gc.enable()
