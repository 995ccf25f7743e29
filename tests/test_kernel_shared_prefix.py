"""The shared-prefix decode kernel (kernels/shared_prefix.py) against per-request attention (on
CPU: Triton's interpreter), its working memory poisoned with NaN: with the merge as a second
launch, and fused into the kernel's launch (the last program to bring a sequence's partial
merges it). The interpreter runs programs in id order, so ``prefix_first`` decides which side
merges there: the sequences' own programs (prefixes first) or the prefix programs (last)."""
import os

import pytest
import torch

pytest.importorskip("triton")

from kernels.paged_decode import paged_decode_reference  # noqa: E402
from kernels.shared_prefix import shared_prefix_decode_attention, shared_prefix_layout  # noqa: E402
from test_kernels import DEVICE, ELEMENTWISE_BF16, attention_tolerance, caches, relative_error  # noqa: E402

BLOCK_SIZE, HEAD_DIM, HEADS, KV_HEADS = 16, 16, 4, 2
GROUPS = [(32, [0, 1, 2]), (48, [4, 5])]  # two groups (prefix 32 and 48 tokens); sequence 3 in none


def inputs(dtype, sinks):
    key, value, generator = caches(30, BLOCK_SIZE, KV_HEADS, HEAD_DIM, dtype, seed=11)
    prefix = [7, 3]  # two shared blocks, 32 tokens
    tables = torch.tensor([prefix + [1, 0, 0], prefix + [2, 0, 0], prefix + [4, 5, 6], [9, 8, 0, 0, 0],
                           [12, 13, 14, 16, 17], [12, 13, 14, 16, 15]], dtype=torch.int32, device=DEVICE)
    contexts = torch.tensor([40, 33, 77, 21, 70, 75], dtype=torch.int32, device=DEVICE)
    query = torch.randn((6, HEADS, HEAD_DIM), generator=generator).to(DEVICE, dtype)
    sink = (4.0 + torch.randn(HEADS, generator=generator)).to(DEVICE, dtype) if sinks else None
    return query, key, value, tables, contexts, sink


@pytest.fixture
def poisoned(monkeypatch):
    """The kernel's working memory comes full of NaN, so that a slot read unwritten shows."""
    import kernels.shared_prefix as module

    asked = []  # the dtypes of the working memory asked for

    def nan_filled(shape, device, dtype=torch.float32):
        asked.append(dtype)
        return torch.full(shape, float("nan"), device=device, dtype=dtype)

    monkeypatch.setattr(module, "scratch", nan_filled)
    return asked


CASES = [  # dtype, prefix blocks a split, sinks, pages, fused merge, prefixes' programs first
    (torch.float32, 32, False, 1, False, True), (torch.bfloat16, 32, False, 1, False, True),
    (torch.float32, 2, False, 1, False, True), (torch.float32, 1, False, 1, False, False),
    (torch.bfloat16, 2, True, 1, False, True), (torch.float32, 32, False, 2, False, True),
    (torch.bfloat16, 3, False, 4, False, True), (torch.float32, 1, True, 2, False, True),
    (torch.float32, 32, False, 1, True, True), (torch.float32, 1, False, 2, True, False),
    (torch.float32, 2, True, 1, True, True), (torch.float32, 1, True, 1, True, False),
    (torch.bfloat16, 3, True, 2, True, False), (torch.bfloat16, 2, False, 1, True, True)]
# members a prefix program stacks (None: a whole group, 3 here): 1 and 2 give a group several
# member tiles, the last of the 2-member group's empty at 2
MEMBERS = [None] * len(CASES)
CASES += [(torch.float32, 1, False, 1, False, True), (torch.bfloat16, 2, True, 2, True, False),
          (torch.float32, 2, False, 1, True, True), (torch.float32, 1, True, 2, True, False)]
MEMBERS += [1, 2, 1, 2]


@pytest.mark.parametrize("dtype, blocks_per_split, sinks, pages, fused_merge, prefix_first, members",
                         [case + (members,) for case, members in zip(CASES, MEMBERS)])
def test_shared_prefix_matches_per_request_attention(dtype, blocks_per_split, sinks, pages, fused_merge, prefix_first,
                                                     members, poisoned):
    # blocks_per_split 2 and 1 split the prefixes over programs (some splits of the shorter
    # prefix are then empty and must weigh nothing in the merge)
    query, key, value, tables, contexts, sink = inputs(dtype, sinks)
    out = torch.full_like(query, float("nan"))
    shared_prefix_decode_attention(query, key, value, tables, contexts, GROUPS, 0.25, out=out,
                                   prefix_blocks_per_split=blocks_per_split, sinks=sink, pages=pages,
                                   fused_merge=fused_merge, prefix_first=prefix_first, members_per_program=members)
    ref = paged_decode_reference(query.float(), key.float(), value.float(), tables, contexts, 0.25, sinks=sink)
    assert relative_error(out, ref) <= attention_tolerance(dtype, sinks)


@pytest.mark.parametrize("dtype, blocks_per_split, sinks, fused_merge, prefix_first, merge", [
    (torch.bfloat16, 1, True, False, True, dict(fp32_partials=False, merge_rows=4, merge_eager=True)),
    (torch.bfloat16, 2, False, False, True, dict(fp32_partials=False, merge_rows=2, merge_warps=2)),
    (torch.bfloat16, 1, True, True, False, dict(fp32_partials=False, merge_eager=True)),
    (torch.bfloat16, 2, False, True, True, dict(fp32_partials=False)),
    (torch.float32, 1, True, False, True, dict(merge_rows=8, merge_warps=1, merge_eager=True)),
    (torch.float32, 1, False, True, True, dict(merge_eager=True)),
    (torch.float32, 2, True, False, False, dict(fp32_partials=False, merge_eager=True))])
def test_shared_prefix_with_the_merges_options(dtype, blocks_per_split, sinks, fused_merge, prefix_first, merge,
                                               poisoned):
    # partials in the query's dtype, several rows a merge program, the one-trip (eager) merge:
    # the same attention (split 1: the 48-token prefix in 3 splits, 4 slots a row; the fused
    # merge's eager running maximum over 4 at a time is stepped twice in
    # test_fused_merge_over_more_slots_than_it_loads_at_once's 5)
    query, key, value, tables, contexts, sink = inputs(dtype, sinks)
    out = torch.full_like(query, float("nan"))
    shared_prefix_decode_attention(query, key, value, tables, contexts, GROUPS, 0.25, out=out,
                                   prefix_blocks_per_split=blocks_per_split, sinks=sink, fused_merge=fused_merge,
                                   prefix_first=prefix_first, **merge)
    ref = paged_decode_reference(query.float(), key.float(), value.float(), tables, contexts, 0.25, sinks=sink)
    narrow = merge.get("fp32_partials") is False
    # bf16 partials round twice (the partials, then the output): the interpreter's truncating
    # casts get its elementwise allowance for that, a GPU's rounding the 1e-2 of the rest
    rounded_twice = narrow and dtype == torch.bfloat16
    assert relative_error(out, ref) <= (ELEMENTWISE_BF16 if rounded_twice else attention_tolerance(dtype, sinks))
    assert poisoned == [dtype if narrow else torch.float32, torch.float32]  # the partials, their log-sum-exps


@pytest.mark.parametrize("prefix_first, members", [(True, None), (False, None), (False, 1)])
def test_fused_merge_leaves_its_counts_at_zero_for_the_next_layer(prefix_first, members, poisoned):
    """One layout serves every layer of a step: each call's arrival counts go back to zero, so a
    second call (another layer's inputs) merges as the first did."""
    query, key, value, tables, contexts, _ = inputs(torch.float32, False)
    layout = shared_prefix_layout(tables.tolist(), contexts.tolist(), GROUPS, BLOCK_SIZE, DEVICE)
    ref = paged_decode_reference(query, key, value, tables, contexts, 0.25)
    for layer in range(2):
        out = shared_prefix_decode_attention(query * (1 + layer), key, value, tables, contexts, GROUPS, 0.25,
                                             out=torch.full_like(query, float("nan")), layout=layout,
                                             prefix_blocks_per_split=1, fused_merge=True, prefix_first=prefix_first,
                                             members_per_program=members)
        expected = ref if layer == 0 else paged_decode_reference(query * 2, key, value, tables, contexts, 0.25)
        assert relative_error(out, expected) <= 1e-5
        assert layout.arrivals(KV_HEADS).eq(0).all(), layout.arrivals(KV_HEADS)


@pytest.mark.parametrize("prefix_first, eager", [(True, False), (False, False), (True, True), (False, True)])
def test_fused_merge_over_more_slots_than_it_loads_at_once(prefix_first, eager, poisoned):
    """The fused merge loads 4 slots at a time: a 64-token prefix in splits of one block makes
    5 slots a row (its own part and 4 splits), so the merge takes two loads (eager: two steps of
    its running maximum)."""
    query, key, value, tables, contexts, sink = inputs(torch.float32, True)
    out = shared_prefix_decode_attention(query, key, value, tables, contexts, [(32, [0, 1, 2]), (64, [4, 5])], 0.25,
                                         out=torch.full_like(query, float("nan")), prefix_blocks_per_split=1,
                                         sinks=sink, fused_merge=True, prefix_first=prefix_first, merge_eager=eager)
    ref = paged_decode_reference(query, key, value, tables, contexts, 0.25, sinks=sink)
    assert relative_error(out, ref) <= 1e-5


@pytest.mark.parametrize("eager", [False, True])
@pytest.mark.parametrize("members", [None, 1])
def test_prefix_programs_fused_merge_one_slot_at_a_time(eager, members, monkeypatch, poisoned):
    """A prefix program that brings its members' last partials merges all their rows at once,
    as many slots at a time as keep the tile's size (one at Llama's 64 rows of 128): at the tests'
    tiny tiles that is every slot, so here it is held to one, the loop a GPU runs. The prefix
    programs come last (the interpreter runs them in id order), so they merge every row."""
    import kernels.shared_prefix as module

    asked = []  # the slots a pass would load at once (all 4 here), held to one
    monkeypatch.setattr(module, "prefix_chunk", lambda rows, head_dim, splits: asked.append(1 + splits) or 1)
    query, key, value, tables, contexts, sink = inputs(torch.float32, True)
    layout = shared_prefix_layout(tables.tolist(), contexts.tolist(), GROUPS, BLOCK_SIZE, DEVICE)
    out = shared_prefix_decode_attention(query, key, value, tables, contexts, GROUPS, 0.25, layout=layout,
                                         out=torch.full_like(query, float("nan")), prefix_blocks_per_split=1,
                                         sinks=sink, fused_merge=True, prefix_first=False, members_per_program=members,
                                         merge_eager=eager)
    ref = paged_decode_reference(query, key, value, tables, contexts, 0.25, sinks=sink)
    assert relative_error(out, ref) <= 1e-5
    assert layout.arrivals(KV_HEADS).eq(0).all()
    assert asked == [4]  # the 48-token prefix in 3 splits and the sequences' own parts


@pytest.fixture
def shuffled_programs(monkeypatch):
    """Triton's interpreter runs a launch's programs one after another in id order; this hands
    them out in a random order instead (a new one each launch, seeded): on a GPU they finish in
    any order, and the fused merge's arrival counts must merge every sequence whichever program
    comes last."""
    import itertools
    import random

    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("programs run in the interpreter's order only there")
    from triton.runtime import interpreter

    builder, rng, state = interpreter.interpreter_builder, random.Random(7), {}
    set_dim, set_index = builder.set_grid_dim, builder.set_grid_idx

    def shuffled_dim(nx, ny, nz):
        set_dim(nx, ny, nz)
        state["order"] = list(itertools.product(range(nx), range(ny), range(nz)))
        rng.shuffle(state["order"])

    def shuffled_index(x, y, z):
        _, ny, nz = builder.grid_dim
        set_index(*state["order"][(x * ny + y) * nz + z])

    monkeypatch.setattr(builder, "set_grid_dim", shuffled_dim)
    monkeypatch.setattr(builder, "set_grid_idx", shuffled_index)


@pytest.mark.parametrize("members", [None, 1])
def test_fused_merge_whatever_order_the_programs_run_in(members, shuffled_programs, poisoned):
    query, key, value, tables, contexts, sink = inputs(torch.float32, True)
    layout = shared_prefix_layout(tables.tolist(), contexts.tolist(), [(32, [0, 1, 2]), (64, [4, 5])], BLOCK_SIZE,
                                  DEVICE)
    ref = paged_decode_reference(query, key, value, tables, contexts, 0.25, sinks=sink)
    for prefix_first in (True, False, True):  # three launches, three orders
        out = shared_prefix_decode_attention(query, key, value, tables, contexts, [(32, [0, 1, 2]), (64, [4, 5])],
                                             0.25, out=torch.full_like(query, float("nan")), layout=layout,
                                             prefix_blocks_per_split=1, sinks=sink, fused_merge=True,
                                             prefix_first=prefix_first, members_per_program=members)
        assert relative_error(out, ref) <= 1e-5
        assert layout.arrivals(KV_HEADS).eq(0).all()


def test_shared_prefix_refuses_bad_inputs():
    query, key, value, tables, contexts, _ = inputs(torch.float32, False)
    with pytest.raises(ValueError, match="does not start with its group's prefix blocks"):
        shared_prefix_decode_attention(query, key, value, tables, contexts, [(32, [0, 3])], 0.25)
    with pytest.raises(ValueError, match="pages is 3; expected a power of two"):
        shared_prefix_decode_attention(query, key, value, tables, contexts, [(32, [0, 1])], 0.25, pages=3)
    with pytest.raises(ValueError, match="out must be"):
        shared_prefix_decode_attention(query, key, value, tables, contexts, GROUPS, 0.25, out=query[:, :2])
    with pytest.raises(ValueError, match="members_per_program is 3; expected a power of two or None"):
        shared_prefix_decode_attention(query, key, value, tables, contexts, GROUPS, 0.25, members_per_program=3)
    with pytest.raises(ValueError, match="sinks must be"):
        shared_prefix_decode_attention(query, key, value, tables, contexts, GROUPS, 0.25, fused_merge=True,
                                       sinks=torch.zeros(3, device=DEVICE))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the merge's atomics race only on a GPU (the interpreter "
                    "runs one program at a time)")
@pytest.mark.parametrize("prefix_first, merge", [(True, {}), (False, {}),
                                                  (True, {"merge_eager": True, "fp32_partials": False}),
                                                  (False, {"merge_eager": True, "fp32_partials": False})])
def test_fused_merge_under_real_concurrency(prefix_first, merge, poisoned):
    """Llama-3.1-8B's heads, 8 prefixes of 512 tokens with 16 requests each and 8 requests in no
    group, in bf16, on a GPU: 20 calls with the working memory poisoned each time must all give
    the same bits, and match the reference. A merge that read a partial before it was written
    (an arrival counted too early, a stale cache line) would show as NaN or as a call that
    differs from the others. Also with the one-trip merge over bf16 partials (``merge``)."""
    heads, kv_heads, head_dim, prefix, own, per_group, groups = 32, 8, 128, 512, 64, 16, 8
    generator = torch.Generator().manual_seed(3)
    seqs = per_group * groups + 8
    prefix_blocks, own_blocks = prefix // BLOCK_SIZE, (prefix + own) // BLOCK_SIZE
    num_blocks = groups * prefix_blocks + seqs * own_blocks
    key, value = (torch.randn((num_blocks, BLOCK_SIZE, kv_heads, head_dim), generator=generator).to(DEVICE, torch.bfloat16)
                  for _ in range(2))
    order = torch.randperm(num_blocks, generator=generator).to(torch.int32)
    tables = order[groups * prefix_blocks:].view(seqs, own_blocks).clone()  # each request's own blocks
    for g in range(groups):  # a group's members start with its prefix blocks
        tables[g * per_group:(g + 1) * per_group, :prefix_blocks] = order[g * prefix_blocks:(g + 1) * prefix_blocks]
    tables = tables.to(DEVICE)
    contexts = torch.randint(prefix + 1, prefix + own + 1, (seqs,), generator=generator, dtype=torch.int32).to(DEVICE)
    query = torch.randn((seqs, heads, head_dim), generator=generator).to(DEVICE, torch.bfloat16)
    group_list = [(prefix, list(range(g * per_group, (g + 1) * per_group))) for g in range(groups)]
    layout = shared_prefix_layout(tables.tolist(), contexts.tolist(), group_list, BLOCK_SIZE, DEVICE)
    outs = [shared_prefix_decode_attention(query, key, value, tables, contexts, group_list, head_dim ** -0.5,
                                           layout=layout, prefix_blocks_per_split=4, pages=2, fused_merge=True,
                                           prefix_first=prefix_first, **merge) for _ in range(20)]
    launched = shared_prefix_decode_attention(query, key, value, tables, contexts, group_list, head_dim ** -0.5,
                                              layout=layout, prefix_blocks_per_split=4, pages=2)
    assert relative_error(outs[0], launched) <= 1e-2  # the same partials merged: a bf16 rounding apart at most
    ref = paged_decode_reference(query.float(), key.float(), value.float(), tables, contexts, head_dim ** -0.5)
    assert relative_error(outs[0], ref) <= 2e-2  # 1.7 % where the interpreter ran it (its truncating bf16 casts)
    assert all(torch.equal(out, outs[0]) for out in outs[1:])
    assert layout.arrivals(kv_heads).eq(0).all()


def test_a_prefix_program_stacks_at_most_64_rows_of_128_by_default():
    from kernels.shared_prefix import stacked_members

    assert stacked_members(4, 128) == 16   # Llama-3.1-8B: a whole group of 16 (the H200 runs')
    assert stacked_members(8, 512) == 2    # Gemma 4's full layers: 8 members would spill
    assert stacked_members(8, 64) == 16    # gpt-oss
    assert stacked_members(6, 128) == 8    # 10 would fit: a power of two
    assert stacked_members(16, 1024) == 1  # never none
