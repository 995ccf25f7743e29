"""vLLM's prefix cache for hybrid models (scheduler/window_pages.py): a hit needs the sliding
or linear groups' pages of its last blocks, which take blocks of the same pool, are held by the
requests whose window reaches them, and leave for the LRU queue as the window moves on."""
from types import SimpleNamespace

import pytest

from fake_executor import run_to_completion
from scheduler import Request, Scheduler, StepResult, schedule_config
from scheduler.kv_blocks import BlockManager
from scheduler.model_spec import StateBlocks, WindowBlocks, model_spec
from scheduler.prompt import ChainIndex
from scheduler.window_pages import WindowPages

BLOCK = 16


def cached_sets(blocks, need: int, size: int = 2, length: int = 8, block: int = BLOCK):
    """A pool where the sets of the KV blocks ``blocks`` (of a ``length``-block prompt) are
    cached; the window reaches ``need`` blocks back, a set is ``size`` blocks."""
    kv, chains = BlockManager(100, block), ChainIndex(block)
    keys = chains.full_block_keys(((7, length * block),))
    pages = WindowPages(kv, chains, WindowBlocks(need + 1, size, 1))  # a window of need + 1 blocks
    for i in blocks:
        state = SimpleNamespace(req_id=i, window_blocks=[])
        pages.keep(state, keys, i, i + 1)
        pages.leave(state)
        kv.release(state.window_blocks)  # the set of the block it would be in (the scheduler's to release)
    return pages, keys


def test_a_hit_ends_where_the_pages_of_its_last_blocks_are_cached():
    """As vLLM's managers search, right to left: a window of 3 blocks needs the sets of the 3
    blocks before the hit's end (or of every block from the first, where fewer); a state the
    set of the last one, whatever is missing before it."""
    pages, keys = cached_sets([0, 1, 2, 4, 5, 7], need=3)
    assert pages.kv.num_cached_free_blocks == 6 * 2
    assert [pages.hits(keys, n) for n in range(9)] == [0, 1, 2, 3, 3, 3, 3, 3, 3]
    pages, keys = cached_sets([0, 1, 2, 3, 4], need=3)
    assert [pages.hits(keys, n) for n in (8, 5, 4)] == [5, 5, 4]
    pages, keys = cached_sets([1, 2, 5, 6], need=3)
    assert [pages.hits(keys, n) for n in (8, 3, 2)] == [0, 0, 0]  # block 0's set is missing
    pages, keys = cached_sets([1, 4], need=1)
    assert [pages.hits(keys, n) for n in range(9)] == [0, 0, 2, 2, 2, 5, 5, 5, 5]
    assert len(set(pages.keys(keys[:1]).tolist()) | set(keys.tolist())) == 2 + 8  # identities of their own


@pytest.mark.parametrize("cached, hit", [
    ([False] * 10, 0), ([True], 1), ([True, False], 1), ([True, True], 2), ([True, True, False], 2),
    ([True, True, True], 3), ([True, True, True, False], 3),
    ([True, True, False, True, False, False, True, True, False, True, True, True], 12),
    ([True, True, False, True, False, False, True, True, False, False, False], 8),
    ([True, True, False, True, False, False, True, True, False, False, False, True], 8)])
def test_vllms_own_cases_of_a_sliding_windows_hit(cached, hit):
    """vLLM's test of its sliding-window hit (tests/v1/core/test_specialized_manager.py,
    ``test_sliding_window_possible_cached_prefix``): blocks of 2 tokens, a window of 4, which
    blocks' sliding pages are cached, and the hit it expects, in blocks."""
    assert WindowBlocks(-(-(4 - 1) // 2) + 1, 1, 1).need == 2  # as ModelSpec.window_blocks makes it
    pages, keys = cached_sets([i for i, c in enumerate(cached) if c], need=2, size=1, length=len(cached), block=2)
    assert pages.hits(keys, len(cached)) == hit


def test_a_hit_holds_its_last_sets_and_makes_them_the_most_recently_used():
    pages, keys = cached_sets([0, 1, 2, 3], need=2)
    kv = pages.kv
    state = SimpleNamespace(req_id=9, window_blocks=[])
    assert pages.hit(keys, 3) == (3, 2 * 2)  # the sets of blocks 1 and 2, free
    # 10 blocks to fill, 3 of them hits: its whole window of 3 sets, the 2 free sets it takes
    # from the cache and a reserve of 1; with the hit's sets held by another, a reserve of 3
    assert pages.cost(10, 3, 2 * 2) == 3 * 2 and pages.cost(10, 3, 0) == 3 * 2
    assert pages.cost(2, 1, 0) == 1 * 2  # a request of 2 blocks: 1 of its own
    assert pages.hold(state, keys, 3, 10) == 1 * 2 and pages.held_blocks(9) == 2 * 2
    assert kv.num_used_blocks == 4 and kv.num_cached_free_blocks == 4
    pages.leave(state)  # blocks 1 and 2's sets: the most recently used now
    assert kv.allocate(92 + 4) is not None  # every plain block, then the least recently used sets
    assert pages.hits(keys, 3) == 3 and pages.hits(keys, 4) == 3


def run(window, blocks: int, requests, pages: bool = True, retention=None) -> Scheduler:
    """fcfs; ``retention``: vLLM's retention interval (None: every page cached, vLLM <= 0.28)."""
    config = schedule_config("fcfs", max_num_batched_tokens=512, retention_interval=retention)
    scheduler = Scheduler(config, blocks, BLOCK, window_blocks=window)
    if not pages:  # the cache as if the window's and the states' pages were never freed
        scheduler.pages = None
    for request in requests:
        scheduler.add(request)
    run_to_completion(scheduler)
    assert scheduler.kv.num_used_blocks == 0
    return scheduler


WINDOWS = [StateBlocks(1, 3, 1), WindowBlocks(3, 2, 1)]


@pytest.mark.parametrize("window", WINDOWS)
def test_with_room_the_pages_change_no_hit(window):
    """A request whose prefix another one computed hits it whole: with room for everything the
    hits are those of a cache that keeps every group's pages."""
    first = Request(0, 0.0, ((1, 70), (2, 9)), 4)
    later = [Request(i, 0.0, ((1, 70), (10 + i, 9)), 4) for i in range(1, 4)]
    plain = run(window, 200, [first, *later], pages=False)
    cached = run(window, 200, [first, *later])
    assert cached.stats.computed_prefill_tokens == plain.stats.computed_prefill_tokens < plain.stats.logical_prefill_tokens
    assert cached.kv.num_cached_free_blocks > plain.kv.num_cached_free_blocks  # the pages, left cached


@pytest.mark.parametrize("window, blocks", list(zip(WINDOWS, (16, 20))))
def test_under_pressure_the_pages_are_evicted_first_and_take_the_hits_with_them(window, blocks):
    """A request's pages leave for the LRU queue as its window moves on, and at its end before
    its KV blocks: a tight cache evicts them first, and a later request sharing the prefix
    finds its KV cached but not the pages of its last blocks, so it computes more than under a
    cache that keeps them (vLLM PR #45845: states crowd the pool)."""
    requests = [Request(0, 0.0, ((1, 96), (2, 9)), 2), Request(1, 0.0, ((3, 60), (4, 9)), 2),
                Request(2, 0.0, ((1, 96), (5, 9)), 2)]
    plain = run(window, blocks, requests, pages=False)
    cached = run(window, blocks, requests)
    assert cached.stats.computed_prefill_tokens > plain.stats.computed_prefill_tokens
    assert cached.kv.num_evictions > plain.kv.num_evictions


def test_a_long_prompt_holds_its_window_and_leaves_the_rest_cached():
    """A 20-block prompt under a window of 4 blocks in each of 2 groups holds 8 blocks of pages
    at every step; the sets of its first blocks are freed (cached) as it goes, so a second
    request with the same prompt, after it, hits all but its last token's block."""
    for retention, cached in ((None, 20), (0, 4), (4 * BLOCK, 16)):
        config = schedule_config("fcfs", max_num_batched_tokens=48, retention_interval=retention)
        scheduler = Scheduler(config, 200, BLOCK, window_blocks=WindowBlocks(4, 2, 1))
        scheduler.add(Request(0, 0.0, ((1, 20 * BLOCK),), 3))
        now, held = 0.0, set()
        while scheduler.has_unfinished:
            plan = scheduler.schedule(now)
            held.add(scheduler.pages.held_blocks(0) + len(scheduler.states[0].window_blocks))
            assert scheduler.kv.num_used_blocks == len(scheduler.states[0].block_table) + 8
            scheduler.update(plan, StepResult(plan.step, 1.0), now)
            now += 1.0
        # its blocks and their pages: every set, or (vLLM 0.29's default) only the 3 before where a
        # resend (block 19) or an extension (block 20) of the prompt resumes: blocks 16 to 19; with
        # an interval of 4 blocks, also the last 3 of every 4 (15 sets, block 16 besides)
        assert held == {8} and scheduler.kv.num_cached_free_blocks == 20 + cached * 2
        scheduler.add(Request(1, 0.0, ((1, 20 * BLOCK),), 3))
        plan = scheduler.schedule(now)
        assert scheduler.states[1].num_cached_tokens == 19 * BLOCK


def test_a_states_snapshots_are_kept_where_a_hit_can_start():
    """A 20-block prompt of a linear model leaves a snapshot at every boundary (vLLM 0.28), or
    (0.29) only after blocks 18 and 19, where a resend and an extension resume; a resend hits
    all but the last block either way."""
    for retention, cached in ((None, 20), (0, 2)):
        scheduler = run(StateBlocks(1, 3, 1), 200, [Request(0, 0.0, ((1, 20 * BLOCK),), 3)], retention=retention)
        assert scheduler.kv.num_cached_free_blocks == 20 + cached * 3
        scheduler.add(Request(1, 0.0, ((1, 20 * BLOCK),), 3))
        scheduler.schedule(100.0)
        assert scheduler.states[1].num_cached_tokens == 19 * BLOCK


@pytest.mark.parametrize("window", [WindowBlocks(4, 2, 1), StateBlocks(1, 3, 1)])
def test_sparse_retention_keeps_a_shared_prefixs_tail_from_the_second_request_on(window):
    """vLLM's retention interval 0 (its default from 0.29): the first request of a prefix keeps
    the tail before its own prompt's end only, so the second, sharing 6 blocks of it, finds the
    full layers' blocks but not the pages before block 6, and computes everything; its hit on the
    full layers went further than on the pages, a junction, where it keeps the tail; the third
    hits the prefix. Every page cached (vLLM <= 0.28): the second hits it already. A linear
    model's state snapshots alike (vLLM's MambaManager)."""
    requests = [Request(i, 0.0, ((1, 96), (2 + i, 160)), 2) for i in range(3)]
    for retention, cached in ((0, [0, 0, 96]), (None, [0, 96, 96])):
        config = schedule_config("fcfs", max_num_batched_tokens=512, retention_interval=retention)
        scheduler = Scheduler(config, 200, BLOCK, window_blocks=window)
        for request in requests:  # one after another
            scheduler.add(request)
            run_to_completion(scheduler)
        assert [scheduler.states[i].num_cached_tokens for i in range(3)] == cached
    with pytest.raises(Exception, match="retention_interval 24 is not a multiple of the block size"):
        Scheduler(schedule_config("fcfs", retention_interval=24), 200, BLOCK, window_blocks=WindowBlocks(4, 2, 1))
    with pytest.raises(Exception, match="retention_interval is -16"):
        schedule_config("fcfs", retention_interval=-16)


def test_an_answer_is_cached_with_its_pages_for_the_next_turn():
    """An agent's next turn carries the answer: its blocks are registered when the request
    finishes, before its window's pages leave, so the next turn hits past its own prompt."""
    scheduler = run(WindowBlocks(3, 2, 1), 100, [Request(0, 0.0, ((1, 64),), 40, output_segment=77)])
    assert scheduler.pages.hits(scheduler.chains.full_block_keys(((1, 64), (77, 40))), 6) == 6
    scheduler.add(Request(1, 0.0, ((1, 64), (77, 40), (2, 30)), 4))
    run_to_completion(scheduler)
    assert scheduler.states[1].num_cached_tokens == 96  # 103 known tokens: 6 full blocks


def test_models_pages_a_hit_needs():
    """gemma-3: a window of 1,024 tokens, ceil(1023 / 16) blocks, in 6 groups; gpt-oss-20b: 128
    tokens, 8 blocks in 1 group; Qwen3.5: a state in each of 3 groups, after the last block."""
    gemma, oss, qwen = (model_spec(name) for name in ("gemma-3-27b", "gpt-oss-20b", "qwen3.5-27b"))
    assert (gemma.window_blocks(16).need, gemma.window_blocks(16).held(1)) == (64, 6)
    assert (oss.window_blocks(16).need, oss.window_blocks(16).held(1)) == (8, 1)
    window = qwen.window_blocks(qwen.vllm_block_size(16))
    assert isinstance(window, StateBlocks) and window == (1, 3, 1) and (window.need, window.held(1)) == (1, 3)


def test_round_robin_sessions_lose_every_hit_at_once_far_below_the_pool():
    """benchmarks/sliding_sessions.py, as vLLM issue #48435 reports it on Gemma 4 (vLLM 0.24-0.25):
    sessions re-sent round-robin to a sliding-window model keep all their reuse, then past a
    working set far below the pool none of it, for every request at once; vLLM 0.29's retention
    interval moves that point up, and a cache with no sliding pages holds them all."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "sliding_sessions.py"
    spec = importlib.util.spec_from_file_location("sliding_sessions", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    window = model_spec("gemma-3-27b").window_blocks(16)
    every_page, retention, no_pages = ([bench.reused(w, r, 9600, seats, 21_000) for seats in (1, 2, 5, 6)]
                                       for w, r in ((window, None), (window, 0), (0, None)))
    assert every_page[0] > 0.99 and every_page[1:] == [0.0] * 3  # 42,000 tokens: 27 % of the pool
    assert min(retention[:3]) > 0.99 and retention[3] == 0.0
    assert min(no_pages) > 0.99
