"""``batchlab profile``: the engine's per-kernel costs on this device, measured over shape grids.

Each grid point is a synthetic ``BatchPlan`` executed by the engine's own ``ModelRunner`` (the
code path real runs take), after warm-up, several times; the median of each kernel category is
kept, and the spread (p90/median) recorded. The directory written is the profile format
``sim.profile.Profile.load`` reads (``profile.json`` + ``tables.npz``); the kernel names and
axes below are that format's, and the round-trip is tested.
"""
from __future__ import annotations

import json
import platform
import random
import statistics
import time
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from scheduler import BatchPlan, DecodeBatch, Request, ScheduledChunk, SharedPrefixGroup
from scheduler.config import SCHEDULES

from .runner import ModelRunner

TOKENS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
QUERIES = (1, 4, 16, 64, 256, 1024)
CONTEXTS = (16, 64, 256, 1024, 2048, 4096)
BATCHES = (1, 2, 4, 8, 16, 32, 64, 128)
SAMPLED = (0, 1, 4, 16, 64, 128)
PREFILL_CHUNKS = (1, 4, 16, 32)          # prompt chunks in a step ...
PROMPT_TOKENS = (32, 128, 512, 1024, 2048)  # ... and their tokens, for the prompt host work
GROUP_MEMBERS = (2, 4, 8, 16, 32)           # decoding members of a shared-prefix group ...
PREFIX_LENS = (64, 256, 1024, 2048, 4096)   # ... and the prefix they share (prefix-aware backends)
SHARED_GROUPS = 4   # groups in a measured step: 4 x 32 members = the decode grid's largest batch
OWN_CONTEXT = 32    # each member's own tokens after the prefix


GRIDS = {"tokens": TOKENS, "queries": QUERIES, "contexts": CONTEXTS, "batches": BATCHES, "sampled": SAMPLED,
         "prefill_chunks": PREFILL_CHUNKS, "prompt_tokens": PROMPT_TOKENS, "group_members": GROUP_MEMBERS,
         "prefix_lens": PREFIX_LENS}


def _sampled(plan: BatchPlan) -> dict[int, int]:
    """A token for every request that samples in ``plan`` (what a run's update receives)."""
    tokens = {r: 0 for r in plan.decodes.req_ids}
    tokens.update((c.req_id, 0) for c in plan.listed if c.samples)
    return tokens


class Profiler:
    def __init__(self, runner: ModelRunner, warmup: int = 2, repeats: int = 5, grids: dict | None = None) -> None:
        self.grids = {**GRIDS, **(grids or {})}
        self.runner = runner
        self.warmup = warmup
        self.repeats = repeats
        self.layers = runner.spec.num_layers
        self.spread: list[float] = []
        self._next_id = 10_000_000
        self._rng = random.Random(0)
        self._block_rng = random.Random(1)
        # a backend with a shared-prefix kernel gets that kernel measured (attn_shared_prefix)
        self.prefix_aware = bool(getattr(runner.model.backend, "prefix_aware", False))

    def _plan(self, chunks: list[tuple[int, int, bool]]) -> BatchPlan:
        """Chunks of (context after the step, query tokens, samples); every request gets a fresh
        id. A one-token sampling chunk is a real decode: its prompt ends before it and its input
        is a token already generated, as in a run (a prompt token would cost a hash each step
        and make the per-request overhead look about three times what runs see). Anything
        else is a prompt chunk of a one-segment prompt one token longer than its context."""
        block_size = self.runner.block_size
        made, decodes = [], []
        # distinct blocks per request, scattered over the whole cache as a run's allocator
        # leaves them (wrapping only past the capacity): shared blocks would stay hot in the
        # CPU caches, and consecutive ones read faster than runs do (10 decodes at context 544
        # in a 20,000-block cache: 3.35 ms consecutive, 4.18 ms scattered)
        take = self._scattered_blocks(sum(-(-context // block_size) for context, _, _ in chunks))
        for context, queries, samples in chunks:
            decode = queries == 1 and samples and context >= 2
            prompt_len = context - 1 if decode else context + 1
            req_id = self._new_request(prompt_len, decode)
            chunk = ScheduledChunk(req_id, context - queries, queries, take(-(-context // block_size)), samples,
                                   prompt_len)
            (decodes if decode else made).append(chunk)
        return BatchPlan(0, tuple(made), decodes=self._decode_batch(decodes))

    def _scattered_blocks(self, needed: int):
        """A function handing out ``count`` block ids at a time: ``needed`` distinct ones in a
        random order over the whole cache (wrapping only past its capacity)."""
        capacity = self.runner.cache.num_blocks
        order = self._block_rng.sample(range(capacity), min(needed, capacity))
        cursor = iter(range(needed))
        return lambda count: tuple(order[next(cursor) % len(order)] for _ in range(count))

    def _new_request(self, prompt_len: int, decode: bool) -> int:
        """A fresh one-segment request in the runner; a decode's input token is one it generated."""
        self._next_id += 1
        self.runner.add_request(Request(self._next_id, 0.0, ((self._next_id, prompt_len),), 1))
        if decode:
            self.runner.outputs[self._next_id].append(self._next_id % self.runner.spec.vocab_size)
        return self._next_id

    @staticmethod
    def _decode_batch(decodes: list[ScheduledChunk]) -> DecodeBatch:
        """Decodes in the scheduler's compact form, as runs hand them over (executors then build
        their chunks once per step, which a run pays too)."""
        return DecodeBatch(0, tuple(c.req_id for c in decodes), tuple(c.start for c in decodes),
                           tuple(c.prompt_len for c in decodes), tuple(c.block_ids for c in decodes),
                           sum(c.end for c in decodes))

    def _shared_plan(self, groups: int, members: int, prefix: int, own: int) -> BatchPlan:
        """A decode step of ``groups`` groups of ``members`` requests, each group sharing
        ``prefix`` tokens (whole blocks) of KV blocks and each member holding ``own`` more, its
        decode token last; the plan names the groups, so a prefix-aware backend reads each
        prefix once. Blocks scattered over the cache, as in ``_plan``."""
        block_size = self.runner.block_size
        prefix_blocks, own_blocks = prefix // block_size, -(-own // block_size)
        take = self._scattered_blocks(groups * (prefix_blocks + members * own_blocks))
        context = prefix_blocks * block_size + own
        chunks, shared = [], []
        for _ in range(groups):
            prefix_ids = take(prefix_blocks)
            ids = []
            for _ in range(members):
                req_id = self._new_request(context - 1, decode=True)
                chunks.append(ScheduledChunk(req_id, context - 1, 1, prefix_ids + take(own_blocks), True, context - 1))
                ids.append(req_id)
            shared.append(SharedPrefixGroup(prefix_blocks * block_size, prefix_ids, tuple(ids)))
        return BatchPlan(0, (), shared_prefix_groups=tuple(shared), decodes=self._decode_batch(chunks))

    def measure(self, chunks: list[tuple[int, int, bool]]) -> dict[str, float]:
        return self.measure_many([chunks])[0]

    def measure_many(self, cells: list) -> list[dict[str, float]]:
        """Median kernel times of each cell's plan (a list of chunks for ``_plan``, or a plan).
        All plans are warmed up, then each repetition runs them in a fresh random order, so a
        measurement follows some other shape as a step in a run follows other steps: one
        shape repeated back to back keeps the CPU caches warm for it (a 10-decode step read
        7 % faster so than after a 1024-token prefill), and a transient slowdown spreads over
        cells instead of corrupting every repetition of one."""
        plans = [cell if isinstance(cell, BatchPlan) else self._plan(cell) for cell in cells]
        for plan in plans:
            for _ in range(self.warmup):
                self.runner.execute(replace(plan))  # a fresh plan: chunks built each time
        runs: list[list[dict]] = [[] for _ in plans]
        order = list(range(len(plans)))
        for _ in range(self.repeats):
            self._rng.shuffle(order)
            for index in order:
                result = self.runner.execute(replace(plans[index]))
                runs[index].append({**result.kernel_s, "total": result.duration_s})
        for plan in plans:
            self._forget(plan)
        summaries = []
        for cell in runs:
            totals = sorted(r["total"] for r in cell)
            self.spread.append(totals[int(0.9 * (len(totals) - 1))] / statistics.median(totals))
            summaries.append({key: statistics.median(r[key] for r in cell) for key in cell[0]})
        return summaries

    def _shared_prefix(self, members: tuple, prefixes: tuple) -> tuple:
        """Per-layer seconds a shared-prefix group of ``m`` decoding members adds to a decode
        step's attention over a ``p``-token prefix, the cost model's ``attn_shared_prefix``: a
        step of SHARED_GROUPS such groups, less the same requests' own tokens read as plain
        decodes (which the cost model charges as ``attn_decode``), per group. The fused kernel
        is one launch for the whole step, so the groups share it. Never below zero (noise)."""
        block_size = self.runner.block_size
        prefixes = tuple(sorted({max(p - p % block_size, block_size) for p in prefixes}))
        cells = [(i, j) for i in range(len(members)) for j in range(len(prefixes))]
        plans = []
        for i, j in cells:
            plans.append(self._shared_plan(SHARED_GROUPS, members[i], prefixes[j], OWN_CONTEXT))
            plans.append([(OWN_CONTEXT, 1, True)] * (SHARED_GROUPS * members[i]))
        measured = self.measure_many(plans)
        values = np.zeros((len(members), len(prefixes)))
        for index, (i, j) in enumerate(cells):
            grouped, own = measured[2 * index]["attention"], measured[2 * index + 1]["attention"]
            values[i, j] = max((grouped - own) / self.layers / SHARED_GROUPS, 0.0)
        return (("queries", "prefix_len"), (np.array(members, float), np.array(prefixes, float)), values)

    def _prefill_overhead(self, chunks: tuple, tokens: tuple, batches: tuple, decode_host: np.ndarray) -> tuple:
        """Host work (engine overhead + scheduler) of a step of ``k`` prompt chunks holding
        ``t`` tokens, beyond what ``k`` decodes cost (``step_overhead``): token ids, positions,
        slots and block hashes grow with the tokens, and a prompt chunk costs more to set up
        than a decode. Never below zero (noise)."""
        cells = [(i, j) for i in range(len(chunks)) for j in range(len(tokens))]
        plans = []
        for i, j in cells:
            each = max(tokens[j] // chunks[i], 1)  # whole fresh prompts: context = query tokens
            plans.append([(each, each, False)] * chunks[i])
        values = np.zeros((len(chunks), len(tokens)))
        for (i, j), m in zip(cells, self.measure_many(plans)):
            host = m["overhead"] + self.scheduler_prefill_seconds(chunks[i], tokens[j])
            values[i, j] = max(host - float(np.interp(chunks[i], batches, decode_host)), 0.0)
        return (("prefill_chunks", "prefill_tokens"), (np.array(chunks, float), np.array(tokens, float)), values)

    def scheduler_prefill_seconds(self, chunks: int, tokens: int, repeats: int = 5) -> float:
        """Median schedule + update time of ``chunks`` fresh prompts of ``tokens`` tokens in
        all (block hashing and allocation grow with the tokens), each right after a model step
        (see ``scheduler_seconds``)."""
        from scheduler import Scheduler, schedule_config

        each = max(tokens // chunks, 1)
        model_step = self._plan([(256, 1, True)] * 16)
        samples = []
        for index in range(repeats):
            config = schedule_config("fcfs", max_num_seqs=None, max_num_batched_tokens=max(each * chunks, 16))
            scheduler = Scheduler(config, chunks * (each // 16 + 2) + 8, 16)
            for request in range(chunks):
                scheduler.add(Request(request, 0.0, ((index * chunks + request, each),), 2))
            samples.append(self._timed_scheduler_step(scheduler, model_step))
        self._forget(model_step)
        return statistics.median(samples)

    def scheduler_seconds(self, batch: int, schedules: tuple[str, ...] = ("fcfs",),
                          steps: int = 20) -> dict[str, list[float]]:
        """Schedule + update times of ``batch`` running decodes under each of ``schedules``
        (the engine loop's own cost per step, outside ``execute``), ``steps`` samples each. Each
        sample follows a model step of ``batch`` decodes, as in a run, and the schedules take
        turns in a fresh random order every round, so that a drift of the machine shows in all
        of them alike (their differences are taken round by round). The requests come in
        groups of 8 sharing a prefix, as in ``validate``'s workload, so that grouped schedules
        find their shared-prefix groups. Measured back to back, with the CPU caches holding
        nothing but the scheduler, a 10-decode fcfs step read 6.6 us (13 us with its sampled
        tokens, which a run's update appends); after model steps 41 us, where a validation
        run's fcfs decode steps spent 64 us (with a waiting queue to try each step)."""
        running = {name: self._steady_scheduler(batch, name, steps) for name in schedules}
        model_step = self._plan([(256, 1, True)] * batch)
        samples: dict[str, list[float]] = {name: [] for name in schedules}
        order = list(schedules)
        for _ in range(steps):
            self._rng.shuffle(order)
            for name in order:
                samples[name].append(self._timed_scheduler_step(running[name], model_step))
        self._forget(model_step)
        return samples

    def _timed_scheduler_step(self, scheduler, model_step: BatchPlan) -> float:
        """Seconds of one schedule + update, right after a model step (as in a run, whose
        scheduler finds the CPU caches full of the model's data); the update receives the
        sampled tokens, which a run's update appends to their requests."""
        from scheduler import StepResult

        self.runner.execute(replace(model_step))
        started = time.perf_counter()
        plan = scheduler.schedule(0.0)
        scheduler.update(plan, StepResult(plan.step, 0.0, _sampled(plan)), 0.0)
        return time.perf_counter() - started

    @staticmethod
    def _steady_scheduler(batch: int, schedule: str, steps: int):
        """A scheduler of ``schedule`` whose ``batch`` requests all decode, for ``steps`` more
        steps at least."""
        from scheduler import Scheduler, StepResult, schedule_config
        from traces.synthetic import batchllm_microbenchmark

        workload = batchllm_microbenchmark(32, 16, steps + 256, 8, batch, shuffle=False, seed=0)
        scheduler = Scheduler(schedule_config(schedule, max_num_seqs=None, kv_threshold=None),
                              batch * (steps + 320) // 16 + 2 * batch + 64, 16)
        for request in workload.requests:
            scheduler.add(request)
        for _ in range(64):
            plan = scheduler.schedule(0.0)
            scheduler.update(plan, StepResult(plan.step, 0.0, _sampled(plan)), 0.0)
            if len(plan.decodes.req_ids) == batch and not plan.listed:
                return scheduler
        raise AssertionError(f"{schedule}: {batch} requests never reached steady decode")

    def _forget(self, plan: BatchPlan) -> None:
        """Drops a measured plan's requests from the runner."""
        for request_id in (c.req_id for c in plan.chunks):
            self.runner.outputs.pop(request_id, None)
            self.runner.requests.pop(request_id, None)

    def _elementwise(self, m: dict) -> float:
        return (m["norms"] + m["rope_kv_store"]) / self.layers

    def run(self, progress: Callable[[str], None] | None = None) -> dict[str, tuple]:
        say = progress or (lambda _: None)
        L = self.layers
        (TOKENS, QUERIES, CONTEXTS, BATCHES, SAMPLED, CHUNKS, PROMPT, MEMBERS,
         PREFIXES) = (self.grids[k] for k in GRIDS)
        tables: dict[str, tuple] = {}
        per_tokens = {name: [] for name in ("linear_qkv", "linear_o", "mlp", "elementwise")}
        say(f"profiling per-token kernels over {len(TOKENS)} batch sizes")
        for tokens, m in zip(TOKENS, self.measure_many([[(tokens, tokens, False)] for tokens in TOKENS])):
            for name in ("linear_qkv", "linear_o", "mlp"):
                per_tokens[name].append(m[name] / L)
            per_tokens["elementwise"].append(self._elementwise(m))
        for name, values in per_tokens.items():
            tables[name] = (("tokens",), (np.array(TOKENS, float),), np.array(values))
        say(f"profiling prefill attention over {len(QUERIES)}x{len(CONTEXTS)} shapes")
        prefill = np.zeros((len(QUERIES), len(CONTEXTS)))
        cells = [(i, j) for j, context in enumerate(CONTEXTS) for i, queries in enumerate(QUERIES) if queries <= context]
        for (i, j), m in zip(cells, self.measure_many([[(CONTEXTS[j], QUERIES[i], False)] for i, j in cells])):
            prefill[i, j] = m["attention"] / L
        for j, context in enumerate(CONTEXTS):
            valid = 0  # the last row with queries <= context: a chunk cannot have more
            for i, queries in enumerate(QUERIES):
                if queries <= context:
                    valid = i
                else:
                    # no such chunk exists, but bilinear interpolation reads the cell: extend
                    # the column linearly in queries (each query reads the whole context).
                    # Filling it with a (queries, queries) chunk's time, as before, made
                    # chunks near the diagonal cost up to twice what they measure.
                    prefill[i, j] = prefill[valid, j] * queries / QUERIES[valid]
        tables["attn_prefill"] = (("query_tokens", "context"), (np.array(QUERIES, float), np.array(CONTEXTS, float)), prefill)
        say(f"profiling decode attention and step overhead over {len(BATCHES)}x{len(CONTEXTS)} shapes")
        decode = np.zeros((len(BATCHES), len(CONTEXTS)))
        overhead = []
        cells = [(i, j) for i in range(len(BATCHES)) for j in range(len(CONTEXTS))]
        for (i, j), m in zip(cells, self.measure_many([[(CONTEXTS[j], 1, True)] * BATCHES[i] for i, j in cells])):
            decode[i, j] = m["attention"] / L
            if j == 0:
                overhead.append(m["overhead"])
        tables["attn_decode"] = (("batch", "mean_context"), (np.array(BATCHES, float), np.array(CONTEXTS, float)), decode)
        say(f"profiling the scheduler's own work per step, {len(SCHEDULES)} schedules x {len(BATCHES)} batches")
        fcfs, extra = [], {name: [] for name in SCHEDULES if name != "fcfs"}
        for batch in BATCHES:
            samples = self.scheduler_seconds(batch, tuple(SCHEDULES))
            fcfs.append(statistics.median(samples["fcfs"]))
            for name in extra:  # the median of round-by-round differences; never below zero
                extra[name].append(max(statistics.median(a - b for a, b in zip(samples[name], samples["fcfs"])), 0.0))
        decode_host = np.array(overhead) + np.array(fcfs)
        tables["step_overhead"] = (("requests",), (np.array(BATCHES, float),), decode_host)
        for name, seconds in extra.items():
            # "schedule_overhead_<schedule>" (sim/profile.py): scheduler work beyond fcfs's
            tables[f"schedule_overhead_{name}"] = (("requests",), (np.array(BATCHES, float),), np.array(seconds))
        say(f"profiling prompt steps' host work over {len(CHUNKS)}x{len(PROMPT)} shapes")
        tables["prefill_overhead"] = self._prefill_overhead(CHUNKS, PROMPT, BATCHES, decode_host)
        say("profiling LM head and sampling")
        lm = [0.0] + [m["lm_head_sampling"] for m in self.measure_many([[(16, 1, True)] * n for n in SAMPLED[1:]])]
        tables["lm_head_sampling"] = (("sampled",), (np.array(SAMPLED, float),), np.array(lm))
        if self.prefix_aware:
            say(f"profiling shared-prefix attention over {len(MEMBERS)}x{len(PREFIXES)} shapes")
            tables["attn_shared_prefix"] = self._shared_prefix(MEMBERS, PREFIXES)
        else:
            # no shared-prefix kernel: a group's decodes read their prefix as ordinary decode
            # attention, which the profile says (prefix_aware_attention: false)
            tables["attn_shared_prefix"] = (("queries", "prefix_len"), (np.array([0.0, 1.0]), np.array([0.0, 1.0])),
                                            np.zeros((2, 2)))
        return tables


def yardstick_ms(device, size: int = 256, calls: int = 30) -> float:
    """Milliseconds of a fixed piece of work (a ``size`` x ``size`` fp32 matrix product), the
    median of ``calls``: how fast the machine is right now, so that runs measured minutes apart
    can be told apart from the machine changing speed under them."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    times = []
    for _ in range(calls):
        if a.is_cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        torch.mm(a, b)
        if a.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1e3)


def write_profile(directory: str | Path, tables: dict[str, tuple], model: str, dtype: str,
                  provenance: dict) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for name, (axes, grids, values) in tables.items():
        arrays[f"{name}.values"] = values
        for axis, grid in zip(axes, grids):
            arrays[f"{name}.grid.{axis}"] = grid
    np.savez(directory / "tables.npz", **arrays)
    meta = {"kind": "measured", "model": model, "dtype": dtype, "provenance": provenance,
            "axes": {name: list(axes) for name, (axes, _, _) in tables.items()}}
    (directory / "profile.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    return directory


def profile_engine(runner: ModelRunner, directory: str | Path, dtype: str, backend: str, repeats: int = 5,
                   progress: Callable[[str], None] | None = None, grids: dict | None = None) -> Path:
    started = time.perf_counter()
    profiler = Profiler(runner, repeats=repeats, grids=grids)
    tables = profiler.run(progress)
    device = torch.cuda.get_device_name() if runner.device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()})"
    provenance = {"device": device, "backend": backend, "dtype": dtype, "torch": torch.__version__,
                  "python": platform.python_version(), "date": date.today().isoformat(),
                  "model_config": {k: getattr(runner.spec, k) for k in runner.spec.__dataclass_fields__},
                  "repeats": repeats, "statistic": "median",
                  "spread_p90_over_median_max": max(profiler.spread), "spread_p90_over_median_median":
                  statistics.median(profiler.spread), "prefix_aware_attention": profiler.prefix_aware,
                  "threads": torch.get_num_threads(), "host_memory": runner.host_memory,
                  "kv_blocks": runner.cache.num_blocks, "block_layout": "scattered", "seconds": round(time.perf_counter() - started, 1)}
    return write_profile(directory, tables, runner.spec.name, dtype, provenance)
