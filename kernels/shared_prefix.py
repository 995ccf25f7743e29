"""Shared-prefix decode attention (Hydragen, BatchLLM §5), fused into one launch.

For a group of requests whose first ``prefix_len`` tokens are the same KV blocks, the
prefix attention is computed once with all the group's queries stacked (rows = members x
query heads of one kv head: a matrix product instead of many matrix-vector products), each
request's own tokens separately, and the two partials merged exactly through log-sum-exp in
fp32. As in BatchLLM, one launch does both: the first programs take the prefixes, the rest the
distinct parts (horizontal fusion). A long prefix is split over several programs (split-KV, as
in paged decode), each a partial merged by the same log-sum-exp: a few groups would otherwise
leave most of a GPU's multiprocessors idle while one program per group and kv head streams the
whole prefix (8 groups x 8 kv heads are 64 programs on an H100's 132 multiprocessors).
The merge is a second launch, or, with ``fused_merge``, the work of whichever program brings a
sequence's last partial: each program counts its arrival per sequence and kv head with an
atomic (acquire-release, GPU scope, after a barrier so that all its threads' stores come
first), and the last reads the partials back from L2 (they were written on other
multiprocessors) and resets the count for the next layer's call. A prefix split that ends after
its group's own parts is the last for all the members it stacks: it merges them 16 rows a pass
(4 of Llama's members), not one member after another (a serial tail of 16 merges).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import triton
import triton.language as tl

from .common import (LOG2E, attend_blocks, attend_pages, check_sinks, dot_precision, launch_options, merge_partials,
                     merge_rows)


@triton.jit
def _store_partial(acc, m_i, l_i, out_rows, live, slot, num_slots, parts_ptr, lse_ptr, HEAD_DIM: tl.constexpr):
    dims = tl.arange(0, HEAD_DIM)
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    lse = tl.where(l_i == 0.0, float("-inf"), m_i + tl.log2(tl.where(l_i == 0.0, 1.0, l_i)))
    tl.store(parts_ptr + (out_rows[:, None] * num_slots + slot) * HEAD_DIM + dims[None, :],
             out.to(parts_ptr.dtype.element_ty), mask=live[:, None])
    tl.store(lse_ptr + out_rows * num_slots + slot, lse, mask=live)


@triton.jit
def _shared_prefix_kernel(q_ptr, k_ptr, v_ptr, tables_ptr, context_ptr, skip_ptr,
                          group_rows_ptr, group_size_ptr, group_prefix_ptr, group_seq_ptr,
                          parts_ptr, lse_ptr, out_ptr, sinks_ptr, arrivals_ptr, num_seqs, num_groups, prefix_splits,
                          split_blocks, kv_heads, heads,
                          stride_qs, stride_kb, stride_ks, stride_kh, stride_t, stride_g, scale,
                          GROUP: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_M: tl.constexpr,
                          HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr, DOT_PRECISION: tl.constexpr,
                          PAGES: tl.constexpr = 1, FUSED_MERGE: tl.constexpr = False, PREFIX_FIRST: tl.constexpr = True,
                          MEMBERS: tl.constexpr = 1, BLOCK_R: tl.constexpr = 1, BLOCK_P: tl.constexpr = 2,
                          SINKS: tl.constexpr = False, MEMBER_TILES: tl.constexpr = 1,
                          MERGE_EAGER: tl.constexpr = False, MERGE_MEMBERS: tl.constexpr = 1,
                          PREFIX_CHUNK: tl.constexpr = 1):
    program = tl.program_id(0)
    kv_head = tl.program_id(1)
    dims = tl.arange(0, HEAD_DIM)
    num_slots = prefix_splits + 1  # per query row: its own tokens' partial, then one per prefix split
    prefix_programs = num_groups * prefix_splits * MEMBER_TILES
    if PREFIX_FIRST:  # program ids: the prefixes' splits, then the sequences
        prefix_program, distinct_program = program, program - prefix_programs
    else:  # the sequences, then the prefixes' splits
        prefix_program, distinct_program = program - num_seqs, program
    if (prefix_program >= 0) & (prefix_program < prefix_programs):
        # a split of a prefix: ``MEMBERS`` members' query heads of this kv head, stacked (_p: this
        # branch's names); a group's member tiles of one split have neighbouring ids (their KV
        # blocks read together: once from memory, the rest from L2)
        group_p = prefix_program // (prefix_splits * MEMBER_TILES)
        split_p = prefix_program // MEMBER_TILES % prefix_splits
        tile_p = prefix_program % MEMBER_TILES  # (a constant: 26 registers fewer on sm_90 than an argument)
        size_p = tl.load(group_size_ptr + group_p)
        rows_p = tl.arange(0, BLOCK_M)
        member_p = tile_p * MEMBERS + rows_p // GROUP
        live_p = (rows_p < MEMBERS * GROUP) & (member_p < size_p)
        seq_p = tl.load(group_rows_ptr + group_p * stride_g + member_p, mask=live_p, other=0).to(tl.int64)
        head_p = kv_head * GROUP + rows_p % GROUP
        q_p = tl.load(q_ptr + seq_p[:, None] * stride_qs + head_p[:, None] * HEAD_DIM + dims[None, :],
                    mask=live_p[:, None], other=0.0).to(tl.float32) * (scale * LOG2E)
        prefix_p = tl.load(group_prefix_ptr + group_p)
        first_seq_p = tl.load(group_seq_ptr + group_p).to(tl.int64)  # its table holds the prefix blocks
        first_p = split_p * split_blocks  # a split past a short prefix is empty: its partial weighs 0
        end_p = tl.minimum(prefix_p, (first_p + split_blocks) * BLOCK_SIZE)
        if PAGES == 1:
            acc_p, m_i_p, l_i_p = attend_blocks(q_p, k_ptr + kv_head * stride_kh, v_ptr + kv_head * stride_kh,
                                                tables_ptr + first_seq_p * stride_t, first_p, end_p, rows_p,
                                                stride_kb, stride_ks, BLOCK_SIZE, HEAD_DIM, BLOCK_M, DOT_PRECISION,
                                                False)
        else:
            acc_p, m_i_p, l_i_p = attend_pages(q_p, k_ptr + kv_head * stride_kh, v_ptr + kv_head * stride_kh,
                                               tables_ptr + first_seq_p * stride_t, first_p, end_p, stride_kb,
                                               stride_ks, BLOCK_SIZE, PAGES, HEAD_DIM, BLOCK_M, DOT_PRECISION)
        # each branch stores its own partial: the two tiles have different row counts
        _store_partial(acc_p, m_i_p, l_i_p, seq_p * heads + head_p, live_p, 1 + split_p, num_slots, parts_ptr,
                       lse_ptr, HEAD_DIM)
        if FUSED_MERGE:  # one arrival a member; the members whose arrival was the last merged together
            tl.debug_barrier()  # every thread's partials stored before the arrivals count them
            members = tile_p * MEMBERS + tl.arange(0, MEMBERS)
            joined = members < size_p
            seqs = tl.load(group_rows_ptr + group_p * stride_g + members, mask=joined, other=0).to(tl.int64)
            arrived = tl.atomic_add(arrivals_ptr + seqs * kv_heads + kv_head, 1, mask=joined, sem="acq_rel",
                                    scope="gpu")
            last = joined & (arrived == prefix_splits)  # (what a masked atomic returns is not defined)
            tl.debug_barrier()
            # the rows of members whose arrival was the last are merged here, MERGE_MEMBERS members a
            # pass (16 rows: a pass's loads hold as many registers as the distinct side's merge):
            # a prefix split that ends after its group's own parts is the last for every member
            r = tl.arange(0, MERGE_MEMBERS * BLOCK_R)
            head_r = r % BLOCK_R
            for first in tl.static_range(0, MEMBERS, MERGE_MEMBERS):  # (unrolled: fewer registers on sm_90)
                picked = ((first + r // BLOCK_R)[:, None] == tl.arange(0, MEMBERS)[None, :]) & last[None, :]
                merged_r = (tl.sum(picked.to(tl.int32), 1) > 0) & (head_r < GROUP)
                if tl.sum(merged_r.to(tl.int32), 0) > 0:
                    seq_r = tl.sum(tl.where(picked, seqs[None, :], 0), 1)
                    merge_rows(parts_ptr, lse_ptr, out_ptr, sinks_ptr, seq_r * heads + kv_head * GROUP + head_r,
                               merged_r, num_slots, heads, HEAD_DIM, BLOCK_P, SINKS, ".cg", PREFIX_CHUNK, MERGE_EAGER)
            tl.store(arrivals_ptr + seqs * kv_heads + kv_head, 0, mask=last)  # for the next layer's call
    elif (distinct_program >= 0) & (distinct_program < num_seqs):
        # distinct part: one sequence's own tokens after its shared prefix
        seq = distinct_program.to(tl.int64)
        rows = tl.arange(0, BLOCK_G)
        live = rows < GROUP
        head = kv_head * GROUP + rows
        q = tl.load(q_ptr + seq * stride_qs + head[:, None] * HEAD_DIM + dims[None, :],
                    mask=live[:, None], other=0.0).to(tl.float32) * (scale * LOG2E)
        context = tl.load(context_ptr + seq)
        skip = tl.load(skip_ptr + seq)
        if PAGES == 1:
            acc, m_i, l_i = attend_blocks(q, k_ptr + kv_head * stride_kh, v_ptr + kv_head * stride_kh,
                                          tables_ptr + seq * stride_t, skip // BLOCK_SIZE, context, rows, stride_kb,
                                          stride_ks, BLOCK_SIZE, HEAD_DIM, BLOCK_G, DOT_PRECISION, False)
        else:
            acc, m_i, l_i = attend_pages(q, k_ptr + kv_head * stride_kh, v_ptr + kv_head * stride_kh,
                                         tables_ptr + seq * stride_t, skip // BLOCK_SIZE, context, stride_kb,
                                         stride_ks, BLOCK_SIZE, PAGES, HEAD_DIM, BLOCK_G, DOT_PRECISION)
        if FUSED_MERGE:
            if skip == 0:  # in no group: its own tokens are all it attends to
                sink = tl.full([BLOCK_G], float("-inf"), tl.float32)
                if SINKS:
                    sink = tl.load(sinks_ptr + head, mask=live, other=0.0).to(tl.float32) * LOG2E
                tl.store(out_ptr + (seq * heads + head)[:, None] * HEAD_DIM + dims[None, :],
                         _normalise(acc, m_i, l_i, sink).to(out_ptr.dtype.element_ty), mask=live[:, None])
            else:
                _store_partial(acc, m_i, l_i, seq * heads + head, live, 0, num_slots, parts_ptr, lse_ptr, HEAD_DIM)
                tl.debug_barrier()  # every thread's partial stored before the arrival counts it
                counter = arrivals_ptr + seq * kv_heads + kv_head
                if tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu") == prefix_splits:
                    _merge_sequence(seq, kv_head, parts_ptr, lse_ptr, out_ptr, sinks_ptr, arrivals_ptr, kv_heads,
                                    num_slots, heads, GROUP, BLOCK_R, BLOCK_P, HEAD_DIM, SINKS, MERGE_EAGER)
        else:
            _store_partial(acc, m_i, l_i, seq * heads + head, live, 0, num_slots, parts_ptr, lse_ptr, HEAD_DIM)
            if skip == 0:  # in no group: its prefix slots weigh nothing (the buffers come uncleared)
                nothing = tl.full([BLOCK_G], float("-inf"), tl.float32)
                for split in range(prefix_splits):
                    tl.store(lse_ptr + (seq * heads + head) * num_slots + 1 + split, nothing, mask=live)


@triton.jit
def _merge_sequence(seq, kv_head, parts_ptr, lse_ptr, out_ptr, sinks_ptr, arrivals_ptr, kv_heads, num_slots, heads,
                    GROUP: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr, HEAD_DIM: tl.constexpr,
                    SINKS: tl.constexpr, EAGER: tl.constexpr):
    """The fused merge of one sequence's query heads of ``kv_head``, by the program whose arrival
    was the last of its ``num_slots`` partials (read from L2: other multiprocessors wrote
    them); its arrival count goes back to 0 for the next call."""
    r = tl.arange(0, BLOCK_R)
    merge_rows(parts_ptr, lse_ptr, out_ptr, sinks_ptr, seq * heads + kv_head * GROUP + r, r < GROUP, num_slots, heads,
               HEAD_DIM, BLOCK_P, SINKS, ".cg", 4, EAGER)  # 4 slots at a time: all at once took 28 registers more
    tl.store(arrivals_ptr + seq * kv_heads + kv_head, 0)


@triton.jit
def _normalise(acc, m_i, l_i, sink):
    """The output of one partial (unnormalised ``acc``, base-2 running max and sum) whose
    softmax's denominator also takes each row's ``sink`` (base-2; -inf: none)."""
    top = tl.maximum(m_i, sink)
    top = tl.where(top == float("-inf"), 0.0, top)
    weight = tl.exp2(m_i - top)
    total = l_i * weight + tl.exp2(sink - top)
    return acc * weight[:, None] / tl.where(total == 0.0, 1.0, total)[:, None]


def scratch(shape: tuple, device, dtype=torch.float32) -> torch.Tensor:
    """Working memory (fp32 unless said) that the kernel writes before the merge reads it (tests poison it)."""
    return torch.empty(shape, device=device, dtype=dtype)


@dataclass(frozen=True)
class SharedPrefixLayout:
    """The groups of one step as the kernel reads them (the same for every layer)."""
    num_groups: int
    max_members: int
    max_prefix: int          # tokens of the longest prefix
    skip: torch.Tensor       # [seqs] int32: tokens of a sequence read through its group's prefix
    rows: torch.Tensor       # [groups, max members] int32: the members' sequence indices
    sizes: torch.Tensor      # [groups] int32
    prefixes: torch.Tensor   # [groups] int32: prefix tokens
    first_seq: torch.Tensor  # [groups] int32: a member whose table holds the prefix blocks
    counters: dict = field(default_factory=dict, repr=False, compare=False)  # kv heads -> arrivals()

    def arrivals(self, kv_heads: int) -> torch.Tensor:
        """[sequences, kv_heads] int32 arrival counts for the fused merge, zero between calls
        (the last arrival of each resets its count): made once for all the step's layers."""
        if kv_heads not in self.counters:
            self.counters[kv_heads] = torch.zeros((len(self.skip), kv_heads), dtype=torch.int32, device=self.skip.device)
        return self.counters[kv_heads]


def shared_prefix_layout(block_tables, context_lens, groups: list[tuple[int, list[int]]], block_size: int,
                         device) -> SharedPrefixLayout:
    """Checks that every member's table starts with its group's prefix blocks and that its
    context goes past the prefix, and builds the kernel's group tensors. ``block_tables`` and
    ``context_lens`` are host-side (a sequence of block-id sequences, one of ints): built once
    per step from the plan, without waiting for the device, not once per layer."""
    skip = [0] * len(context_lens)
    max_members = max((len(m) for _, m in groups), default=1)
    rows = [[0] * max_members for _ in range(max(len(groups), 1))]
    sizes, prefixes, first_seq = ([0] * max(len(groups), 1) for _ in range(3))
    for index, (prefix, members) in enumerate(groups):
        if prefix % block_size or prefix <= 0:
            raise ValueError(f"a shared prefix of {prefix} tokens is not a positive whole number of blocks")
        first = list(block_tables[members[0]][: prefix // block_size])
        for member in members:
            if context_lens[member] <= prefix or list(block_tables[member][: prefix // block_size]) != first:
                raise ValueError(f"sequence {member} does not start with its group's prefix blocks")
            skip[member] = prefix
        rows[index][: len(members)] = members
        sizes[index], prefixes[index], first_seq[index] = len(members), prefix, members[0]
    as_device = lambda values: torch.tensor(values, dtype=torch.int32).to(device)
    return SharedPrefixLayout(len(groups), max_members, max(prefixes), as_device(skip), as_device(rows), as_device(sizes),
                              as_device(prefixes), as_device(first_seq))


def shared_prefix_decode_attention(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                                   block_tables: torch.Tensor, context_lens: torch.Tensor,
                                   groups: list[tuple[int, list[int]]], scale: float,
                                   out: torch.Tensor | None = None,
                                   layout: SharedPrefixLayout | None = None, prefix_blocks_per_split: int = 32,
                                   num_warps: int | None = None, num_stages: int | None = None,
                                   sinks: torch.Tensor | None = None, pages: int = 1, fused_merge: bool = False,
                                   prefix_first: bool = True, members_per_program: int | None = None,
                                   fp32_partials: bool = True, merge_rows: int = 1, merge_warps: int | None = None,
                                   merge_eager: bool = False) -> torch.Tensor:
    """Decode attention where ``groups`` lists (prefix length, sequence indices) of requests
    whose block tables start with the same ``prefix length / block size`` blocks. Sequences in
    no group attend normally (their "distinct" part is their whole context). ``layout``: the
    step's ``shared_prefix_layout``, built once for all layers (built here otherwise).
    ``prefix_blocks_per_split``: KV blocks of a prefix one program reads.
    ``num_warps``, ``num_stages``: Triton's launch options (its defaults where None).
    ``pages``: KV blocks a program reads per loop iteration (a power of two; 1: block by block).
    ``sinks`` [heads]: a logit per head in the softmax's denominator (gpt-oss; no sliding window
    here: the backend sends a windowed layer's decodes to paged decode).
    ``fused_merge``: the merge in the same launch, by whichever program brings a sequence's
    last partial (counted by atomics; a sequence in no group writes its output directly)
    instead of a second launch. ``prefix_first``: program ids give the prefixes' splits first
    (they are the long programs), else the sequences' own parts first. ``members_per_program``
    (a power of two; None: ``stacked_members``): members whose queries one prefix program
    stacks; a group's prefix split is then read by several programs side by side (the rest from
    L2), and each holds fewer rows: on sm_90 the kernel takes 160 registers a thread at 64 rows
    of 128 (3 programs a multiprocessor), 96 at 16 (5), which its sequences' programs share.
    ``fp32_partials``: False keeps the partial outputs in the query's dtype (bf16: half the bytes
    written and merged; their log-sum-exps and the merge's arithmetic stay fp32, as FlashInfer's
    ``merge_state`` takes its partial values). The merge's launch: ``merge_rows`` (a power of two)
    rows a program, ``merge_warps`` (None: Triton's default); ``merge_eager``: partials and
    log-sum-exps read in one trip to memory (kernels/common.py's merge_rows), the fused merge's too."""
    seqs, heads, head_dim = query.shape
    _, block_size, kv_heads, _ = key_cache.shape
    if heads % kv_heads or key_cache.shape[-1] != head_dim or value_cache.shape != key_cache.shape:
        raise ValueError("query, key and value shapes do not agree")
    if block_tables.dtype != torch.int32 or context_lens.dtype != torch.int32 or not block_tables.is_contiguous():
        raise ValueError("block_tables and context_lens must be contiguous int32")
    if layout is None:
        layout = shared_prefix_layout(block_tables.tolist(), context_lens.tolist(), groups, block_size, query.device)
    check_options(dict(prefix_blocks_per_split=prefix_blocks_per_split, pages=pages, fused_merge=fused_merge,
                       prefix_first=prefix_first, members_per_program=members_per_program, num_warps=num_warps,
                       num_stages=num_stages, fp32_partials=fp32_partials, merge_rows=merge_rows,
                       merge_warps=merge_warps, merge_eager=merge_eager))
    if out is None:
        out = torch.empty_like(query)
    if out.shape != query.shape or out.dtype != query.dtype or not out.is_contiguous():
        raise ValueError("out must be a contiguous tensor shaped and typed like query")
    if sinks is not None and check_sinks(sinks, seqs * heads) != heads:
        raise ValueError(f"sinks must be a [heads] tensor of {heads} logits, got {tuple(sinks.shape)}")
    splits = max(1, triton.cdiv(triton.cdiv(layout.max_prefix, block_size), prefix_blocks_per_split))
    # every slot that a merge reads is written by the kernel (a partial, or -inf where a row has
    # no prefix): no fill kernels (two launches, and 19 MB cleared at 128 requests x 32 heads x 9
    # slots x 128 dims)
    parts = scratch((seqs * heads, 1 + splits, head_dim), query.device, torch.float32 if fp32_partials else query.dtype)
    lse = scratch((seqs * heads, 1 + splits), query.device)
    constants = launch_constants(query.dtype, heads // kv_heads, head_dim, block_size, layout.max_members, splits,
                                 members_per_program, pages, fused_merge, prefix_first, sinks is not None, merge_eager)
    _shared_prefix_kernel[(layout.num_groups * splits * constants["MEMBER_TILES"] + seqs, kv_heads)](
        query, key_cache, value_cache, block_tables, context_lens, layout.skip, layout.rows, layout.sizes,
        layout.prefixes, layout.first_seq, parts, lse, out, lse if sinks is None else sinks,
        layout.arrivals(kv_heads) if fused_merge else lse, seqs, layout.num_groups, splits, prefix_blocks_per_split,
        kv_heads, heads, query.stride(0),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2), block_tables.stride(0), layout.rows.stride(0),
        scale, **constants, **launch_options(num_warps, num_stages))
    if not fused_merge:
        merge_partials(parts, lse, out.view(seqs * heads, head_dim), sinks, rows_per_program=merge_rows,
                       num_warps=merge_warps, eager=merge_eager)
    return out


def launch_constants(dtype, group: int, head_dim: int, block_size: int, max_members: int, splits: int,
                     members_per_program: int | None = None, pages: int = 1, fused_merge: bool = False,
                     prefix_first: bool = True, sinks: bool = False, merge_eager: bool = False) -> dict:
    """The kernel's compile-time constants for a call: ``group`` query heads a kv head, a step's
    largest group of ``max_members`` and its prefixes in ``splits`` splits, with the call's
    options (the wrapper launches with them; kernels.compile_check and
    benchmarks/compile_sweep.py compile with them, without a GPU)."""
    members = min(members_per_program or stacked_members(group, head_dim), triton.next_power_of_2(max_members))
    block_r = triton.next_power_of_2(group)
    merge_members = max(1, min(members, 16 // block_r))  # a prefix program's fused merge: members a pass
    return dict(GROUP=group, BLOCK_G=max(16, block_r), BLOCK_M=max(16, triton.next_power_of_2(members * group)),
                HEAD_DIM=head_dim, BLOCK_SIZE=block_size, DOT_PRECISION=dot_precision(dtype), PAGES=pages,
                FUSED_MERGE=fused_merge, PREFIX_FIRST=prefix_first, MEMBERS=members, BLOCK_R=block_r,
                BLOCK_P=max(2, triton.next_power_of_2(1 + splits)), SINKS=sinks,
                MEMBER_TILES=triton.cdiv(max_members, members), MERGE_MEMBERS=merge_members,
                MERGE_EAGER=merge_eager and fused_merge,  # (the kernel's own merge only: one compile less else)
                PREFIX_CHUNK=prefix_chunk(merge_members * block_r, head_dim, splits))


def prefix_chunk(rows: int, head_dim: int, splits: int) -> int:
    """Slots a prefix program's fused merge loads at once for a pass of ``rows`` rows: 2,048
    elements at most, as the launched merge (at least one slot)."""
    return max(1, min(triton.next_power_of_2(1 + splits), 2048 // (rows * head_dim)))


STACKED = 8192  # query elements (rows x head size) a prefix program stacks at most by default


def stacked_members(group: int, head_dim: int) -> int:
    """Members a prefix program stacks by default: the most (a power of two) whose query heads
    of one kv head keep the tile within ``STACKED`` elements, 64 rows of 128. Llama's 16 members
    of 4 heads fit (the H200 figures' setting); 32 would take 250 registers a thread on sm_90 (2
    programs a multiprocessor), and Gemma 4's 8 heads of 512 stacked 8 members spill (255
    registers and 1.6 KB of local memory a thread; 2 members: 180, none)."""
    fits = max(1, STACKED // (group * head_dim))
    return 1 << (fits.bit_length() - 1)


def _power_of_two(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1 and not value & (value - 1)


_WARPS = ("a power of two up to 32, or None", lambda v: v is None or (_power_of_two(v) and v <= 32))
# the launch and tiling options of shared_prefix_decode_attention: what each must be
OPTIONS = {
    "prefix_blocks_per_split": ("an integer >= 1", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1),
    "pages": ("a power of two", _power_of_two),
    "members_per_program": ("a power of two or None", lambda v: v is None or _power_of_two(v)),
    "fused_merge": ("true or false", lambda v: isinstance(v, bool)),
    "prefix_first": ("true or false", lambda v: isinstance(v, bool)),
    "num_warps": _WARPS,
    "num_stages": ("an integer >= 1, or None", lambda v: v is None or (isinstance(v, int) and v >= 1)),
    "fp32_partials": ("true or false", lambda v: isinstance(v, bool)),
    "merge_rows": ("a power of two", _power_of_two),
    "merge_warps": _WARPS,
    "merge_eager": ("true or false", lambda v: isinstance(v, bool)),
}


def check_options(options: dict) -> None:
    """A ValueError naming the option for an unknown option or a value it cannot take."""
    for name, value in options.items():
        if name not in OPTIONS:
            raise ValueError(f"unknown shared-prefix kernel option {name!r}; expected one of {', '.join(OPTIONS)}")
        expected, valid = OPTIONS[name]
        if not valid(value):
            raise ValueError(f"{name} is {value!r}; expected {expected}")


def effective_options(options: dict) -> dict:
    """Every option's value for a call given ``options`` (checked): theirs, else the defaults."""
    import inspect

    check_options(options)
    defaults = inspect.signature(shared_prefix_decode_attention).parameters
    return {name: options.get(name, defaults[name].default) for name in OPTIONS}
