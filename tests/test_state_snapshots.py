"""vLLM's prefix cache for linear-attention models: a hit needs the state snapshot after its
last block, snapshots take blocks of the same pool and leave it least recently used first."""
from fake_executor import run_to_completion
from scheduler import Request, Scheduler, schedule_config
from scheduler.kv_blocks import BlockManager
from scheduler.model_spec import StateBlocks, WindowBlocks, model_spec
from scheduler.prompt import ChainIndex
from scheduler.state_snapshots import StateSnapshots

BLOCK = 16


def test_a_hit_ends_at_the_last_block_whose_snapshot_is_cached():
    """As vLLM's MambaManager searches: right to left, the first boundary with a snapshot, even
    where snapshots before it are gone; each snapshot takes its blocks, cached and free."""
    kv, chains = BlockManager(40, BLOCK), ChainIndex(BLOCK)
    keys = chains.full_block_keys(((7, 4 * BLOCK),))
    blocks = kv.allocate(4)
    kv.register_run(blocks, keys, 0, 4)
    snapshots = StateSnapshots(kv, chains, 3)
    snapshots.keep(keys, 0, 1)
    snapshots.keep(keys, 2, 3)
    assert kv.num_used_blocks == 4 and kv.num_cached_free_blocks == 6  # two snapshots of 3 blocks, free
    assert snapshots.hits(keys, 4) == 3 and snapshots.hits(keys, 2) == 1 and snapshots.hits(keys, 4 - 3) == 1
    assert len(set(snapshots.keys(int(keys[0]))) | set(int(k) for k in keys)) == 3 + 4  # identities of their own
    snapshots.keep(keys, 0, 1)  # kept already: nothing new
    assert kv.num_cached_free_blocks == 6 and snapshots.num_kept == 2
    snapshots.use(keys, 1)  # a request starts from the first: it is now the most recently used
    assert kv.allocate(30 + 3) is not None  # every plain block and the least recently used snapshot
    assert snapshots.hits(keys, 4) == 1 and kv.num_cached_free_blocks == 3


def run(window, blocks: int, requests) -> Scheduler:
    scheduler = Scheduler(schedule_config("fcfs", max_num_batched_tokens=512), blocks, BLOCK, window_blocks=window)
    for request in requests:
        scheduler.add(request)
    run_to_completion(scheduler)
    return scheduler


def test_with_room_the_snapshots_change_no_hit():
    """A request whose prefix another one computed hits it whole, snapshot and all: with room
    for everything the hits are those of the plain state blocks."""
    first = Request(0, 0.0, ((1, 70), (2, 9)), 4)
    later = [Request(i, 0.0, ((1, 70), (10 + i, 9)), 4) for i in range(1, 4)]
    plain = run(WindowBlocks(1, 3, 1), 200, [first, *later])
    state = run(StateBlocks(1, 3, 1), 200, [first, *later])
    assert state.stats.computed_prefill_tokens == plain.stats.computed_prefill_tokens < plain.stats.logical_prefill_tokens
    assert state.snapshots.num_kept > 0 and plain.snapshots is None


def test_under_pressure_snapshots_are_evicted_first_and_take_the_hits_with_them():
    """A request's snapshots leave for the LRU queue as it computes, before its KV blocks do (at
    its end): a tight cache evicts them first, and a later request sharing the prefix finds its
    KV cached but no state to start from past what is left, so it computes more than under the
    plain state blocks (vLLM PR #45845: snapshots crowd the pool)."""
    requests = [Request(0, 0.0, ((1, 96), (2, 9)), 2), Request(1, 0.0, ((3, 60), (4, 9)), 2),
                Request(2, 0.0, ((1, 96), (5, 9)), 2)]
    plain = run(WindowBlocks(1, 3, 1), 20, requests)
    state = run(StateBlocks(1, 3, 1), 20, requests)
    assert state.stats.computed_prefill_tokens > plain.stats.computed_prefill_tokens
    assert state.kv.num_evictions > plain.kv.num_evictions


def test_linear_models_window_blocks_leave_snapshots():
    spec = model_spec("qwen3.5-27b")
    window = spec.window_blocks(spec.vllm_block_size(16))
    assert isinstance(window, StateBlocks) and window == (1, 3, 1) and window.held(1) == 3
    assert not isinstance(model_spec("gpt-oss-20b").window_blocks(16), StateBlocks)
