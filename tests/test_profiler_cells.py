"""The profiler's cells: what each measures, and how it turns measurements into tables."""
import numpy as np
import pytest
import torch

from engine.profiler import profile_engine
from engine.runner import ModelRunner
from scheduler.model_spec import model_spec
from sim.cost_model import CostModel
from sim.profile import Profile

from conftest import SMALL_GRIDS


def test_prefill_overhead_is_prompt_host_work_beyond_decodes():
    """The prefill_overhead cell of k prompt chunks holding t tokens = engine overhead of that
    step + the scheduler's time for it - the decode host time of k requests (interpolated
    over the decode batches), never below zero. Measurements replaced by known values: one
    profile run with a single repetition is too noisy to show the sign (it read 0 once)."""
    from engine.profiler import Profiler

    grids = {"prefill_chunks": (1, 4), "prompt_tokens": (8, 64), "batches": (1, 4)}
    profiler = Profiler(ModelRunner(model_spec("tiny"), 64, 16), repeats=1, grids=grids)
    cells = {key[1:]: cell for key, cell in profiler.cells().items() if key[0] == "prompt"}
    assert cells == {(1, 8): [(8, 8, False)], (1, 64): [(64, 64, False)], (4, 8): [(2, 2, False)] * 4,
                     (4, 64): [(16, 16, False)] * 4}
    medians = {("prompt", *key): {"overhead": 1e-4 * len(cell) + 1e-6 * sum(q for _, q, _ in cell)}
               for key, cell in cells.items()}
    scheduler = {key: 2e-6 * key[1] for key in cells}
    axes, grids, values = profiler._prefill_overhead(medians, scheduler, np.array([2e-4, 2e-4]))
    assert axes == ("prefill_chunks", "prefill_tokens") and [g.tolist() for g in grids] == [[1, 4], [8, 64]]
    # host = 1e-4 k + 1e-6 t (overhead) + 2e-6 t (scheduler); minus 2e-4 of decode host
    expected = np.maximum(np.array([[1e-4 + 3 * 8e-6, 1e-4 + 3 * 64e-6],
                                    [4e-4 + 3 * 8e-6, 4e-4 + 3 * 64e-6]]) - 2e-4, 0.0)
    assert values == pytest.approx(expected, abs=1e-12)
    assert values[0, 0] == 0.0 and values[1, 1] > values[1, 0] > 0.0


def test_profiler_measures_decodes_as_decodes():
    """A one-token sampling chunk must read an already generated token, as in a run: profiled
    as a prompt token it cost a hash per request and tripled the step overhead."""
    from engine.profiler import Profiler

    runner = ModelRunner(model_spec("tiny"), 64, 16)
    plan = Profiler(runner)._plan([(40, 1, True), (40, 8, False)])
    decode, prefill = plan.chunks
    assert decode.is_decode and decode.end == 40 and len(runner.outputs[decode.req_id]) == 1
    assert not prefill.is_decode and prefill.end == 40 and prefill.prompt_len == 41
    result = runner.execute(plan)
    assert set(result.sampled_tokens) == {decode.req_id}


def test_impossible_prefill_cells_extend_their_column_linearly(tmp_path):
    """Cells with more queries than context hold no real chunk; bilinear interpolation still
    reads them, so they must continue the column, not repeat a (queries, queries) chunk."""
    torch.set_num_threads(1)
    runner = ModelRunner(model_spec("tiny"), 64, 16)
    grids = {**SMALL_GRIDS, "queries": (1, 8, 32), "contexts": (16, 64)}
    profile = Profile.load(profile_engine(runner, tmp_path, "float32", "torch", repeats=1, grids=grids))
    values = profile.tables["attn_prefill"].values   # rows: queries 1, 8, 32; columns: context 16, 64
    assert values[2, 0] == pytest.approx(values[1, 0] * 32 / 8)  # 32 queries cannot fit 16 tokens
    assert values[2, 1] > 0 and values[2, 1] != pytest.approx(values[1, 1] * 4)  # 32 in 64: measured


def test_profiler_plans_scatter_distinct_blocks_over_the_cache():
    # runs leave a request's blocks scattered over the cache; consecutive ones read faster on
    # CPU, so the profiler must not hand out 0, 1, 2, ...
    from engine.profiler import Profiler

    runner = ModelRunner(model_spec("tiny"), 64, 16)
    plan = Profiler(runner)._plan([(64, 1, True)] * 4 + [(64, 64, False)])
    tables = [c.block_ids for c in plan.chunks]
    ids = [b for table in tables for b in table]
    assert [len(t) for t in tables] == [4] * 5
    assert len(set(ids)) == 20 and all(0 <= b < 64 for b in ids)
    assert ids != sorted(ids)
    # past the capacity blocks wrap, still within the cache
    wrapped = Profiler(runner)._plan([(1024, 1, True)] * 2)
    assert all(0 <= b < 64 for c in wrapped.chunks for b in c.block_ids)


def test_shared_prefix_cell_is_the_groups_excess_over_their_own_decodes():
    """attn_shared_prefix(m, p) = (attention of a step of G groups of m decodes sharing p
    tokens - attention of the same requests' own tokens as plain decodes) / layers / G, the
    cost model's split (attn_decode over own tokens + one term per group). Measurements
    replaced by known values."""
    from engine import profiler as profiler_module
    from engine.profiler import OWN_CONTEXT, SHARED_GROUPS, Profiler

    runner = ModelRunner(model_spec("tiny"), 256, 16)
    profiler = Profiler(runner, repeats=1, grids={"group_members": (2, 4), "prefix_lens": (40, 64)})
    profiler.prefix_aware = True  # as a prefix-aware backend's profiler
    cells = profiler.cells()
    assert {key for key in cells if key[0] in ("own", "grouped")} == {
        ("own", 2), ("own", 4), ("grouped", 2, 32), ("grouped", 2, 64), ("grouped", 4, 32), ("grouped", 4, 64)}
    medians = {}
    for key, cell in cells.items():
        if key[0] == "own":  # the members' own tokens as plain decodes
            medians[key] = {"attention": 1e-5 * len(cell)}
        elif key[0] == "grouped":  # each group: 3e-6 per member plus 1e-8 per prefix token
            medians[key] = {"attention": 1e-5 * len(cell.decodes.req_ids)
                            + sum(3e-6 * len(g.req_ids) + 1e-8 * g.prefix_len for g in cell.shared_prefix_groups)}
    axes, grids, values = profiler._shared_prefix(medians)
    assert axes == ("queries", "prefix_len") and [g.tolist() for g in grids] == [[2, 4], [32, 64]]  # whole blocks
    layers = runner.spec.num_layers
    expected = np.array([[3e-6 * m + 1e-8 * p for p in (32, 64)] for m in (2, 4)]) / layers
    assert values == pytest.approx(expected, rel=1e-9)
    grouped = cells["grouped", 2, 32]  # SHARED_GROUPS groups, own decodes alongside
    assert len(grouped.shared_prefix_groups) == SHARED_GROUPS and len(grouped.decodes.req_ids) == 2 * SHARED_GROUPS
    assert cells["own", 2] == [(OWN_CONTEXT, 1, True)] * (2 * SHARED_GROUPS)
    tables = {c.req_id: c.block_ids for c in grouped.chunks}
    prefixes = []
    for group in grouped.shared_prefix_groups:
        assert group.prefix_len == 32 and len(group.prefix_block_ids) == 2
        for member in group.req_ids:  # every member reads its group's prefix blocks first
            assert tables[member][:2] == group.prefix_block_ids and len(tables[member]) == 2 + 2
            assert next(c for c in grouped.chunks if c.req_id == member).end == 32 + OWN_CONTEXT
        prefixes.extend(group.prefix_block_ids)
    assert len(set(prefixes)) == 2 * SHARED_GROUPS  # groups do not share blocks
    assert profiler_module.SHARED_GROUPS * max(profiler_module.GROUP_MEMBERS) <= max(profiler_module.BATCHES)


def test_prefix_aware_backends_get_their_shared_prefix_kernel_measured(profile_dir):
    """A prefix-aware backend (Triton; on CPU its interpreter) gets its shared-prefix kernel
    measured through the real engine; the torch backend has none, and its profile says so
    (the simulator then costs a group's decodes as plain decodes)."""
    pytest.importorskip("triton")
    from engine.profiler import Profiler

    torch.set_num_threads(1)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    runner = ModelRunner(model_spec("tiny", num_layers=1), 256, 16, device=device, backend="triton")
    profiler = Profiler(runner, warmup=1, repeats=1, grids={"group_members": (2, 4), "prefix_lens": (32,)})
    assert profiler.prefix_aware
    profiler.prepare({k: c for k, c in profiler.cells().items() if k[0] in ("own", "grouped")}, scheduler=False)
    profiler.measure_pass()
    axes, grids, values = profiler._shared_prefix(profiler.medians())
    assert values.shape == (2, 1) and np.isfinite(values).all() and (values >= 0).all()
    profiler.forget()
    assert not runner.requests  # the measured requests are dropped again
    torch_profile = Profile.load(profile_dir)
    assert torch_profile.provenance["prefix_aware_attention"] is False
    assert not CostModel(torch_profile, model_spec("tiny")).prefix_aware
    assert not torch_profile.tables["attn_shared_prefix"].values.any()


def test_every_pass_times_every_cell_once_in_a_fresh_order():
    """A cell's samples are spread over the profile, one a pass, never back to back: a slow
    spell of the machine then moves one sample of many cells, not every sample of a table."""
    from engine.profiler import Profiler

    torch.set_num_threads(1)
    runner = ModelRunner(model_spec("tiny"), 64, 16)
    profiler = Profiler(runner, warmup=1, repeats=3, grids=SMALL_GRIDS)
    profiler.prepare()
    executed, real = [], runner.execute
    plan_of = {}

    def recorded(plan):
        executed.append(plan_of.get(plan.chunks[0].req_id) if plan.chunks else None)
        return real(plan)

    for key, plan in profiler.plans.items():
        plan_of[plan.chunks[0].req_id] = key
    runner.execute = recorded
    orders = []
    for _ in range(3):
        executed.clear()
        profiler.measure_pass()
        cells = [key for key in executed if key is not None]  # the scheduler's model steps are no cells
        assert sorted(cells) == sorted(profiler.plans)         # every cell once a pass
        orders.append(cells)
    assert orders[0] != orders[1] != orders[2]
    assert all(len(samples) == 3 for samples in profiler.samples.values())
    # the schedulers' own work: 20 samples in all by default, spread over the passes
    assert all(len(s) == 3 * 7 for batch in profiler.scheduler_samples.values() for s in batch.values())
    assert all(len(s) == 3 * 2 for s in profiler.prompt_scheduler_samples.values())
    tables = profiler.tables()
    assert tables["linear_qkv"][2].shape == (len(SMALL_GRIDS["tokens"]),)
    profiler.forget()
    assert not runner.requests



def test_the_host_tiers_copies_are_the_cells_host_work_beyond_the_chunk_alone():
    """Cells of a 16-token chunk with n blocks loaded from the engine's host copies (or its
    blocks stored) before it; the tables hold each one's median host work beyond the chunk
    alone, from 0, never decreasing. Measurements replaced by known values (a CPU copy of a
    tiny model's block takes microseconds, under the noise of one pass)."""
    from engine.profile_host import HOST_BLOCKS, host_tables
    from engine.profiler import Profiler

    runner = ModelRunner(model_spec("tiny"), 256, 16)
    profiler = Profiler(runner, repeats=1)
    cells = {key: cell for key, cell in profiler.cells().items() if key[0] == "host"}
    assert set(cells) == {("host", "base")} | {("host", kind, n) for kind in ("load", "store") for n in HOST_BLOCKS}
    assert not runner.cache.host and not runner.requests  # built when prepared, not before
    profiler.prepare(cells, scheduler=False)
    load = profiler.plans["host", "load", 16]
    assert len(load.host_loads) == 16 and not load.host_stores and [c.num_tokens for c in load.chunks] == [16]
    assert all(identity in runner.cache.host for _, identity in load.host_loads)  # stored beforehand
    profiler.forget()
    assert not runner.cache.host and not runner.requests
    medians = {("host", "base"): {"overhead": 1e-3}}
    medians.update({("host", "load", n): {"overhead": 1e-3 + 5e-6 * n} for n in HOST_BLOCKS})
    medians.update({("host", "store", n): {"overhead": 1e-3 + (9e-6 * n if n > 1 else -1e-5)} for n in HOST_BLOCKS})
    tables = host_tables(medians, 16)
    axes, (tokens,), seconds = tables["host_kv_copy"]
    assert axes == ("tokens",) and tokens.tolist() == [0, 16, 64, 256, 1024]
    assert seconds == pytest.approx([0, 5e-6, 2e-5, 8e-5, 3.2e-4])
    assert tables["host_kv_store"][2] == pytest.approx([0, 0, 3.6e-5, 1.44e-4, 5.76e-4])  # noise below 0: 0


def test_a_measured_profile_costs_a_tiers_copies_by_its_own_tables(profile_dir):
    from scheduler.contract import NO_DECODES, new_chunk, new_plan

    profile = Profile.load(profile_dir)
    tiny = model_spec("tiny")
    cost = CostModel(profile, tiny)
    copy, store = profile.tables["host_kv_copy"], profile.tables["host_kv_store"]
    assert copy.scalar(0) == 0 and (np.diff(copy.values) >= 0).all() and (np.diff(store.values) >= 0).all()
    chunk = (new_chunk(5, 64, 16, (), True, 80),)
    plain, loading = (cost.step(new_plan(0, chunk, (), (), (), NO_DECODES, n, s, (), (), (), 0, ()))[0]
                      for n, s in ((0, 0), (64, 16)))
    assert loading - plain == pytest.approx(copy.scalar(64) + store.scalar(16), rel=1e-9)


def test_a_profile_measured_before_the_tier_tables_refuses_a_tier():
    from pathlib import Path

    from scheduler.contract import NO_DECODES, new_chunk, new_plan
    from scheduler.errors import ConfigError

    committed = Path(__file__).resolve().parents[1] / "profiles" / "tiny-cpu-float32-torch"
    profile = Profile.load(committed)
    assert "host_kv_copy" not in profile.tables  # measured on 2026-12-03, before the tables
    cost = CostModel(profile, model_spec("tiny"))
    chunk = (new_chunk(5, 64, 16, (), True, 80),)
    assert cost.step(new_plan(0, chunk, (), (), (), NO_DECODES, 0, 0, (), (), (), 0, ()))[0] > 0
    with pytest.raises(ConfigError, match=r"no host_kv_copy / host_kv_store table .* \(batchlab profile\)"):
        cost.step(new_plan(0, chunk, (), (), (), NO_DECODES, 64, 0, (), (), (), 0, ()))


def test_later_chunks_are_measured_k_at_a_time():
    """warm_chunks prompt chunks in one step (2 on a CPU, where they run one after another; 8 on
    a GPU, where one launch takes them all): a later chunk costs their time beyond one's, per
    chunk, clipped to 1/k to all of one's."""
    from engine.profiler import Profiler

    torch.set_num_threads(1)
    runner = ModelRunner(model_spec("tiny"), 64, 16)
    assert Profiler(runner).warm_chunks == 2
    for few in (0, 1):  # 0 is refused too, not taken for "the default"
        with pytest.raises(ValueError, match=f"warm_chunks is {few}; expected at least 2"):
            Profiler(runner, warm_chunks=few)
    profiler = Profiler(runner, repeats=1, grids=SMALL_GRIDS, warm_chunks=4)
    cells = profiler.cells()
    assert cells["prefill_k", 8, 16] == [(16, 8, False)] * 4 and cells["prefill", 8, 16] == [(16, 8, False)]
    tables = profiler.run()
    first, warm = tables["attn_prefill"][2], tables["attn_prefill_warm"][2]
    assert np.all(warm >= first / 4 - 1e-12) and np.all(warm <= first + 1e-12)
    measured = profiler.medians()
    for i, q in enumerate(SMALL_GRIDS["queries"]):
        for j, c in enumerate(SMALL_GRIDS["contexts"]):
            alone, four = measured["prefill", q, c]["attention"], measured["prefill_k", q, c]["attention"]
            expected = min(max((four - alone) / 3, alone / 4), alone)
            assert warm[i, j] == pytest.approx(expected / runner.spec.num_layers)


def test_a_steps_chunks_after_its_first_cost_what_they_measure_warm(tmp_path):
    """The profile measures each prefill cell alone and twice in one step: the second chunk's
    cost (attn_prefill_warm, within half to all of one alone) is what a step's later chunks are
    charged; the first costs attn_prefill. Without the table (older or roofline profiles) every
    chunk costs attn_prefill."""
    from scheduler import BatchPlan, ScheduledChunk
    from sim.cost_model import KERNELS
    from sim.profile import Table, constant_profile

    torch.set_num_threads(1)
    runner = ModelRunner(model_spec("tiny"), 64, 16)
    profile = Profile.load(profile_engine(runner, tmp_path, "float32", "torch", repeats=1, grids=SMALL_GRIDS))
    first, warm = profile.tables["attn_prefill"].values, profile.tables["attn_prefill_warm"].values
    assert np.all(warm >= first / 2 - 1e-12) and np.all(warm <= first + 1e-12) and np.all(warm > 0)

    grid = (np.array([1.0, 64.0]), np.array([1.0, 64.0]))
    tables = dict(constant_profile(0.0, 0.0).tables, attn_prefill=Table(("query_tokens", "context"), grid,
                                                                         np.full((2, 2), 2.0)))
    plan = BatchPlan(0, tuple(ScheduledChunk(r, 0, 8, (), False, 20) for r in range(3)))
    spec = model_spec("tiny", num_layers=1)

    def attention(tables) -> float:
        return dict(zip(KERNELS, CostModel(Profile("measured", "any", "any", tables, {}), spec).step(plan)[1]))[
            "attn_prefill"]
    assert attention(tables) == 3 * 2.0
    assert attention(dict(tables, attn_prefill_warm=Table(("query_tokens", "context"), grid, np.full((2, 2), 1.0)))) \
        == 2.0 + 2 * 1.0
