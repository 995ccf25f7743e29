"""The value objects passed between the scheduler and an executor (simulator or engine)."""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping


@dataclass(frozen=True, slots=True)
class ScheduledChunk:
    """Compute tokens ``[start, start + num_tokens)`` of request ``req_id``.

    ``block_ids`` is the request's KV block table covering ``start + num_tokens`` tokens
    (empty when the scheduler was built with ``emit_block_ids=False``, as the simulator does).
    ``samples`` says whether this chunk ends at the request's last known token, so that the
    executor samples a token from it. ``prompt_len`` lets an executor tell prompt tokens
    from output tokens without a lookup.
    """
    req_id: int
    start: int
    num_tokens: int
    block_ids: tuple[int, ...]
    samples: bool
    prompt_len: int

    @property
    def end(self) -> int:
        return self.start + self.num_tokens

    @property
    def is_decode(self) -> bool:
        return self.num_tokens == 1 and self.start >= self.prompt_len


def _builder(cls, names: tuple[str, ...], doc: str, **fixed):
    """A constructor of the frozen dataclass ``cls`` taking the fields ``names`` positionally
    (and ``fixed`` values for the rest): the same object as ``cls(...)`` at half the cost, as
    it sets each slot directly where the generated ``__init__`` goes through
    ``object.__setattr__`` per field. For the scheduler's hot path; it checks nothing."""
    setters = {f"_set_{name}": getattr(cls, name).__set__ for name in (*names, *fixed)}
    body = "".join(f"    _set_{name}(obj, {name})\n" for name in names)
    body += "".join(f"    _set_{name}(obj, _fixed_{name})\n" for name in fixed)
    namespace = {"_new": object.__new__, "_cls": cls, **setters, **{f"_fixed_{k}": v for k, v in fixed.items()}}
    exec(f"def build({', '.join(names)}):\n    obj = _new(_cls)\n{body}    return obj\n", namespace)
    build = namespace["build"]
    build.__name__ = build.__qualname__ = f"new_{cls.__name__}"
    build.__doc__ = doc
    return build


new_chunk = _builder(ScheduledChunk, ("req_id", "start", "num_tokens", "block_ids", "samples", "prompt_len"),
                     "A ScheduledChunk (fields in order), built without its __init__'s costs.")


@dataclass(frozen=True, slots=True)
class SharedPrefixGroup:
    """Requests of this step that read the same prefix blocks (for a prefix-aware kernel).
    ``prefix_block_ids`` is empty when the scheduler emits no block ids (the simulator).
    ``num_decoding``: how many of them decode in this step (the rest compute prompt tokens);
    -1 where whoever built the group did not count (a cost model then counts)."""
    prefix_len: int
    prefix_block_ids: tuple[int, ...]
    req_ids: tuple[int, ...]
    num_decoding: int = -1


new_shared_prefix_group = _builder(
    SharedPrefixGroup, ("prefix_len", "prefix_block_ids", "req_ids", "num_decoding"),
    "A SharedPrefixGroup (fields in order), built without its __init__'s costs.")


@dataclass(frozen=True, slots=True)
class DecodeBatch:
    """The steady decodes of a step, compactly: one token for each of ``req_ids``.

    Request ``req_ids[i]`` computes token ``offsets[i] + step`` (its start; its context after
    the step is one more) and samples from it; ``prompt_lens[i]`` is its prompt length;
    ``block_ids[i]`` its block table (empty when the scheduler emits no block ids).
    ``context_sum`` is the sum of the contexts after the step. The scheduler hands running
    decodes over in this form so that a step costs it O(changes), not O(running requests);
    ``BatchPlan.chunks`` turns them into ordinary ``ScheduledChunk``s for executors that want them.
    """
    step: int
    req_ids: tuple[int, ...] = ()
    offsets: tuple[int, ...] = ()
    prompt_lens: tuple[int, ...] = ()
    block_ids: tuple[tuple[int, ...], ...] = ()
    context_sum: int = 0

    @property
    def starts(self) -> tuple[int, ...]:
        step = self.step
        return tuple(offset + step for offset in self.offsets)

    def chunks(self) -> tuple[ScheduledChunk, ...]:
        blocks = self.block_ids or ((),) * len(self.req_ids)
        return tuple(new_chunk(r, s, 1, b, True, p)
                     for r, s, b, p in zip(self.req_ids, self.starts, blocks, self.prompt_lens))


NO_DECODES = DecodeBatch(-1)
new_decode_batch = _builder(DecodeBatch, ("step", "req_ids", "offsets", "prompt_lens", "block_ids", "context_sum"),
                            "A DecodeBatch (fields in order), built without its __init__'s costs.")


@dataclass(frozen=True, slots=True)
class BatchPlan:
    """Everything an executor needs for one step.

    The step computes ``decodes`` (steady decodes, in admission order) and then
    ``listed`` (every other chunk: decodes the scheduler handled one by one, partial
    prefills, admissions). ``chunks`` is the whole step as ``ScheduledChunk``s in that order.
    ``preempted``: requests whose KV was dropped in this step (they recompute later).
    ``finished``: requests that finished in the previous update (an executor may drop state).
    """
    step: int
    listed: tuple[ScheduledChunk, ...]
    shared_prefix_groups: tuple[SharedPrefixGroup, ...] = ()
    preempted: tuple[int, ...] = ()
    finished: tuple[int, ...] = ()
    decodes: DecodeBatch = NO_DECODES
    # prompt tokens whose KV this step loads from a host-memory tier (scheduler/host_tier.py)
    loaded_tokens: int = 0
    # prompt tokens whose KV this step copies to the host tier (write-through; computed by it or,
    # for a finished request's output, by earlier ones)
    stored_tokens: int = 0
    # for an executor with a host tier (block ids emitted): before computing, copy these blocks'
    # KV to host memory under their identities (blocks filled by earlier steps), then these
    # identities' KV from host memory into these blocks ((block id, identity) pairs), then
    # forget these identities (the tier dropped them)
    host_stores: tuple[tuple[int, int], ...] = ()
    host_loads: tuple[tuple[int, int], ...] = ()
    host_drops: tuple[int, ...] = ()
    # of loaded_tokens, those another engine stored (a tier shared by engines: over the network)
    remote_loaded_tokens: int = 0
    # loads this step starts beside the computation (``host_load_async``): (request, tokens, of
    # them remote) each; the request computes once its executor reports them done
    # (``Scheduler.loads_done``). Their tokens are within loaded_tokens.
    loading: tuple[tuple[int, int, int], ...] = ()
    _all: tuple | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def chunks(self) -> tuple[ScheduledChunk, ...]:
        """Every chunk of the step (built once per plan)."""
        if not self.decodes.req_ids:
            return self.listed
        chunks = self._all
        if chunks is None:
            chunks = self.decodes.chunks() + self.listed
            object.__setattr__(self, "_all", chunks)
        return chunks

    @property
    def num_requests(self) -> int:
        return len(self.listed) + len(self.decodes.req_ids)

    def outline(self) -> tuple:
        """(step, ((request, start, tokens), ...)): what two executions of a workload compare to
        know they ran the same plans (block ids aside, which only an engine receives)."""
        return self.step, tuple((c.req_id, c.start, c.num_tokens) for c in self.chunks)

    @property
    def num_tokens(self) -> int:
        return sum(chunk.num_tokens for chunk in self.listed) + len(self.decodes.req_ids)

    @property
    def is_empty(self) -> bool:
        """Nothing to compute (loads it starts aside)."""
        return not self.listed and not self.decodes.req_ids


@dataclass(frozen=True, slots=True)
class StepResult:
    """What executing a plan gave: measured (engine) or predicted (simulator). ``kernel_s``:
    seconds per kernel, where measured (the simulator's predicted ones go to its step log)."""
    step: int
    duration_s: float
    sampled_tokens: Mapping[int, int] = field(default_factory=dict)
    kernel_s: Mapping[str, float] = field(default_factory=dict)


new_plan = _builder(BatchPlan, ("step", "listed", "shared_prefix_groups", "preempted", "finished", "decodes",
                               "loaded_tokens", "stored_tokens", "host_stores", "host_loads", "host_drops",
                               "remote_loaded_tokens", "loading"),
                    "A BatchPlan (fields in order), built without its __init__'s costs.", _all=None)
new_step_result = _builder(StepResult, ("step", "duration_s"),
                           "A StepResult with no sampled tokens or kernel times (read-only empty mappings), "
                           "built without its __init__'s costs.",
                           sampled_tokens=MappingProxyType({}), kernel_s=MappingProxyType({}))
