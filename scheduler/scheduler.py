"""The scheduler: decides each step's batch, knows nothing of clocks, devices or SimPy.

Per step (Sarathi-style fill under one token budget): running decodes, then running partial
prefills, then new admissions from the waiting queue; or, as SGLang steps (unmixed.py), prompt
chunks alone where there are any, else the decodes. A running request that cannot get a KV
block preempts (recompute) the most recently admitted request not yet scheduled this step
(vLLM), or, under SGLang's preemption, requests are retracted before the decodes (retract.py).

Running decodes live in a decode cohort (cohort.py) that advances them all at once, so a step
costs O(what changes); where the decodes due a block outnumber the free blocks, those members
take their blocks one at a time, preempting as one-by-one scheduling would. Where it cannot (more
decodes than the token budget, a joining decode that would register cache keys), the cohort is
dissolved and the step scheduled request by request: the same plans, allocations and releases.
"""
from __future__ import annotations

from .admission import admit, cached_tokens_of, check_fits, loads_done
from .cascade import cascade_groups
from .config import RANKS_WHOLE_QUEUE, ScheduleConfig
from .cohort import DecodeCohort
from .contract import NO_DECODES, BatchPlan, ScheduledChunk, SharedPrefixGroup, StepResult, new_chunk, new_plan
from .errors import WorkloadError
from .group_state import GroupState, regroup_waiting, shared_prefix_groups
from .host_tier import HostTier, write_through
from .kv_blocks import BlockManager
from .preemption import break_deadlock, grow, schedule_decodes
from .prompt import ChainIndex
from .request import Request, RequestState
from .reserve import OutputReserve
from .retract import retract_for_decodes
from .unmixed import prefill_step
from .window_pages import window_pages
from .stats import SchedulerStats
from .stretch import apply_decode_stretch, find_decode_stretch
from .waiting import WaitingQueue


class Scheduler:
    def __init__(self, config: ScheduleConfig, num_kv_blocks: int, block_size: int = 16,
                 emit_block_ids: bool = True, lazy_decodes: bool = True, host: HostTier | None = None,
                 replica: int = 0, chains: ChainIndex | None = None, window_blocks=0) -> None:
        """``lazy_decodes=False``: every step one request at a time (the reference the decode cohort
        is tested against). ``host``: a tier shared with other simulated engines (``replica`` names
        this one in it, ``chains`` their common block identities) instead of one of its own.
        ``window_blocks``: blocks each running request holds besides its own (``ModelSpec.window_blocks``:
        for its sliding layers' window, or its linear layers' state: window_pages.py)."""
        self.config = config
        self.block_size = block_size
        self.window_blocks = window_blocks
        self.kv = BlockManager(num_kv_blocks, block_size, config.caching)
        own = HostTier(config.host_cache_blocks) if config.host_cache_blocks and host is None else None
        self.host = (host if host is not None else own) if config.caching != "off" else None
        self.replica = replica
        self.shared_host = host is not None and self.host is host  # other engines write to it too
        # this step's blocks loaded from the host tier (of them, another engine's), written through
        self._loaded_blocks = self._remote_blocks = self._stored_blocks = 0
        # (block id, identity) pairs for an executor's host tier: stores wait for the next plan
        # (their blocks are computed by this one), loads go in this one
        self._transfers = self.host is not None and emit_block_ids
        self._host_stores: dict[int, int] = {}  # identity -> block
        # identities written through since this step began to be scheduled: its own chunks compute
        # their KV, so none of its admissions loads them (a GPU hit cut short by a linear model's
        # states, say, counted them, and the engine had no copy to load)
        self._fresh_host: set[int] = set()
        self._host_loads: list[tuple[int, int]] = []
        self._host_drops: list[int] = []
        self._loading: dict[int, RequestState] = {}  # admitted, blocks loading (host_load_async)
        self._load_starts: list[tuple[int, int, int]] = []  # loads this step starts: BatchPlan.loading
        self.emit_block_ids = emit_block_ids
        self.lazy_decodes = lazy_decodes
        self.chains = chains if chains is not None else ChainIndex(block_size)
        self.pages = window_pages(self.kv, self.chains, window_blocks, config)  # hybrid models' pages
        self.members_cache = self.kv.caching == "lru" and self.pages is None and self.host is None  # beyond_prefix
        self.states: dict[int, RequestState] = {}       # every request and group prefix
        self.running: dict[int, RequestState] = {}      # in admission order
        ratio = config.new_token_ratio  # SGLang's admission: room for the answers to come (reserve.py)
        self.reserve = None if ratio is None else OutputReserve(ratio)
        self.cohort = DecodeCohort(block_size, None if ratio is None else self.reserve.clip)  # running, steady decode
        self._no_cohort = DecodeCohort(block_size)  # stands in for a paused cohort (unmixed.py)
        self._others: dict[int, RequestState] = {}      # the rest of running, in admission order
        self.waiting = WaitingQueue(config)
        self.stats = SchedulerStats()
        self.step = 0
        self.now = 0.0  # the time schedule() was last called at
        self._uncached: list[tuple[RequestState, int]] = []  # blocks computed in this step, to cache after it
        self._ungrouped: list[RequestState] = []
        self._active_groups: dict[int, GroupState] = {}  # started, in start order
        self._num_groups = 0
        self._admit_counter = 0
        self._finished_last_update: tuple[int, ...] = ()
        self._num_unfinished = 0
        self._num_added = 0
        self._capacity_tokens = self.kv.num_blocks * block_size  # the most tokens one request may hold
        self._joined_step, self._joined_ok = -1, True  # _join_decodes' answer, and for which step
        self._kv_threshold_blocks = None if config.kv_threshold is None else int(config.kv_threshold * num_kv_blocks)

    # --- workload in -----------------------------------------------------------------------
    def check_fits(self, request: Request) -> None:
        """Raises when ``request`` could never run: more KV blocks than the whole cache holds.
        Drivers call it for a whole workload before doing any work."""
        check_fits(self, request)

    def add(self, request: Request) -> None:
        if request.req_id in self.states:
            raise WorkloadError(f"request {request.req_id}: id added twice")
        self.check_fits(request)
        state = RequestState.of(request)
        self.states[request.req_id] = state
        self._num_unfinished += 1
        self._num_added += 1
        self.stats.logical_prefill_tokens += request.prompt_len
        if self.config.grouping:
            self._ungrouped.append(state)
        else:
            self.waiting.push(state)

    @property
    def has_unfinished(self) -> bool:
        return self._num_unfinished > 0

    @property
    def num_finished(self) -> int:
        return self._num_added - self._num_unfinished

    @property
    def finished_last_update(self) -> tuple[int, ...]:
        """The requests the last ``update`` (or decode stretch) finished, until the next schedule."""
        return self._finished_last_update

    @property
    def num_waiting(self) -> int:
        return len(self.waiting) + len(self._ungrouped)

    # --- one step -------------------------------------------------------------------------
    def schedule(self, now: float) -> BatchPlan:
        cfg = self.config
        stores, self._host_stores = self._host_stores, {}  # filled before this step
        self._fresh_host.clear()
        if cfg.grouping:
            regroup_waiting(self)  # online: regroup what waits, amortised
        if cfg.order in RANKS_WHOLE_QUEUE:
            self.waiting.resort(lambda unit: cached_tokens_of(self, unit))
        tokens_left = cfg.max_num_batched_tokens
        chunks: list[ScheduledChunk] = []
        scheduled: set[int] = set()
        preempted: list[int] = []
        self.now = now
        size, emit, step, cohort = self.block_size, self.emit_block_ids, self.step, self.cohort
        # SGLang's steps (unmixed.py): prompt chunks alone where there are any, else the decodes
        prompts_only = not cfg.mixed_batches and prefill_step(self, now, tokens_left, chunks, scheduled)
        if not prompts_only:
            if cfg.preemption == "sglang":
                retract_for_decodes(self, preempted)
            tokens_left, partial = schedule_decodes(self, tokens_left, chunks, scheduled, preempted)
            for state in partial if cfg.mixed_batches or not (chunks or cohort.ids) else ():  # (apart: none decodes)
                if tokens_left <= 0:
                    break
                count = min(state.num_tokens - state.num_computed_tokens, tokens_left)
                tokens_left -= self._schedule_running(state, count, chunks, scheduled, preempted, size, emit)
            # vLLM admits nothing in a step that preempted; an empty step helps no one
            if cfg.mixed_batches and tokens_left > 0 and (not preempted or not (chunks or cohort.ids)):
                tokens_left = admit(self, now, tokens_left, chunks)
        if not chunks and self.num_waiting and not self.running and not self._loading:
            break_deadlock(self, now, tokens_left, chunks)
        if prompts_only:  # its members wait, their cohort paused
            cohort = self._no_cohort
        groups = self._shared_prefix_groups(chunks, cohort) if cfg.prefix_aware_attention else \
            cascade_groups(self, chunks, cohort)
        decodes = cohort.batch(step, emit) if cohort.ids else NO_DECODES
        if self.reserve is not None:
            self.reserve.after_step(self, bool(preempted), chunks, bool(cohort.ids))
        plan = new_plan(step, tuple(chunks), groups, tuple(preempted), self._finished_last_update, decodes,
                        self._loaded_blocks * size, self._stored_blocks * size,
                        tuple((block, key) for key, block in stores.items()), tuple(self._host_loads),
                        tuple(self._host_drops), self._remote_blocks * size, tuple(self._load_starts))
        self._loaded_blocks = self._stored_blocks = self._remote_blocks = 0
        self._load_starts = []
        if self._host_loads or self._host_drops:
            self._host_loads, self._host_drops = [], []
        self._finished_last_update = ()
        self.step += 1
        return plan

    def _join_decodes(self) -> bool:
        """Moves running requests that are in steady decode into the cohort. False if one cannot
        join (its decode would register cache keys): then this step is scheduled one by one.
        Asked twice in a step (the simulator looks for a decode stretch first), it answers the
        second time from the first: nothing joins or leaves before ``schedule`` moves the step on."""
        if self._joined_step == self.step:
            return self._joined_ok
        self._joined_step = self.step
        self._joined_ok = ok = self._join_ready()
        return ok

    def _join_ready(self) -> bool:
        joining = []
        ok = True
        for state in self._others.values():
            computed = state.num_computed_tokens
            if state.num_tokens - computed != 1 or computed < state.prompt_len or state.request is None:
                continue
            if (state.num_registered_blocks < state.num_keys and self.kv.caching != "off"
                    and state.group is None):
                ok = False
                continue
            joining.append(state)
        for state in joining:
            del self._others[state.req_id]
            self.cohort.join(state, self.step)
        return ok

    def _schedule_running(self, state: RequestState, count: int, chunks: list, scheduled: set[int],
                          preempted: list[int], size: int, emit: bool, waits: bool = False) -> int:
        """Schedules ``count`` more tokens of a running request; returns the tokens taken.
        ``waits``: short of blocks, it takes none this step and preempts no one (unmixed.py)."""
        req_id = state.req_id
        if req_id not in self.running:
            return 0  # preempted earlier in this step
        start = state.num_computed_tokens
        end = start + count
        # Fast path: most decodes need neither a new block nor a key registration.
        if end > len(state.block_table) * size or state.num_registered_blocks < state.num_keys:
            if not grow(self, state, end, scheduled, preempted, waits=waits):
                return 0
        chunks.append(new_chunk(req_id, start, count, tuple(state.block_table) if emit else (),
                                end == state.num_tokens and state.request is not None, state.prompt_len))
        scheduled.add(req_id)
        return count

    # --- helpers ----------------------------------------------------------------------------
    def _keys(self, state: RequestState):
        keys = state.block_keys
        if keys is None:
            keys = self.chains.full_block_keys(state.prompt)
            limit = state.prompt_len // self.block_size  # a group prefix is a truncated prompt
            if len(keys) > limit:
                keys = keys[:limit]
            state.block_keys = keys
            state.num_keys = len(keys)
        return keys

    def _register(self, state: RequestState, end: int, at_once: bool = False) -> None:
        if self.kv.caching == "off" or (not self.members_cache and state.group is not None
                                        and state.request is not None):  # (members: members_cache)
            return
        if not (at_once or self.config.cache_in_step):  # SGLang: into the cache after the step (update)
            self._uncached.append((state, end))
            return
        keys = self._keys(state)
        self._register_blocks(state, keys, min(end // self.block_size, state.num_keys))

    def _register_blocks(self, state: RequestState, keys, upto: int) -> None:
        """``state``'s blocks up to ``upto`` findable by ``keys`` (written through; their window pages)."""
        if upto > state.num_registered_blocks:
            self.kv.register_run(state.block_table, keys, state.num_registered_blocks, upto)
            if self.host is not None:  # write-through
                write_through(self, state, keys, upto)
            if self.pages is not None:
                self.pages.keep(state, keys, state.num_registered_blocks, upto)
            state.num_registered_blocks = upto

    def _register_output(self, state: RequestState) -> None:
        """Leaves a finished request's generated blocks to the LRU cache under the identities the
        prompts that carry its output give them (``Request.output_segment``): the full blocks up
        to its last token, which has no KV (it was never fed back)."""
        if self.kv.caching == "off" or state.group is not None:
            return
        request = state.request
        keys = self.chains.full_block_keys(request.prompt + ((request.output_segment, request.output_len),))
        upto = min(len(keys), (state.prompt_len + request.output_len - 1) // self.block_size, len(state.block_table))
        self._register_blocks(state, keys, upto)

    def _shared_prefix_groups(self, chunks: list[ScheduledChunk],
                              cohort: DecodeCohort) -> tuple[SharedPrefixGroup, ...]:
        states = self.states
        # a listed chunk decodes when it is one token past the prompt (cost_model.py's test)
        return shared_prefix_groups(self, cohort, [
            (states[c.req_id], c.num_tokens == 1 and c.start >= c.prompt_len) for c in chunks])

    def _cohort_shared_prefix_groups(self) -> tuple[SharedPrefixGroup, ...]:
        """The shared-prefix groups of a step whose only chunks are the cohort's decodes."""
        return shared_prefix_groups(self, self.cohort) if self.config.prefix_aware_attention else cascade_groups(self)

    def loads_done(self, req_ids) -> None:
        """These requests' loads (``BatchPlan.loading``) are in: they run from the next step."""
        loads_done(self, req_ids)

    # --- decode stretches (the simulator's fast-forward) ---------------------------------------
    def decode_stretch(self, max_steps: int = 4096):
        """The coming steps (at least two, at most ``max_steps``) that are certain to be
        decode-only with nothing else changing (see ``stretch.py``), or None; one such step is
        scheduled as usual. Valid until the next ``schedule``/``add``/``advance_decodes``."""
        return find_decode_stretch(self, max_steps)

    def advance_decodes(self, stretch, num_steps: int, end_times) -> None:
        """Applies ``num_steps`` steps of ``stretch`` at once; ``end_times[j]`` ends step j."""
        apply_decode_stretch(self, stretch, num_steps, end_times)

    # --- results in ---------------------------------------------------------------------------
    def update(self, plan: BatchPlan, result: StepResult, now: float) -> None:
        if self._uncached:  # the step's blocks, cached now that it ran (cache_in_step=False)
            uncached, self._uncached = self._uncached, []
            for state, end in uncached:
                self._register(state, end, at_once=True)
        finished: list[int] = []
        sampled = result.sampled_tokens
        stats = self.stats
        states = self.states
        computed_tokens = computed_prefill = 0
        decodes = plan.decodes.req_ids
        if decodes:  # the cohort's decodes: only finishes need work
            computed_tokens = len(decodes)
            if sampled:
                for req_id in decodes:
                    token = sampled.get(req_id)
                    if token is not None:
                        states[req_id].output_token_ids.append(token)
            if plan.step in self.cohort.ends:
                for state in self.cohort.take_ends(plan.step):
                    self._finish(state, now)
                    finished.append(state.req_id)
        for chunk in plan.listed:
            state = states[chunk.req_id]
            start = chunk.start
            if state.num_computed_tokens != start:
                raise AssertionError(f"step {plan.step}: request {chunk.req_id} chunk starts at "
                                     f"{start}, but {state.num_computed_tokens} tokens are computed")
            count = chunk.num_tokens
            end = start + count
            state.num_computed_tokens = end
            computed_tokens += count
            prompt_len = state.prompt_len
            if start < prompt_len:
                prompt_part = (end if end < prompt_len else prompt_len) - start
                state.num_prompt_tokens_computed += prompt_part
                computed_prefill += prompt_part
            if end != state.num_tokens:
                continue
            if state.request is None:
                self._prefix_done(state)
                continue
            state.num_output_tokens += 1
            state.num_tokens = end + 1
            if sampled:
                token = sampled.get(state.req_id)
                if token is not None:
                    state.output_token_ids.append(token)
            if state.first_token_s is None:
                state.first_token_s = now
            if state.num_output_tokens >= state.output_len:
                self._finish(state, now)
                finished.append(state.req_id)
        stats.computed_tokens += computed_tokens
        stats.computed_prefill_tokens += computed_prefill
        self._finished_last_update = tuple(finished)

    def _prefix_done(self, prefix: RequestState) -> None:
        group = prefix.group
        self._leave_running(prefix)
        group.holder_blocks = prefix.block_table
        prefix.block_table = []
        group.prefix_done = True
        group.done_seq = self._admit_counter
        self.waiting.ready([m for m in group.members if not m.finished])

    def _leave_running(self, state: RequestState) -> None:
        del self.running[state.req_id]
        if state.window_blocks:
            self.kv.release(state.window_blocks)
            state.window_blocks = []
        if self.pages is not None:
            self.pages.leave(state)
        if state.cohort_offset is not None:
            self.cohort.leave(state, self.step)
        else:
            del self._others[state.req_id]

    def sync(self) -> None:
        """Brings every running request's token counters up to date (the decode cohort keeps
        them lazily); for callers that inspect ``states`` between steps, i.e. after an
        ``update`` and before the next ``schedule``."""
        self.cohort.sync_all(self.step)

    def _finish(self, state: RequestState, now: float) -> None:
        if state.request is not None and state.request.output_segment is not None:
            self._register_output(state)
        self._leave_running(state)
        self.kv.release(state.block_table)
        state.block_table = []
        state.block_keys = None  # a million finished requests' keys were gigabytes
        state.num_keys = 0
        state.finish_s = now
        self._num_unfinished -= 1
        group = state.group
        if group is not None:
            group.num_unfinished -= 1
            if group.num_unfinished == 0:
                self.kv.release(group.holder_blocks)
                group.holder_blocks = []
                self._active_groups.pop(group.group_id, None)
