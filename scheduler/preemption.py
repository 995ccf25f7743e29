"""A step's decodes, and the steps that preempt: decodes scheduled one request at a time (a
decode short of a KV block preempts, recompute, the newest running request not yet scheduled
this step), the cohort's decodes short of blocks doing the same in turn, idle group prefixes
dropped, and a stuck queue unblocked. Functions of the ``Scheduler``, split out of scheduler.py.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .admission import admit
from .cohort import ADMISSION
from .contract import ScheduledChunk, new_chunk
from .errors import SchedulerStuck
from .request import RequestState

if TYPE_CHECKING:
    from .scheduler import Scheduler


def schedule_decodes(scheduler: "Scheduler", tokens_left: int, chunks: list, scheduled: set[int],
                     preempted: list[int]) -> tuple[int, list]:
    """A step's decodes: the cohort's (a block for each member due one, taken in turn, preempting,
    where they outnumber the free blocks), or request by request where the cohort cannot take
    them; returns the tokens left and the running requests still to schedule."""
    step, cohort = scheduler.step, scheduler.cohort
    if scheduler.lazy_decodes and scheduler._join_decodes() and len(cohort) <= tokens_left:
        due = cohort.due.get(step)
        if due and len(due) > scheduler.kv.num_free_blocks:  # someone gets preempted
            # blocks taken in turn while the members still sit in this step's bucket (a victim
            # leaves the cohort from there), then the survivors re-bucketed
            decode_blocks_preempting(scheduler, sorted(due, key=ADMISSION), preempted)
            cohort.take_due(step)
        else:
            due = cohort.take_due(step)
            if due:
                for state, block in zip(due, scheduler.kv.allocate(len(due))):
                    state.block_table.append(block)
        return tokens_left - len(cohort), list(scheduler._others.values())
    if cohort.states:
        cohort.dissolve(step)
        scheduler._others = dict(scheduler.running)
    partial = schedule_decodes_one_by_one(scheduler, chunks, scheduled, preempted)
    return tokens_left - len(chunks), partial


def schedule_decodes_one_by_one(scheduler: "Scheduler", chunks: list, scheduled: set[int],
                                preempted: list[int]) -> list:
    """The decodes of a step that the cohort cannot take, request by request in admission
    order (a decode short of a block preempts); returns the running partial prefills."""
    tokens_left = scheduler.config.max_num_batched_tokens
    size = scheduler.block_size
    emit = scheduler.emit_block_ids
    running = scheduler.running
    partial: list[RequestState] = []
    for state in list(running.values()):
        computed = state.num_computed_tokens
        if state.num_tokens - computed != 1 or computed < state.prompt_len:
            partial.append(state)
            continue
        if tokens_left <= 0:
            break
        req_id = state.req_id
        if preempted and req_id not in running:
            continue  # preempted earlier in this step
        end = computed + 1
        if end > len(state.block_table) * size or state.num_registered_blocks < state.num_keys:
            if not grow(scheduler, state, end, scheduled, preempted):
                continue
        chunks.append(new_chunk(req_id, computed, 1, tuple(state.block_table) if emit else (), True,
                                state.prompt_len))
        scheduled.add(req_id)
        tokens_left -= 1
    return partial


def grow(scheduler: "Scheduler", state: RequestState, end: int, scheduled: set[int] | frozenset[int],
         preempted: list[int], members_unscheduled: bool = False, waits: bool = False) -> bool:
    """Blocks for ``end`` tokens. While short, preempt (recompute) the newest running request
    not yet scheduled this step; failing that an idle group's prefix; failing that ``state``.
    The cohort's members count as scheduled (they all decode in the step), unless
    ``members_unscheduled``: while the cohort's own decodes take their blocks in turn.
    ``waits``: short, take nothing and answer False (a step of prompts: unmixed.py)."""
    need = scheduler.kv.blocks_for(end) - len(state.block_table)
    while need > 0:
        blocks = scheduler.kv.allocate(need)
        if blocks is not None:
            state.block_table.extend(blocks)
            break
        if waits:
            return False
        victim = next(s for s in reversed(scheduler.running.values())
                      if s.req_id not in scheduled and (members_unscheduled or s.cohort_offset is None))
        # a group's prefix short of blocks drops an idle group's prefix done since it started (whose
        # members, at the queue's front, only its chunks kept out) once at most: then it yields.
        # Dropping such prefixes every time, the prefixes took turns and no member ran (a livelock)
        since = state.admit_seq if state.request is None else None
        if victim is state and preempt_idle_group(scheduler, done_since=since):
            continue
        # a prefix that yields goes back into the ordered queue, behind the members at its front:
        # pushed to the front, it would take the next step's budget again ahead of them
        preempt(scheduler, victim, requeue=victim is state)
        preempted.append(victim.req_id)
        if victim is state:
            return False
    scheduler._register(state, end)
    return True


def decode_blocks_preempting(scheduler: "Scheduler", due: list[RequestState], preempted: list[int]) -> None:
    """A steady step whose cohort members due a block (``due``, in admission order) outnumber
    the free blocks: each takes its block in turn, as one-by-one scheduling has it, growing
    like any request; the newest running request is newer than the member, so not scheduled
    yet in this step. The others stay in the cohort; the caller re-buckets them."""
    size = scheduler.block_size
    running = scheduler.running
    for state in due:
        if state.req_id in running:  # else preempted by a member before it
            grow(scheduler, state, len(state.block_table) * size + 1, frozenset(), preempted,
                 members_unscheduled=True)


def preempt(scheduler: "Scheduler", state: RequestState, requeue: bool = False) -> None:
    """Drops ``state``'s KV (recompute later) and puts it back in the queue: at its front (vLLM),
    or as SGLang retracts; a group's prefix with ``requeue``, its group into the ordered part."""
    scheduler._leave_running(state)
    scheduler.kv.release(state.block_table)
    state.block_table = []
    state.num_registered_blocks = 0
    state.num_computed_tokens = 0
    state.num_preemptions += 1
    scheduler.stats.num_preemptions += 1
    if requeue and state.request is None:
        _requeue_group(scheduler, state.group)
    elif scheduler.config.preemption == "vllm" or state.request is None:
        scheduler.waiting.push_front(state)
    elif state.group is not None:  # SGLang's (retract.py), a started group's member: behind its ready members
        scheduler.waiting.ready([state])
    else:  # SGLang's: appended to the queue
        scheduler.waiting.push(state, scheduler.now)


def preempt_idle_group(scheduler: "Scheduler", done_since: int | None = None) -> bool:
    """Drops the held prefix of the newest group none of whose members runs; the prefix is
    recomputed later and its members wait for it again. False if there is no such group.
    ``done_since`` (an admission number): not a group whose prefix was done since then and has
    been dropped before."""
    for group in reversed(scheduler._active_groups.values()):
        if group.prefix_done and not any(m.req_id in scheduler.running for m in group.members) \
                and (done_since is None or group.done_seq < done_since or not group.prefix.num_preemptions):
            break
    else:
        return False
    scheduler.kv.release(group.holder_blocks)
    group.holder_blocks = []
    scheduler.waiting.remove_front_where(lambda unit: getattr(unit, "group", None) is group)
    prefix = group.prefix
    prefix.num_computed_tokens = 0
    prefix.num_registered_blocks = 0
    prefix.num_preemptions += 1
    scheduler.stats.num_group_preemptions += 1
    _requeue_group(scheduler, group)
    return True


def _requeue_group(scheduler: "Scheduler", group) -> None:
    """``group``, its prefix dropped, back into the ordered queue, not the front: pushed to the
    front it would be admitted again at once, ahead of the blocked work it was dropped for (a
    livelock), and ahead of the members of groups whose prefixes are done."""
    group.prefix_done = False
    group.started = False
    del scheduler._active_groups[group.group_id]
    scheduler.waiting.push(group)


def break_deadlock(scheduler: "Scheduler", now: float, tokens_left: int, chunks: list[ScheduledChunk]) -> None:
    """Nothing runs, yet the head of the queue does not fit: idle group prefixes hold the
    memory. Preempt them, newest first, until something fits; first, what this step's own
    preemptions freed may let the head in (a step of decodes apart from prompts admits nothing:
    unmixed.py), and an idle group dropped then would be one whose members could run."""
    admit(scheduler, now, tokens_left, chunks)
    while not chunks and not scheduler._loading:  # (a request admitted to load its blocks waits)
        if not preempt_idle_group(scheduler):
            raise SchedulerStuck(f"step {scheduler.step}: {scheduler.num_waiting} requests wait, none runs, and "
                                 f"{_why_the_head_waits(scheduler)}")
        admit(scheduler, now, tokens_left, chunks)


def _why_the_head_waits(scheduler: "Scheduler") -> str:
    """The end of a SchedulerStuck message: what keeps the queue's head out."""
    unit = scheduler.waiting.peek()
    state = getattr(unit, "prefix", unit)  # (a group: its prefix)
    config = scheduler.config
    if not config.enable_chunked_prefill and state.num_tokens > config.max_num_batched_tokens:
        # its prompt fitted (check_fits); preempted, it recomputes its answer so far with it
        return (f"request {state.req_id}, preempted after {state.num_output_tokens} output tokens, must recompute its "
                f"{state.num_tokens} tokens in one step without chunked prefill, and schedule {config.name!r} takes at "
                f"most {config.max_num_batched_tokens} tokens a step: set enable_chunked_prefill=true or "
                f"max_num_batched_tokens >= {state.prompt_len + state.output_len - 1} (vLLM asks for "
                f"max_num_batched_tokens >= max_model_len without chunked prefill)")
    return f"the head of the queue does not fit in {scheduler.kv.num_free_blocks} free KV blocks"
