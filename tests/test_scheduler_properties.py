"""Invariants over random workloads, schedules and tiny KV capacities (hypothesis)."""
from hypothesis import HealthCheck, given, settings, strategies as st

from scheduler import SCHEDULES, Request, Scheduler, StepResult, group_requests, schedule_config
from scheduler.model_spec import StateBlocks, WindowBlocks

BLOCK = 2


@st.composite
def workloads(draw):
    """Prompts drawn from a small shared segment alphabet, so prefixes collide often."""
    count = draw(st.integers(1, 12))
    requests = []
    for req_id in range(count):
        depth = draw(st.integers(1, 4))
        prompt = tuple((draw(st.integers(0, 3)) * 10 + level, draw(st.sampled_from([1, 2, 3, 4])))
                       for level in range(depth))
        arrival = draw(st.sampled_from([0.0, 0.0, 1.5, 4.0]))
        requests.append(Request(req_id, arrival, prompt, draw(st.integers(1, 5))))
    return requests


def online(scheduler: Scheduler, requests: list[Request], sample: bool = False):
    """Drives ``scheduler`` online, one second per step, arrivals taken when due; yields each plan
    (and what has not arrived yet) once it is executed and updated. ``sample``: the update gets
    sampled tokens."""
    pending = sorted(requests, key=lambda r: r.arrival_s)
    now = 0.0
    for _ in range(5000):
        while pending and pending[0].arrival_s <= now:
            scheduler.add(pending.pop(0))
        if not scheduler.has_unfinished and not pending:
            return
        plan = scheduler.schedule(now)
        if plan.is_empty:
            yield plan, pending
            now = pending[0].arrival_s
            continue
        now += 1.0
        tokens = {c.req_id: c.req_id * 7 + c.end for c in plan.chunks if c.samples} if sample else {}
        scheduler.update(plan, StepResult(plan.step, 1.0, tokens), now)
        yield plan, pending
    raise AssertionError("did not finish in 5000 steps")


def drive(scheduler: Scheduler, requests: list[Request]):
    """Online loop with arrivals; checks per-step invariants; returns per-request token tallies."""
    computed = {r.req_id: 0 for r in requests}      # tokens computed by chunks
    skipped = {r.req_id: 0 for r in requests}       # tokens taken from a cache or the group prefix
    discarded = {r.req_id: 0 for r in requests}     # tokens thrown away by preemption
    progress = {r.req_id: 0 for r in requests}
    finished: list[int] = []
    cfg = scheduler.config
    for plan, pending in online(scheduler, requests):
        for req_id in (r for r in plan.preempted if r >= 0):  # < 0: a group's prefix
            discarded[req_id] += progress[req_id]
            progress[req_id] = 0
        assert plan.num_tokens <= cfg.max_num_batched_tokens
        if cfg.max_num_seqs is not None:
            assert len(scheduler.running) <= cfg.max_num_seqs
        assert len({c.req_id for c in plan.chunks}) == len(plan.chunks)
        for chunk in plan.chunks:
            if chunk.req_id < 0:
                continue
            if chunk.start != progress[chunk.req_id]:  # (re)admitted with a prefix already there
                assert progress[chunk.req_id] == 0 and chunk.start % BLOCK == 0
                skipped[chunk.req_id] += chunk.start
            computed[chunk.req_id] += chunk.num_tokens
            progress[chunk.req_id] = chunk.end
        finished.extend(plan.finished)
        if plan.is_empty:
            assert not scheduler.running and scheduler.num_waiting == 0 and pending
    finished.extend(scheduler.schedule(0.0).finished)  # the last update's finishes
    return computed, skipped, discarded, finished


def holds_and_equals_one_by_one(config, requests: list[Request], num_blocks: int, window=0) -> None:
    """``drive``'s invariants (every request finishes, no block leaks, the tokens computed add
    up) and the lazy decode cohort's plans equal to one-by-one scheduling's."""
    scheduler = Scheduler(config, num_blocks, BLOCK, window_blocks=window)
    computed, skipped, discarded, finished = drive(scheduler, requests)
    assert sorted(finished) == sorted(r.req_id for r in requests)
    assert scheduler.kv.num_used_blocks == 0
    for r in requests:
        assert computed[r.req_id] == r.prompt_len + r.output_len - 1 - skipped[r.req_id] + discarded[r.req_id]
    lazy = _plans(Scheduler(config, num_blocks, BLOCK, window_blocks=window), requests, False)
    eager = _plans(Scheduler(config, num_blocks, BLOCK, lazy_decodes=False, window_blocks=window), requests, False)
    assert lazy == eager


def watched(scheduler: Scheduler, requests: list[Request]):
    """Drives ``scheduler`` online as ``online`` does; yields, for each step, the running
    requests in steady decode before it (counters brought up to date), whether they were all
    that ran, and its plan, before the update."""
    pending = sorted(requests, key=lambda r: r.arrival_s)
    now = 0.0
    while scheduler.has_unfinished or pending:
        while pending and pending[0].arrival_s <= now:
            scheduler.add(pending.pop(0))
        scheduler.sync()
        decoding = [s for s in scheduler.running.values() if s.request is not None
                    and s.num_tokens - s.num_computed_tokens == 1 and s.num_computed_tokens >= s.prompt_len]
        all_decoding = len(decoding) == len(scheduler.running)
        plan = scheduler.schedule(now)
        yield decoding, all_decoding, plan
        now = now + 1.0 if not plan.is_empty else pending[0].arrival_s
        if not plan.is_empty:
            scheduler.update(plan, StepResult(plan.step, 1.0), now)


def most_held(window) -> int:
    """The most window blocks a running request holds."""
    return window if isinstance(window, int) else window.held(1 << 30)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workloads(), st.sampled_from(sorted(SCHEDULES)), st.integers(0, 12), st.sampled_from([1, 3, 8, 64]),
       st.sampled_from([0, 0, 1, 3, WindowBlocks(2, 3, 1), WindowBlocks(3, 1, 2), StateBlocks(1, 3, 1)]))
def test_invariants_hold_under_memory_pressure(requests, name, spare_blocks, budget, window):
    """``window``: blocks each running request holds for a sliding window (vLLM's hybrid cache:
    a count, or so many in each of several sliding groups), or for a linear model's state; the
    groups' pages, in the latter two, are cached too (window_pages.py)."""
    need = max(-(-(r.prompt_len + r.output_len - 1) // BLOCK) for r in requests) + most_held(window)
    scheduler = Scheduler(schedule_config(name, max_num_batched_tokens=budget), need + spare_blocks, BLOCK,
                          window_blocks=window)
    computed, skipped, discarded, finished = drive(scheduler, requests)
    # every request finishes exactly once
    assert sorted(finished) == sorted(r.req_id for r in requests)
    assert all(scheduler.states[r.req_id].num_output_tokens == r.output_len for r in requests)
    # no KV block leaked (double frees raise inside the block manager)
    assert scheduler.kv.num_used_blocks == 0
    assert all(scheduler.kv.ref_count(b) == 0 for b in range(scheduler.kv.num_blocks))
    # tokens computed = prompt + output - 1, less what was shared, plus what preemption threw away
    for r in requests:
        expected = r.prompt_len + r.output_len - 1 - skipped[r.req_id] + discarded[r.req_id]
        assert computed[r.req_id] == expected, r


@settings(max_examples=100, deadline=None)
@given(workloads(), st.sampled_from(["prefix_grouped", "batchllm"]), st.sampled_from([3, 8, 64]))
def test_group_prefix_computed_once_without_preemption(requests, name, budget):
    offline = [Request(r.req_id, 0.0, r.prompt, r.output_len) for r in requests]
    scheduler = Scheduler(schedule_config(name, max_num_batched_tokens=budget), 10_000, BLOCK)
    drive(scheduler, offline)
    grouping = group_requests(offline, BLOCK)
    assert scheduler.stats.num_preemptions == 0
    # every group prefix computed once, every member's own part once: exactly the grouping's count
    assert scheduler.stats.computed_prefill_tokens == grouping.computed_prefill_tokens
    prefixes = [s for s in scheduler.states.values() if s.is_prefix and s.group.started]
    assert sorted(p.num_prompt_tokens_computed for p in prefixes) == sorted(g.prefix_len for g in grouping.groups)


def _plans(scheduler: Scheduler, requests: list[Request], sample: bool) -> list[tuple]:
    """Every plan in full (chunks with block ids, groups, preemptions, finishes), the running
    requests' counters after ``sync()`` at every step, and the final per-request records."""
    seen = []
    for plan, _ in online(scheduler, requests, sample):
        scheduler.sync()
        counters = [(s.req_id, s.num_computed_tokens, s.num_output_tokens, s.num_tokens)
                    for s in scheduler.running.values()]
        seen.append((plan.step, plan.chunks, plan.shared_prefix_groups, plan.preempted, plan.finished,
                     scheduler.kv.num_used_blocks, scheduler.kv.num_cached_free_blocks, counters))
    records = sorted((s.req_id, s.num_computed_tokens, s.num_output_tokens, s.num_tokens, s.finish_s,
                      s.num_preemptions, s.num_prompt_tokens_computed, tuple(s.output_token_ids))
                     for s in scheduler.states.values())
    return seen + [records, scheduler.stats]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workloads(), st.sampled_from(sorted(SCHEDULES)), st.integers(0, 12), st.sampled_from([1, 3, 8, 64]),
       st.booleans(), st.sampled_from([0, 0, 2, WindowBlocks(2, 3, 1), StateBlocks(1, 3, 1)]))
def test_decode_cohort_plans_equal_one_by_one_scheduling(requests, name, spare_blocks, budget, sample, window):
    """The lazy decode cohort is an optimisation only: plans (block ids included), preemptions,
    finishes, KV usage and every request's counters (brought up to date by ``sync``, step by
    step) are those of one-by-one scheduling, with or without sliding-window blocks."""
    need = max(-(-(r.prompt_len + r.output_len - 1) // BLOCK) for r in requests) + most_held(window)
    config = schedule_config(name, max_num_batched_tokens=budget)
    lazy = _plans(Scheduler(config, need + spare_blocks, BLOCK, window_blocks=window), requests, sample)
    eager = _plans(Scheduler(config, need + spare_blocks, BLOCK, lazy_decodes=False, window_blocks=window),
                   requests, sample)
    assert lazy == eager


def test_many_shared_prefix_groups_at_once_equal_one_by_one_scheduling():
    """Several prefix groups decode together while members finish and others join: the decode
    cohort keeps the groups' order and group objects between steps, and must hand over exactly
    what one-by-one scheduling builds (the random workloads above rarely have two groups of two
    decoding at once)."""
    # suffixes of 2 to 18 tokens under a budget of 16: a member admitted early with a long
    # suffix joins the cohort after members admitted behind it
    requests = [Request(i, 0.0 if i < 16 else 3.0 + i % 4, ((100 + i % 4, 12), (1000 + i, 2 + (5 * i) % 17)),
                        3 + (7 * i) % 11) for i in range(28)]
    config = schedule_config("batchllm", max_num_batched_tokens=16)
    lazy = _plans(Scheduler(config, 400, BLOCK), requests, False)
    eager = _plans(Scheduler(config, 400, BLOCK, lazy_decodes=False), requests, False)
    assert max(sum(len(g.req_ids) >= 2 for g in plan[2]) for plan in lazy[:-2]) >= 3
    assert lazy == eager


def test_cohort_group_order_is_by_each_groups_first_member():
    """``DecodeCohort.group_order`` is kept between steps; after members join and leave in any
    order (ahead of a group's first member too, which the scheduler itself rarely does) it is
    the order of the groups' first members' admissions, and the shared-prefix groups the cohort
    keeps (rebuilt only for groups that changed) are those of its members as they are now."""
    import random

    from scheduler.cohort import DecodeCohort
    from types import SimpleNamespace

    from scheduler.group_state import GroupState, shared_prefix_groups
    from scheduler.request import RequestState

    rng = random.Random(7)
    states = [RequestState.of(Request(i, 0.0, ((7, 4), (100 + i, 2)), 50)) for i in range(24)]
    groups = {group_id: GroupState(group_id, 4, states[group_id::4]) for group_id in range(4)}
    for group in groups.values():
        group.prefix_done = True
    scheduler = SimpleNamespace(_active_groups=groups, emit_block_ids=False)
    for seq, state in enumerate(rng.sample(states, len(states))):
        state.admit_seq = seq
        state.num_computed_tokens = state.num_tokens = state.prompt_len
        state.block_table = [seq]
    cohort = DecodeCohort(BLOCK)
    outside = list(states)
    for step in range(200):
        if outside and (not cohort.states or rng.random() < 0.55):
            state = outside.pop(rng.randrange(len(outside)))
            state.num_computed_tokens = state.num_tokens = state.prompt_len + step  # as if decoding all along
            cohort.join(state, step)
        else:
            state = rng.choice(cohort.states)
            cohort.leave(state, step)
            outside.append(state)
        expected = [g for _, g in sorted((min(m.admit_seq for m in members), g)
                                         for g, members in cohort.by_group.items())]
        assert cohort.group_order() == expected
        assert all(list(cohort.group_req_ids(g)) == [m.req_id for m in sorted(members, key=lambda m: m.admit_seq)]
                   for g, members in cohort.by_group.items())
        if rng.random() < 0.5:  # the kept group objects, brought up to date now and then
            wanted = [(4, tuple(m.req_id for m in sorted(cohort.by_group[g], key=lambda m: m.admit_seq)))
                      for g in expected]
            got = shared_prefix_groups(scheduler, cohort)
            assert [(g.prefix_len, g.req_ids) for g in got] == [w for w in wanted if len(w[1]) >= 2]
            assert all(g.num_decoding == len(g.req_ids) for g in got)


def test_cohort_decodes_short_of_blocks_preempt_as_one_by_one_scheduling(monkeypatch):
    """A steady step whose decodes due a block outnumber the free blocks keeps the cohort: its
    members take their blocks in turn, preempting the newest running request, or, when the
    member is the newest itself, an idle group's prefix. This workload (found by a random
    search) takes the idle-prefix branch in such a step; plans must equal one-by-one scheduling."""
    import scheduler.preemption as preemption

    prompts = [((0, 3), (31, 4), (2, 1)), ((0, 3),), ((20, 1),), ((20, 1), (11, 3), (22, 2), (13, 2)),
               ((30, 3), (21, 3), (22, 1)), ((30, 3), (1, 1), (12, 3)), ((20, 3), (11, 2)),
               ((0, 3), (11, 1), (22, 3), (23, 2)), ((0, 1), (21, 4), (12, 1)), ((10, 1), (11, 1)), ((0, 3), (31, 3))]
    arrivals = [0.0, 1.5, 4.0, 0.0, 0.0, 4.0, 0.0, 0.0, 4.0, 1.5, 1.5]
    outputs = [5, 3, 1, 4, 2, 1, 3, 4, 2, 4, 2]
    requests = [Request(i, a, p, o) for i, (p, a, o) in enumerate(zip(prompts, arrivals, outputs))]
    need = max(-(-(r.prompt_len + r.output_len - 1) // BLOCK) for r in requests)
    config = schedule_config("prefix_grouped", max_num_batched_tokens=64)
    in_walk, idle_in_walk = [False], []
    walk, idle = preemption.decode_blocks_preempting, preemption.preempt_idle_group

    def watched_walk(*args):
        in_walk[0] = True
        try:
            walk(*args)
        finally:
            in_walk[0] = False

    def watched_idle(scheduler, **kwargs):
        dropped = idle(scheduler, **kwargs)
        idle_in_walk.append(dropped and in_walk[0])
        return dropped
    monkeypatch.setattr(preemption, "decode_blocks_preempting", watched_walk)
    monkeypatch.setattr(preemption, "preempt_idle_group", watched_idle)
    lazy = _plans(Scheduler(config, need, BLOCK), requests, False)
    assert any(idle_in_walk)
    assert lazy == _plans(Scheduler(config, need, BLOCK, lazy_decodes=False), requests, False)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_invariants_hold_with_the_schedules_options_drawn_too(data):
    """Every schedule with its options drawn as well (the tests above take the presets as they
    are; two livelocks of grouped schedules, 2026-12-04, needed SGLang's steps apart or small
    budgets): ``drive``'s invariants, and the cohort's plans equal to one-by-one scheduling's."""
    from hypothesis import assume

    from scheduler.errors import ConfigError

    requests = data.draw(workloads())
    name = data.draw(st.sampled_from(sorted(SCHEDULES)))
    draws = {"max_num_batched_tokens": st.sampled_from([1, 3, 8, 64]), "caching": st.sampled_from(["lru", "off"]),
             "max_num_seqs": st.sampled_from([1, 2, None]), "kv_threshold": st.sampled_from([0.5, None]),
             "new_token_ratio": st.sampled_from([0.3, 1.0, None]), "mixed_batches": st.booleans(),
             "cache_in_step": st.booleans(), "preemption": st.sampled_from(["vllm", "sglang"]),
             "host_cache_blocks": st.sampled_from([2, 16]), "cascade_attention": st.booleans(),
             "enable_chunked_prefill": st.booleans()}
    chosen = data.draw(st.sets(st.sampled_from(sorted(draws))))
    overrides = {option: data.draw(draws[option], label=option) for option in sorted(chosen)}
    if overrides.get("enable_chunked_prefill") is False:  # a prompt and a recomputed answer fit a step
        overrides["max_num_batched_tokens"] = max(r.prompt_len + r.output_len - 1 for r in requests)
    window = data.draw(st.sampled_from([0, 0, 2, WindowBlocks(2, 3, 1), StateBlocks(1, 3, 1)]))
    try:
        config = schedule_config(name, **overrides)
    except ConfigError:
        assume(False)
    need = max(-(-(r.prompt_len + r.output_len - 1) // BLOCK) for r in requests) + most_held(window)
    holds_and_equals_one_by_one(config, requests, need + data.draw(st.integers(0, 6), label="spare"), window)
