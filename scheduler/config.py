"""Schedules as compositions: an ordering policy, a budget, and KV accounting.

Defaults follow the BatchLLM paper's baseline settings (vLLM v0.6.4 with chunked prefill:
``max_num_batched_tokens=2048``, ``max_num_seqs=256``; REFERENCES.md §1.6).
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

from .errors import ConfigError
from .kv_blocks import CACHING_MODES

ORDERS = ("fcfs", "decode_ratio", "lpm", "prompt", "blend", "priority")
PREEMPTIONS = ("vllm", "sglang")
RANKS_WHOLE_QUEUE = ("lpm", "blend")  # orders that rank the whole waiting queue before each step


@dataclass(frozen=True, slots=True)
class ScheduleConfig:
    name: str
    order: str = "fcfs"                 # fcfs | decode_ratio | lpm | prompt (sorted by prompt:
                                        # the prefix tree depth first, as a presorted batch) |
                                        # blend (BlendServe: depth first, shapes mixed; blend.py) |
                                        # priority (Request.priority, lower first; vLLM's policy)
    grouping: bool = False              # global prefix groups (BatchLLM §4.2-4.3.1); members
                                        # share their group's prefix blocks, whatever ``caching``
    caching: str = "lru"                # lru | off (see kv_blocks.py)
    max_num_batched_tokens: int = 2048  # token budget per step (chunked prefill)
    max_num_seqs: int | None = 256      # request-count cap; None: no cap
    kv_threshold: float | None = None   # memory-centric: admit only below this KV fraction
    enable_chunked_prefill: bool = True
    use_output_lengths: bool = False    # may the policy read output lengths?
    prefix_aware_attention: bool = False  # report shared-prefix groups for the kernel
    cascade_attention: bool = False     # vLLM's cascade attention (opt-in since vLLM PR #36318): a
                                        # prefix every running request shares, read once (cascade.py);
                                        # where prefix_aware_attention is on, its groups instead
    new_token_ratio: float | None = None  # SGLang's admission (reserve.py): room kept for this share of
                                        # every running answer still to come (SGLang's start: 0.7); None: none
    mixed_batches: bool = True          # decodes and prompt chunks in one step (vLLM, Sarathi); False: SGLang's
                                        # default, a step of prompt chunks where there are any (unmixed.py)
    cache_in_step: bool = True          # a step's blocks are in the prefix cache as it is scheduled: a later
                                        # request in the same step reads them (vLLM); False: after the step,
                                        # so each computes its own (SGLang inserts into its radix tree then)
    preemption: str = "vllm"            # vllm: a decode short of a block preempts the newest running request,
                                        # back to the queue's front; sglang: SGLang's retraction (retract.py)
    lpm_fallback_queue: int = 128       # SGLang: LPM falls back to FCFS above this queue size
    host_cache_blocks: int = 0          # KV blocks a host-memory tier keeps behind the LRU cache
                                        # (host_tier.py); 0: none. Idle where caching is off
    host_load_async: bool = False       # a request loading from the tier waits while others run
                                        # (vLLM's asynchronous connectors); False: loads in the step
    # vLLM's --prefix-cache-retention-interval, for sliding-window pages and linear layers' state
    # snapshots (window_pages.py): 0 (vLLM 0.29's default) caches only those a hit can start from
    # (at a prompt's end, a shared-prefix junction), N tokens one a segment of N too, None every
    # page (vLLM <= 0.28)
    retention_interval: int | None = 0

    def __post_init__(self) -> None:
        if self.order not in ORDERS:
            raise ConfigError(f"schedule {self.name!r}: unknown order {self.order!r}; expected one of {ORDERS}")
        if self.caching not in CACHING_MODES:
            raise ConfigError(
                f"schedule {self.name!r}: unknown caching {self.caching!r}; expected one of {CACHING_MODES}")
        if self.max_num_batched_tokens < 1:
            raise ConfigError(f"schedule {self.name!r}: max_num_batched_tokens must be >= 1")
        if self.max_num_seqs is not None and self.max_num_seqs < 1:
            raise ConfigError(f"schedule {self.name!r}: max_num_seqs must be >= 1 or None")
        if isinstance(self.host_cache_blocks, bool) or not isinstance(self.host_cache_blocks, int) \
                or self.host_cache_blocks < 0:
            raise ConfigError(f"schedule {self.name!r}: host_cache_blocks is {self.host_cache_blocks!r}; expected "
                              f"a whole number of blocks >= 0")
        for field, meaning in (
                ("host_load_async", "true or false"),
                ("cascade_attention", "true or false (where prefix_aware_attention is on, its groups read prefixes "
                                      "instead)"),
                ("cache_in_step", "true (a step's blocks are found by requests later in the step, as vLLM) or false "
                                  "(SGLang)"),
                ("mixed_batches", "true (decodes and prompt chunks share a step, as vLLM) or false (apart, as SGLang "
                                  "by default)")):
            if not isinstance(getattr(self, field), bool):
                raise ConfigError(f"schedule {self.name!r}: {field} is {getattr(self, field)!r}; expected {meaning}")
        if self.host_load_async and not self.host_cache_blocks:
            raise ConfigError(f"schedule {self.name!r}: host_load_async=true times loads from a host tier, and there "
                              f"is none: give host_kv_gb=N (or host_cache_blocks)")
        ratio = self.new_token_ratio
        if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1):
            raise ConfigError(f"schedule {self.name!r}: new_token_ratio is {ratio!r}; expected a share of the answers "
                              f"still to come in (0, 1] (SGLang starts at 0.7), or null for no reserve")
        if self.preemption not in PREEMPTIONS:
            raise ConfigError(f"schedule {self.name!r}: preemption is {self.preemption!r}; expected one of "
                              f"{PREEMPTIONS} (whose running requests give way when decodes run short of KV blocks)")
        if self.kv_threshold is not None and not (0.0 < self.kv_threshold <= 1.0):
            raise ConfigError(f"schedule {self.name!r}: kv_threshold must be in (0, 1] or None")
        interval = self.retention_interval
        if interval is not None and (isinstance(interval, bool) or not isinstance(interval, int) or interval < 0):
            raise ConfigError(f"schedule {self.name!r}: retention_interval is {interval!r}; expected a whole number "
                              f"of tokens >= 0 (a multiple of the block size), or null for every page")


SCHEDULES: dict[str, ScheduleConfig] = {
    # vLLM-like: arrival order, LRU automatic prefix caching, chunked prefill.
    "fcfs": ScheduleConfig("fcfs"),
    # BatchLLM groups, prefix computed once and held only for the group's lifetime.
    "prefix_grouped": ScheduleConfig("prefix_grouped", grouping=True, caching="off",
                                     prefix_aware_attention=True),
    # BatchLLM Eq. 3: requests by decode ratio (shortest prompt first when outputs are unknown).
    "decode_first": ScheduleConfig("decode_first", order="decode_ratio"),
    # BatchLLM: groups, ordered by Eq. 4, memory-centric token batching (no request cap).
    "batchllm": ScheduleConfig("batchllm", order="decode_ratio", grouping=True, caching="off",
                               max_num_seqs=None, kv_threshold=0.9, prefix_aware_attention=True),
    # SGLang-like: longest prefix match against the cache first.
    "lpm": ScheduleConfig("lpm", order="lpm"),
    # vLLM given the batch sorted by prompt (BatchLLM §6.2.1's sorting-only ablation): waiting
    # requests in the prefix tree's depth-first order, so that prompts sharing a prefix are
    # admitted one after the other while the LRU cache holds it; otherwise fcfs.
    "sorted": ScheduleConfig("sorted", order="prompt"),
    # vLLM given the batch in BlendServe's order (arXiv 2411.16102): prefixes kept together as
    # sorted keeps them, compute-heavy and memory-heavy prompts taken in turns; reads output
    # lengths (BlendServe estimates them), as the order needs a request's shape.
    "blend": ScheduleConfig("blend", order="blend", use_output_lengths=True),
    # SGLang's scheduler with its defaults (unmixed.py, reserve.py, retract.py): its queue in arrival
    # order (--schedule-policy fcfs), a radix cache (LRU), prompt chunks and decodes in separate steps,
    # prompts of up to 8,192 tokens a step (--chunked-prefill-size on GPUs of 35-160 GB), at most
    # 2,048 running (the least of its default, 2,048-4,096 by KV pool and context length), room
    # kept for 0.7 of every running answer, its retraction, and blocks cached after their step.
    "sglang": ScheduleConfig("sglang", max_num_batched_tokens=8192, max_num_seqs=2048, mixed_batches=False,
                             cache_in_step=False, new_token_ratio=0.7, preemption="sglang"),
    # vLLM's --scheduling-policy priority: waiting requests by Request.priority (lower first),
    # then arrival. Agents' turns carry their session's index: the oldest session's turn first.
    "priority": ScheduleConfig("priority", order="priority"),
}


def from_presets(kind: str, presets: dict, name: str, overrides: dict):
    """``presets[name]`` with the non-None ``overrides`` applied; a ConfigError naming the
    choices for an unknown name, or the field for an unknown option."""
    if name not in presets:
        raise ConfigError(f"unknown {kind} {name!r}; expected one of {sorted(presets)}")
    return with_overrides(kind, presets[name], overrides)


def with_overrides(kind: str, spec, overrides: dict):
    """``spec`` (a dataclass named ``spec.name``) with the non-None ``overrides`` applied."""
    name = spec.name
    overrides = {k: v for k, v in overrides.items() if v is not None}
    known = {f.name for f in fields(spec)} - {"name"}
    unknown = set(overrides) - known
    if unknown:
        raise ConfigError(f"{kind} {name!r}: unknown field(s) {sorted(unknown)}; expected some of {sorted(known)}")
    try:
        return replace(spec, **overrides)
    except TypeError as error:
        raise ConfigError(f"{kind} {name!r}: {error}") from None


def schedule_config(name: str, **overrides: object) -> ScheduleConfig:
    """A preset by name, with fields overridden (``None`` too: no request cap, no reserve). A name may
    carry its own fields after a colon, ``"sglang:max_num_seqs=256,order=lpm"``: that preset with
    those (over ``overrides``), under the whole name, to compare variants side by side."""
    base, _, spec = name.partition(":")
    if base not in SCHEDULES:
        raise ConfigError(f"unknown schedule {base!r}{f' in {name!r}' if spec else ''}; expected one of "
                          f"{sorted(SCHEDULES)}, optionally with fields after a colon (fcfs:new_token_ratio=0.7)")
    overrides = {**overrides, **_variant_fields(name, spec)}
    known = {f.name for f in fields(ScheduleConfig)} - {"name"}
    unknown = set(overrides) - known
    if unknown:
        raise ConfigError(f"schedule {name!r}: unknown option(s) {sorted(unknown)}; expected some of {sorted(known)}")
    return replace(SCHEDULES[base], name=name, **overrides)


def _variant_fields(name: str, spec: str) -> dict:
    """``field=value`` pairs, comma separated; values read as YAML reads them (numbers, true,
    false, null, else text)."""
    if not spec:
        return {}
    found = {}
    for pair in spec.split(","):
        key, equals, text = (part.strip() for part in pair.partition("="))
        if not key or not equals or not text:
            raise ConfigError(f"schedule {name!r}: expected field=value pairs after the colon, separated by commas "
                              f"(fcfs:new_token_ratio=0.7,preemption=sglang), got {pair!r}")
        found[key] = _value(text)
    return found


def _value(text: str) -> object:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("null", "none"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
