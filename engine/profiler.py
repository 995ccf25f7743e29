"""``batchlab profile``: the engine's per-kernel costs on this device, measured over shape grids.

Each grid point is a synthetic ``BatchPlan`` executed by the engine's own ``ModelRunner`` (the
code path real runs take). Every plan is built and warmed up first; then each *pass* times
every plan once, and the scheduler's own work a few times, all in a fresh random order; the
median over the passes of each kernel category is kept, and the spread (p90/median) recorded.
The passes, not back-to-back repetitions, make a cell's samples span the whole profile, so a
slow spell of the machine lasting a second or two moves one sample of many cells instead of
every sample of one table (back to back, a table's repetitions took 1-4 s, and two profiles
35 s apart disagreed by 20-30 % on whole tables at once).

The directory written is the profile format ``sim.profile.Profile.load`` reads
(``profile.json`` + ``tables.npz``); the kernel names and axes below are that format's, and the
round-trip is tested.
"""
from __future__ import annotations

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

from .profile_host import forget_host, host_cells, host_tables
from .profile_write import write_profile
from .profile_scheduler import fresh_prompts_scheduler, steady_scheduler, timed_scheduler_step
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
WARM_CHUNKS_GPU = 8  # prompt chunks measured in one step on a GPU (Profiler.warm_chunks)
SHARED_GROUPS = 4   # groups in a measured step: 4 x 32 members = the decode grid's largest batch
OWN_CONTEXT = 32    # each member's own tokens after the prefix


GRIDS = {"tokens": TOKENS, "queries": QUERIES, "contexts": CONTEXTS, "batches": BATCHES, "sampled": SAMPLED,
         "prefill_chunks": PREFILL_CHUNKS, "prompt_tokens": PROMPT_TOKENS, "group_members": GROUP_MEMBERS,
         "prefix_lens": PREFIX_LENS}


class Profiler:
    """Cells of every table, measured in passes: ``prepare()``, ``measure_pass()`` as often as
    wanted (``run()`` does ``repeats``), then ``tables()``."""

    def __init__(self, runner: ModelRunner, warmup: int = 2, repeats: int = 5, grids: dict | None = None,
                 scheduler_samples: int = 20, prompt_scheduler_samples: int = 5,
                 warm_chunks: int | None = None) -> None:
        self.grids = {**GRIDS, **(grids or {})}
        self.runner = runner
        # prompt chunks of one step measured together for the cost of a step's chunks after its
        # first: on a CPU they run one after another, two tell it; on a GPU one launch takes them
        # all, and two chunks of a few queries leave most multiprocessors idle (batchllm's prompt
        # steps' attention, an 8B model on an H200: 0.61 s measured, 0.99 s from two-chunk cells)
        default = WARM_CHUNKS_GPU if runner.device.type == "cuda" else 2
        self.warm_chunks = default if warm_chunks is None else warm_chunks
        if self.warm_chunks < 2:
            raise ValueError(f"warm_chunks is {self.warm_chunks}; expected at least 2")
        if runner.states is not None:  # its requests start mid-sequence: zero states, the same work
            runner.states.missing_ok = True
        self.warmup = warmup
        self.repeats = repeats
        self.layers = runner.spec.num_layers
        self.spread: list[float] = []
        self._next_id = 10_000_000
        self._rng = random.Random(0)
        self._block_rng = random.Random(1)
        # a backend with a shared-prefix kernel gets that kernel measured (attn_shared_prefix)
        self.prefix_aware = bool(getattr(runner.model.backend, "prefix_aware", False))
        # the scheduler's samples in all, spread over the passes ``run`` makes
        self._scheduler_rounds = -(-scheduler_samples // repeats)
        self._prompt_scheduler_rounds = -(-prompt_scheduler_samples // repeats)
        self.plans: dict[tuple, BatchPlan] = {}
        self.samples: dict[tuple, list[dict]] = {}
        self.passes = 0

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

    def _prefix_lens(self) -> tuple[int, ...]:
        """The prefix grid in whole blocks (a group shares whole blocks only)."""
        block_size = self.runner.block_size
        return tuple(sorted({max(p - p % block_size, block_size) for p in self.grids["prefix_lens"]}))

    def cells(self) -> dict[tuple, list | BatchPlan]:
        """Every model step the tables need, keyed by what it measures: a list of chunks for
        ``_plan`` (context after the step, query tokens, samples), a plan, or a function that
        builds one."""
        grid = self.grids
        cells: dict[tuple, list | BatchPlan] = {}
        for tokens in grid["tokens"]:  # the per-token kernels: one fresh prompt of that many tokens
            cells["tokens", tokens] = [(tokens, tokens, False)]
        for context in grid["contexts"]:  # a prompt chunk of `queries` tokens ending at `context`
            for queries in grid["queries"]:
                if queries <= context:
                    cells["prefill", queries, context] = [(context, queries, False)]
                    # the same chunk `warm_chunks` times in one step: the later ones' cost
                    cells["prefill_k", queries, context] = [(context, queries, False)] * self.warm_chunks
        for batch in grid["batches"]:
            for context in grid["contexts"]:
                cells["decode", batch, context] = [(context, 1, True)] * batch
        for chunks in grid["prefill_chunks"]:  # whole fresh prompts: context = query tokens
            for tokens in grid["prompt_tokens"]:
                each = max(tokens // chunks, 1)
                cells["prompt", chunks, tokens] = [(each, each, False)] * chunks
        for sampled in grid["sampled"]:
            if sampled:
                cells["lm", sampled] = [(16, 1, True)] * sampled
        if self.prefix_aware:  # groups of members sharing a prefix, and the same members' own tokens alone
            for members in grid["group_members"]:
                cells["own", members] = [(OWN_CONTEXT, 1, True)] * (SHARED_GROUPS * members)
                for prefix in self._prefix_lens():
                    cells["grouped", members, prefix] = self._shared_plan(SHARED_GROUPS, members, prefix, OWN_CONTEXT)
        cells.update(host_cells(self))  # a host-memory KV tier's copies, where the engine's cache has one
        return cells

    def prepare(self, cells: dict | None = None, scheduler: bool = True) -> None:
        """Builds the plans of ``cells`` (default: all) and warms each up; with ``scheduler``,
        the schedulers whose own work per step is measured too."""
        cells = self.cells() if cells is None else cells
        self.plans = {key: cell if isinstance(cell, BatchPlan) else cell() if callable(cell) else self._plan(cell)
                      for key, cell in cells.items()}
        self.samples = {key: [] for key in self.plans}
        for plan in self.plans.values():
            for _ in range(self.warmup):
                self.runner.execute(replace(plan))  # a fresh plan: chunks built each time
        self._schedulers, self._scheduler_steps, self.scheduler_samples = {}, {}, {}
        self.prompt_scheduler_samples = {}
        if scheduler:
            steps = self._scheduler_rounds * self.repeats
            for batch in self.grids["batches"]:
                self._schedulers[batch] = {name: steady_scheduler(batch, name, steps) for name in SCHEDULES}
                self._scheduler_steps[batch] = self._plan([(256, 1, True)] * batch)
                self.scheduler_samples[batch] = {name: [] for name in SCHEDULES}
            self._prompt_model_step = self._plan([(256, 1, True)] * 16)
            self.prompt_scheduler_samples = {(chunks, tokens): [] for chunks in self.grids["prefill_chunks"]
                                             for tokens in self.grids["prompt_tokens"]}

    def measure_pass(self) -> None:
        """One timed execution of every plan, and a few schedule + update rounds of every
        scheduler, in a fresh random order: a measurement follows some other shape, as a step in
        a run follows other steps (one shape repeated back to back keeps the CPU caches warm for
        it: a 10-decode step read 7 % faster so than after a 1024-token prefill)."""
        units = ([("plan", key) for key in self.plans] + [("scheduler", b) for b in self._schedulers]
                 + [("prompt_scheduler", key) for key in self.prompt_scheduler_samples])
        self._rng.shuffle(units)
        for kind, key in units:
            if kind == "plan":
                result = self.runner.execute(replace(self.plans[key]))
                self.samples[key].append({**result.kernel_s, "total": result.duration_s})
            elif kind == "scheduler":
                self._time_schedulers(key)
            else:
                self._time_prompt_scheduler(*key)
        self.passes += 1

    def _time_schedulers(self, batch: int) -> None:
        """Schedule + update of ``batch`` running decodes under every schedule, each after a
        model step of ``batch`` decodes, the schedules taking turns in a fresh random order each
        round: a drift of the machine shows in all of them alike (their differences are taken
        round by round)."""
        running, samples = self._schedulers[batch], self.scheduler_samples[batch]
        order = list(running)
        for _ in range(self._scheduler_rounds):
            self._rng.shuffle(order)
            for name in order:
                samples[name].append(timed_scheduler_step(self.runner, running[name], self._scheduler_steps[batch]))

    def _time_prompt_scheduler(self, chunks: int, tokens: int) -> None:
        """Schedule + update of ``chunks`` fresh prompts of ``tokens`` tokens in all."""
        samples = self.prompt_scheduler_samples[chunks, tokens]
        for _ in range(self._prompt_scheduler_rounds):
            scheduler = fresh_prompts_scheduler(chunks, tokens, len(samples))
            samples.append(timed_scheduler_step(self.runner, scheduler, self._prompt_model_step))

    def medians(self) -> dict[tuple, dict[str, float]]:
        """Each plan's median kernel times over the passes; records each one's spread."""
        medians = {}
        self.spread = []
        for key, runs in self.samples.items():
            totals = sorted(r["total"] for r in runs)
            self.spread.append(totals[int(0.9 * (len(totals) - 1))] / statistics.median(totals))
            medians[key] = {name: statistics.median(r[name] for r in runs) for name in runs[0]}
        return medians

    def forget(self) -> None:
        """Drops the measured plans' requests from the runner."""
        plans = list(self.plans.values()) + list(self._scheduler_steps.values())
        plans += [self._prompt_model_step] if self.prompt_scheduler_samples else []
        for request_id in (c.req_id for plan in plans for c in plan.chunks):
            self.runner.outputs.pop(request_id, None)
            self.runner.requests.pop(request_id, None)
        forget_host(self.runner)

    def _shared_prefix(self, medians: dict) -> tuple:
        """Per-layer seconds a shared-prefix group of ``m`` decoding members adds to a decode
        step's attention over a ``p``-token prefix, the cost model's ``attn_shared_prefix``: a
        step of SHARED_GROUPS such groups, less the same requests' own tokens read as plain
        decodes (which the cost model charges as ``attn_decode``), per group. The fused kernel
        is one launch for the whole step, so the groups share it. Never below zero (noise)."""
        members, prefixes = self.grids["group_members"], self._prefix_lens()
        values = np.zeros((len(members), len(prefixes)))
        for i, m in enumerate(members):
            for j, p in enumerate(prefixes):
                grouped, own = medians["grouped", m, p]["attention"], medians["own", m]["attention"]
                values[i, j] = max((grouped - own) / self.layers / SHARED_GROUPS, 0.0)
        return (("queries", "prefix_len"), (np.array(members, float), np.array(prefixes, float)), values)

    def _prefill_overhead(self, medians: dict, prompt_scheduler: dict, decode_host: np.ndarray) -> tuple:
        """Host work (engine overhead + scheduler) of a step of ``k`` prompt chunks holding
        ``t`` tokens, beyond what ``k`` decodes cost (``step_overhead``): token ids, positions,
        slots and block hashes grow with the tokens, and a prompt chunk costs more to set up
        than a decode. Never below zero (noise)."""
        chunks, tokens, batches = (self.grids[k] for k in ("prefill_chunks", "prompt_tokens", "batches"))
        values = np.zeros((len(chunks), len(tokens)))
        for i, k in enumerate(chunks):
            for j, t in enumerate(tokens):
                host = medians["prompt", k, t]["overhead"] + prompt_scheduler[k, t]
                values[i, j] = max(host - float(np.interp(k, batches, decode_host)), 0.0)
        return (("prefill_chunks", "prefill_tokens"), (np.array(chunks, float), np.array(tokens, float)), values)

    def _elementwise(self, m: dict) -> float:
        return (m["norms"] + m["rope_kv_store"]) / self.layers

    def run(self, progress: Callable[[str], None] | None = None) -> dict[str, tuple]:
        """Prepares, measures ``repeats`` passes and returns the tables."""
        say = progress or (lambda _: None)
        cells = self.cells()
        say(f"profiling {len(cells)} step shapes and {len(SCHEDULES)} schedulers' own work, "
            f"{self.repeats} pass{'es' if self.repeats != 1 else ''} over them all")
        self.prepare(cells)
        for index in range(self.repeats):
            started = time.perf_counter()
            self.measure_pass()
            say(f"pass {index + 1}/{self.repeats}: {time.perf_counter() - started:.1f} s")
        try:
            return self.tables()
        finally:
            self.forget()

    def _prefill_table(self, seconds) -> np.ndarray:
        """A [queries, contexts] table per layer of ``seconds(queries, context)`` for a chunk."""
        QUERIES, CONTEXTS = self.grids["queries"], self.grids["contexts"]
        table = np.zeros((len(QUERIES), len(CONTEXTS)))
        for j, context in enumerate(CONTEXTS):
            valid = 0  # the last row with queries <= context: a chunk cannot have more
            for i, queries in enumerate(QUERIES):
                if queries <= context:
                    table[i, j] = seconds(queries, context) / self.layers
                    valid = i
                else:  # no such chunk, but interpolation reads the cell: the column extended linearly
                    # in queries (a (queries, queries) chunk's time, as before, made chunks near
                    # the diagonal cost up to twice what they measure)
                    table[i, j] = table[valid, j] * queries / QUERIES[valid]
        return table

    def tables(self) -> dict[str, tuple]:
        """The profile's tables from the passes measured so far."""
        m = self.medians()
        L, grid = self.layers, self.grids
        TOKENS, QUERIES, CONTEXTS, BATCHES, SAMPLED = (grid[k] for k in ("tokens", "queries", "contexts", "batches",
                                                                          "sampled"))
        tables: dict[str, tuple] = {}
        for name in ("linear_qkv", "linear_o", "mlp"):
            tables[name] = (("tokens",), (np.array(TOKENS, float),), np.array([m["tokens", t][name] / L for t in TOKENS]))
        tables["elementwise"] = (("tokens",), (np.array(TOKENS, float),),
                                 np.array([self._elementwise(m["tokens", t]) for t in TOKENS]))
        axes = (("query_tokens", "context"), (np.array(QUERIES, float), np.array(CONTEXTS, float)))
        first = lambda q, c: m["prefill", q, c]["attention"]  # noqa: E731  (a step's only chunk)
        # a later one: k's cost beyond one's, per chunk, within 1/k to all of one's (medians'
        # difference: noisy)
        k = self.warm_chunks

        def warm(q, c):
            return min(max((m["prefill_k", q, c]["attention"] - first(q, c)) / (k - 1), first(q, c) / k), first(q, c))
        tables["attn_prefill"], tables["attn_prefill_warm"] = (*axes, self._prefill_table(first)), \
            (*axes, self._prefill_table(warm))
        decode = np.array([[m["decode", b, c]["attention"] / L for c in CONTEXTS] for b in BATCHES])
        tables["attn_decode"] = (("batch", "mean_context"), (np.array(BATCHES, float), np.array(CONTEXTS, float)), decode)
        fcfs = np.array([statistics.median(self.scheduler_samples[b]["fcfs"]) for b in BATCHES])
        decode_host = np.array([m["decode", b, CONTEXTS[0]]["overhead"] for b in BATCHES]) + fcfs
        tables["step_overhead"] = (("requests",), (np.array(BATCHES, float),), decode_host)
        for name in SCHEDULES:
            if name != "fcfs":  # "schedule_overhead_<schedule>" (sim/profile.py): scheduler work beyond
                # fcfs's, the median of round-by-round differences; never below zero
                extra = [max(statistics.median(a - b for a, b in zip(self.scheduler_samples[batch][name],
                                                                       self.scheduler_samples[batch]["fcfs"])), 0.0)
                         for batch in BATCHES]
                tables[f"schedule_overhead_{name}"] = (("requests",), (np.array(BATCHES, float),), np.array(extra))
        prompt_scheduler = {key: statistics.median(s) for key, s in self.prompt_scheduler_samples.items()}
        tables["prefill_overhead"] = self._prefill_overhead(m, prompt_scheduler, decode_host)
        lm = [m["lm", n]["lm_head_sampling"] if n else 0.0 for n in SAMPLED]
        tables["lm_head_sampling"] = (("sampled",), (np.array(SAMPLED, float),), np.array(lm))
        tables.update(host_tables(m, self.runner.block_size))
        if self.prefix_aware:
            tables["attn_shared_prefix"] = self._shared_prefix(m)
        else:
            # no shared-prefix kernel: a group's decodes read their prefix as ordinary decode
            # attention, which the profile says (prefix_aware_attention: false)
            tables["attn_shared_prefix"] = (("queries", "prefix_len"), (np.array([0.0, 1.0]), np.array([0.0, 1.0])),
                                            np.zeros((2, 2)))
        return tables


def profile_engine(runner: ModelRunner, directory: str | Path, dtype: str, backend: str, repeats: int = 5,
                   progress: Callable[[str], None] | None = None, grids: dict | None = None) -> Path:
    """Measures a profile of ``runner`` in ``repeats`` passes and writes it to ``directory``."""
    started = time.perf_counter()
    profiler = Profiler(runner, repeats=repeats, grids=grids)
    tables = profiler.run(progress)
    device = torch.cuda.get_device_name() if runner.device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()})"
    provenance = {"device": device, "backend": backend, "dtype": dtype, "torch": torch.__version__,
                  "python": platform.python_version(), "date": date.today().isoformat(),
                  "model_config": {k: getattr(runner.spec, k) for k in runner.spec.__dataclass_fields__},
                  "repeats": repeats, "statistic": "median over passes",
                  "spread_p90_over_median_max": max(profiler.spread), "spread_p90_over_median_median":
                  statistics.median(profiler.spread), "prefix_aware_attention": profiler.prefix_aware,
                  "warm_chunks": profiler.warm_chunks, "kernel_options": runner.model.backend.options,
                  "threads": torch.get_num_threads(), "host_memory": runner.host_memory,
                  "kv_blocks": runner.cache.num_blocks, "block_layout": "scattered", "seconds": round(time.perf_counter() - started, 1)}
    return write_profile(directory, tables, runner.spec.name, dtype, provenance)
