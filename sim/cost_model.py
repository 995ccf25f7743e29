"""Predicts a step's time from its batch shape: the sum over kernels of profile lookups.

The cost model sees shapes, never requests. ``decode_steps`` costs whole decode stretches at
once with numpy; a single step is costed with plain floats through the same lookups and the
same order of additions (IEEE doubles either way), so fast-forwarded and step-by-step
simulations agree to the last bit (tests/test_sim_timeline.py holds them to it).
"""
from __future__ import annotations

import numpy as np

from scheduler import BatchPlan
from scheduler.errors import ConfigError
from scheduler.model_spec import ModelSpec

from .profile import LAYER_KERNELS, SCHEDULE_OVERHEAD, Profile

KERNELS = LAYER_KERNELS + ("lm_head_sampling", "step_overhead")
DENSE = ("linear_qkv", "linear_o", "mlp", "elementwise")  # looked up by tokens in the step
_FEW_STEPS = 32  # decode stretches up to this long are costed step by step (no numpy per kernel)


def _memo(lookup, limit: int = 1 << 16):
    cache: dict = {}
    get = cache.get

    def remembered(key):
        value = get(key)
        if value is None:
            value = lookup(key)
            if len(cache) < limit:
                cache[key] = value
        return value
    remembered.get = get  # the cache's own get, for loops that try it before calling
    return remembered


class CostModel:
    def __init__(self, profile: Profile, model: ModelSpec, schedule: str | None = None) -> None:
        """``schedule``: the schedule whose steps are costed; its scheduler work beyond fcfs's
        is charged to step_overhead where the profile measured it (``schedule_overhead_*``)."""
        self.profile = profile
        self.model = model
        self.schedule = schedule
        self.layers = model.num_layers
        self.tensor_parallel = int(profile.provenance.get("tensor_parallel", 1))  # the GPUs of one engine
        self._t = profile.tables
        # a measured backend without a shared-prefix kernel reads prefixes as ordinary decodes
        self.prefix_aware = bool(profile.provenance.get("prefix_aware_attention", True))
        # per-token-count lookups repeat endlessly over a run (counts are bounded by the token
        # budget): remembered, they are the same floats without the interpolation
        self._dense = _memo(lambda n: tuple(profile.tables[k].scalar(n) for k in DENSE))
        self._sampling = _memo(profile.tables["lm_head_sampling"].scalar)
        self._prefill_at = profile.tables["attn_prefill"].point_lookup()
        warm = profile.tables.get("attn_prefill_warm")  # a step's chunks after its first (measured profiles)
        self._prefill_warm_at = warm.point_lookup() if warm is not None else self._prefill_at
        self._decode_at = profile.tables["attn_decode"].point_lookup()
        step = profile.tables["step_overhead"]
        extra = profile.tables.get(f"{SCHEDULE_OVERHEAD}{schedule}") if schedule else None
        self._schedule_extra = extra
        self._overhead = _memo(step.scalar if extra is None else lambda n: step.scalar(n) + extra.scalar(n))
        # host work of prompt chunks (measured profiles); charged to step_overhead, absent = 0
        prompt = profile.tables.get("prefill_overhead")
        self._prefill_overhead = _memo(lambda key: prompt.scalar(*key)) if prompt is not None else None
        # (members, prefix length) of shared-prefix groups repeat from step to step
        shared = profile.tables["attn_shared_prefix"]
        self._shared_prefix = _memo(lambda key: shared.scalar(*key))
        copy, store, remote = (profile.tables.get(f"host_kv_{kind}") for kind in ("copy", "store", "remote_copy"))
        self._host_copy = copy.scalar if copy is not None else self._no_host_copy  # (roofline only)
        self._host_store = store.scalar if store is not None else self._no_host_copy
        self._remote_copy = remote.scalar if remote is not None else self._no_host_copy
        # loads pipelined layer by layer under the step's kernels (LMCache's layerwise retrieval),
        # or (the default) before the forward pass
        self._overlap_loads = bool(profile.provenance.get("host_load_overlap", False))

    def _total(self, parts: dict[str, np.ndarray]) -> np.ndarray:
        layer = parts["linear_qkv"] + parts["linear_o"] + parts["mlp"] + parts["elementwise"]
        layer = layer + parts["attn_prefill"] + parts["attn_decode"] + parts["attn_shared_prefix"]
        return layer * self.layers + parts["lm_head_sampling"] + parts["step_overhead"]

    def _whole_step(self, parts: dict) -> dict:
        """Profile tables hold one layer's time; records hold each kernel's time over the whole
        step (all layers), as the engine measures it. Scaled after the total is summed, so the
        total is computed exactly as before."""
        layers = self.layers
        for name in LAYER_KERNELS:
            parts[name] = parts[name] * layers
        return parts

    def decode_steps(self, batch: int, context_sums: np.ndarray, shared: tuple[tuple[int, int], ...],
                     shared_tokens: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Costs (and seconds per kernel over each whole step) of decode-only steps of ``batch``
        requests whose contexts (after the step) sum to each of ``context_sums``. ``shared``:
        (decoding members, prefix length) per group read by a shared-prefix kernel;
        ``shared_tokens``: the prefix tokens they cover."""
        if len(context_sums) <= _FEW_STEPS:
            return self._few_decode_steps(batch, context_sums, shared, shared_tokens)
        t = self._t
        steps = np.asarray(context_sums, dtype=float)
        ones = np.ones_like(steps)
        per_step = lambda value: ones * value
        parts = {
            "linear_qkv": per_step(t["linear_qkv"](batch)),
            "linear_o": per_step(t["linear_o"](batch)),
            "mlp": per_step(t["mlp"](batch)),
            "elementwise": per_step(t["elementwise"](batch)),
            "attn_prefill": ones * 0.0,
            "attn_decode": t["attn_decode"](batch, (steps - shared_tokens) / batch),
            "attn_shared_prefix": per_step(sum(self._shared_prefix(group) for group in shared)),
            "lm_head_sampling": per_step(t["lm_head_sampling"](batch)),
            "step_overhead": per_step(self._decode_overhead(batch)),
        }
        return self._total(parts), self._whole_step(parts)

    def _few_decode_steps(self, batch: int, context_sums, shared, shared_tokens: int):
        """``decode_steps`` for a short stretch, step by step in plain floats: ``step``'s
        lookups and order of additions, which equal the vectorised ones bit for bit
        (tests/test_profile_validate.py), without a dozen numpy calls for a few steps."""
        qkv, o, mlp, elementwise = self._dense(batch)
        dense = qkv + o + mlp + elementwise
        attn_shared = sum((self._shared_prefix(group) for group in shared), 0.0)
        sampling, overhead = self._sampling(batch), self._overhead(batch)
        layers, decode_at = self.layers, self._decode_at
        decodes = [decode_at(batch, (context - shared_tokens) / batch) for context in context_sums.tolist()]
        totals = [(dense + 0.0 + d + attn_shared) * layers + sampling + overhead for d in decodes]
        count = len(decodes)
        full = lambda value: np.full(count, value)
        parts = {"linear_qkv": full(qkv * layers), "linear_o": full(o * layers), "mlp": full(mlp * layers),
                 "elementwise": full(elementwise * layers), "attn_prefill": full(0.0),
                 "attn_decode": np.array(decodes) * layers, "attn_shared_prefix": full(attn_shared * layers),
                 "lm_head_sampling": full(sampling), "step_overhead": full(overhead)}
        return np.array(totals), parts

    def load_seconds(self, tokens: int, remote: int = 0) -> float:
        """Seconds to load ``tokens`` tokens' KV from a host tier, ``remote`` of them over the
        network from another machine's."""
        return self._host_copy(tokens - remote) + (self._remote_copy(remote) if remote else 0.0)

    def _no_host_copy(self, tokens):
        raise ConfigError(f"profile {self.profile.label} has no host_kv_copy / host_kv_store table (or no "
                          f"host_kv_remote_copy, for a tier the replicas share): a host-memory KV tier is costed by a "
                          f"roofline profile, or by a profile measured since they are (batchlab profile)")

    def _decode_overhead(self, batch: int):
        """step_overhead(batch) and the schedule's extra, added as ``step`` adds them."""
        base = self._t["step_overhead"](batch)
        return base if self._schedule_extra is None else base + self._schedule_extra(batch)

    def for_schedule(self, schedule: str) -> "CostModel":
        """This cost model for ``schedule``'s steps (itself where nothing differs); a variant
        (``sglang:max_num_seqs=256``) is charged its preset's scheduler work."""
        schedule = schedule.partition(":")[0]
        wanted = schedule if f"{SCHEDULE_OVERHEAD}{schedule}" in self.profile.tables else None
        have = self.schedule if self._schedule_extra is not None else None
        return self if wanted == have else CostModel(self.profile, self.model, wanted)

    def step(self, plan: BatchPlan) -> tuple[float, tuple[float, ...], tuple[int, int, int]]:
        """(predicted seconds, seconds per kernel over the whole step (all layers) in KERNELS
        order, (tokens, prefill tokens, sampled tokens)).

        A decode-only step goes through here too, with plain floats: its lookups and additions
        are decode_steps' own, in the same order (a decode-only step has tokens = sampled =
        requests = batch), so the two agree to the last bit."""
        decodes = plan.decodes
        batch = tokens = sampled = len(decodes.req_ids)  # the steady decodes, in aggregate
        decode_context = decodes.context_sum
        listed_decodes = []
        prefill = self._prefill_at
        attn_prefill = 0.0  # summed chunk by chunk, in plan order: the first as a step's only one, the rest warm
        num_prefills = 0
        for chunk in plan.listed:
            count = chunk.num_tokens
            tokens += count
            sampled += chunk.samples
            start = chunk.start
            if count == 1 and start >= chunk.prompt_len:
                listed_decodes.append(chunk.req_id)
                decode_context += start + 1
            else:
                attn_prefill += prefill(count, start + count)
                num_prefills += 1
                prefill = self._prefill_warm_at
        batch += len(listed_decodes)
        if self.prefix_aware and plan.shared_prefix_groups:
            attn_shared, shared_tokens = self._shared_attention(plan, decodes.req_ids, listed_decodes)
        else:
            shared_tokens, attn_shared = 0, 0.0
        qkv, o, mlp, elementwise = self._dense(tokens)
        overhead = self._overhead(len(plan.listed) + len(decodes.req_ids))  # the plan's requests
        if self._prefill_overhead is not None and num_prefills:
            overhead = overhead + self._prefill_overhead((num_prefills, tokens - batch))
        # a host tier's copies, with the step's host work: loads before the forward pass, stores
        # (write-through) after it where they delay the step, as LMCache 0.3's connector waits for
        # them (hungchun0201.github.io, "LMCache bottleneck analysis", 2026)
        if plan.stored_tokens:
            overhead = overhead + self._host_store(plan.stored_tokens)
        attn_decode = self._decode_at(batch, (decode_context - shared_tokens) / batch) if batch else 0.0
        sampling = self._sampling(sampled)
        layers = self.layers
        if plan.loaded_tokens:  # from this machine's memory over PCIe, or another's over the network
            loaded, remote = plan.loaded_tokens, plan.remote_loaded_tokens
            for _, beside, far in plan.loading:  # loads beside the step (host_load_async): the executor's
                loaded, remote = loaded - beside, remote - far
            load = self.load_seconds(loaded, remote) if loaded else 0.0
            if self._overlap_loads:  # layer by layer under the forward pass: only what it does not hide
                gpu = (qkv + o + mlp + elementwise + attn_prefill + attn_decode + attn_shared) * layers + sampling
                load = max(load - gpu, 0.0)
            overhead = overhead + load
        total = (qkv + o + mlp + elementwise + attn_prefill + attn_decode + attn_shared) * layers + sampling + overhead
        parts = (qkv * layers, o * layers, mlp * layers, elementwise * layers, attn_prefill * layers,
                 attn_decode * layers, attn_shared * layers, sampling, overhead)  # as _whole_step scales
        return total, parts, (tokens, tokens - batch, sampled)

    def _shared_attention(self, plan: BatchPlan, steady_decodes, listed_decodes) -> tuple[float, int]:
        """(one layer's shared-prefix attention, the prefix tokens it covers): the lookups of
        ``shared_decode_groups``' groups summed in their order from 0.0, in one pass."""
        remembered = self._shared_prefix
        get = remembered.get
        total = 0.0
        covered = 0
        for group in plan.shared_prefix_groups:
            members = group.num_decoding
            if members >= 2:
                key = (members, group.prefix_len)
                value = get(key)
                total += remembered(key) if value is None else value
                covered += members * group.prefix_len
            elif members < 0:  # someone left the count to us: the general way
                shared, covered = self.shared_decode_groups(plan, steady_decodes, listed_decodes)
                return sum((remembered(group) for group in shared), 0.0), covered
        return total, covered

    @staticmethod
    def shared_decode_groups(plan: BatchPlan, steady_decodes, listed_decodes) -> tuple[tuple[tuple[int, int], ...], int]:
        """Groups whose decoding members read their prefix through the shared-prefix kernel
        (at least two decoding members; a lone member is an ordinary decode)."""
        shared = []
        covered = 0
        decode_ids = None
        for group in plan.shared_prefix_groups:
            members = group.num_decoding
            if members < 0:  # not counted by whoever built the plan: count here
                if decode_ids is None:
                    decode_ids = set(steady_decodes).union(listed_decodes)
                members = sum(1 for r in group.req_ids if r in decode_ids)
            if members >= 2:
                shared.append((members, group.prefix_len))
                covered += members * group.prefix_len
        return tuple(shared), covered
