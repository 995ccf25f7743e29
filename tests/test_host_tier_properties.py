"""The host tier's transfers over random workloads and tiny GPU and host capacities (hypothesis),
checked by a shadow executor that knows only the plans: every block a prompt skips holds that
prompt's KV (a cache hit, or a load of what was stored under its identity); a store copies a
block that holds its identity; a load or a drop names an identity the host holds."""
from hypothesis import HealthCheck, given, settings, strategies as st

from scheduler import Scheduler, schedule_config

from test_scheduler_properties import BLOCK, drive, online, workloads


class Shadow:
    """What each GPU block and the host hold, by identity, as an executor following the plans
    would have it (None: KV no prompt block identity names, e.g. decoded tokens)."""

    def __init__(self, scheduler: Scheduler, requests) -> None:
        self.scheduler = scheduler
        self.keys = {r.req_id: [int(k) for k in scheduler.chains.full_block_keys(r.prompt)] for r in requests}
        self.gpu: dict[int, int | None] = {}
        self.host: set[int] = set()
        self.loads = 0

    def identity(self, req_id: int, index: int) -> int | None:
        keys = self.keys.get(req_id)
        if keys is None:  # a group's prefix (grouped schedules): its first member's prompt's
            state = self.scheduler.states[req_id]
            keys = self.keys[req_id] = [int(k) for k in self.scheduler.chains.full_block_keys(state.prompt)]
        return keys[index] if index < len(keys) else None

    def apply(self, plan, progress: dict[int, int]) -> None:
        for block, key in plan.host_stores:   # blocks filled by earlier steps
            assert self.gpu.get(block) == key, (block, key, self.gpu.get(block))
            self.host.add(key)
        for block, key in plan.host_loads:
            assert key in self.host, key
            self.gpu[block] = key
            self.loads += 1
        for key in plan.host_drops:
            assert key in self.host, key
            self.host.discard(key)
        assert plan.loaded_tokens == BLOCK * len(plan.host_loads)
        for chunk in plan.chunks:
            if chunk.start != progress.get(chunk.req_id, 0):  # admitted with blocks already there
                for index in range(chunk.start // BLOCK):
                    key = self.identity(chunk.req_id, index)
                    assert key is not None and self.gpu.get(chunk.block_ids[index]) == key, (chunk, index)
            first = chunk.start // BLOCK
            for index in range(first, -(-chunk.end // BLOCK)):  # blocks this chunk writes into
                full = (index + 1) * BLOCK <= chunk.end
                self.gpu[chunk.block_ids[index]] = self.identity(chunk.req_id, index) if full else None
            progress[chunk.req_id] = chunk.end


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workloads(), st.sampled_from(["fcfs", "lpm", "decode_first", "sorted", "blend"]), st.integers(0, 6), st.integers(1, 12),
       st.sampled_from([1, 3, 8, 64]))
def test_transfers_follow_what_the_blocks_and_the_host_hold(requests, name, spare_blocks, host_blocks, budget):
    need = max(-(-(r.prompt_len + r.output_len - 1) // BLOCK) for r in requests)
    config = schedule_config(name, max_num_batched_tokens=budget, host_cache_blocks=host_blocks)
    scheduler = Scheduler(config, need + spare_blocks, BLOCK)
    shadow = Shadow(scheduler, requests)
    progress: dict[int, int] = {}
    for plan, _ in online(scheduler, requests):
        for req_id in plan.preempted:
            progress[req_id] = 0
        shadow.apply(plan, progress)
    shadow.apply(scheduler.schedule(0.0), progress)  # the last step's stores
    assert shadow.host == set(scheduler.host._keys) and len(shadow.host) <= host_blocks
    assert shadow.loads == scheduler.stats.host_loaded_blocks


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workloads(), st.sampled_from(["fcfs", "lpm"]), st.integers(0, 6), st.integers(1, 12))
def test_every_request_finishes_with_a_tier_and_tokens_add_up(requests, name, spare_blocks, host_blocks):
    need = max(-(-(r.prompt_len + r.output_len - 1) // BLOCK) for r in requests)
    scheduler = Scheduler(schedule_config(name, max_num_batched_tokens=8, host_cache_blocks=host_blocks),
                          need + spare_blocks, BLOCK, emit_block_ids=False)
    computed, skipped, discarded, finished = drive(scheduler, requests)
    assert sorted(finished) == sorted(r.req_id for r in requests) and scheduler.kv.num_used_blocks == 0
    for r in requests:
        assert computed[r.req_id] == r.prompt_len + r.output_len - 1 - skipped[r.req_id] + discarded[r.req_id], r
