"""Segment chains from token ids (traces/token_chains.py) against a token-level model."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from traces.token_chains import TokenError, chains_from_tokens, distinct_tokens


def common_prefix(a, b) -> int:
    count = 0
    for x, y in zip(a, b):
        if x != y:
            break
        count += 1
    return count


def shared_segment_tokens(a, b) -> int:
    count = 0
    for x, y in zip(a, b):
        if x != y:
            break
        count += x[1]
    return count


# few distinct tokens and short alphabets make prefixes, repeats and strict prefixes common
token_lists = st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=12), min_size=1, max_size=14)


@settings(max_examples=300, deadline=None)
@given(token_lists)
def test_chains_share_exactly_the_common_token_prefix(sequences):
    chains = chains_from_tokens(sequences)
    assert len(chains) == len(sequences)
    for tokens, chain in zip(sequences, chains):
        assert sum(length for _, length in chain) == len(tokens)
    for i, a in enumerate(sequences):
        for j, b in enumerate(sequences):
            assert shared_segment_tokens(chains[i], chains[j]) == common_prefix(a, b), (i, j)
    # no cut without a reason: every segment ends where this prompt ends or another leaves it
    for i, (tokens, chain) in enumerate(zip(sequences, chains)):
        end = 0
        for _, length in chain:
            end += length
            assert end == len(tokens) or any(common_prefix(tokens, other) == end
                                             for j, other in enumerate(sequences) if j != i)
    # one id, one node: the same length and the same tokens before and inside it
    seen = {}
    for tokens, chain in zip(sequences, chains):
        end = 0
        for segment, length in chain:
            end += length
            assert seen.setdefault(segment, tuple(tokens[:end])) == tuple(tokens[:end])
    # the tree holds each distinct prefix token once
    prefixes = {tuple(tokens[:k]) for tokens in sequences for k in range(1, len(tokens) + 1)}
    assert distinct_tokens(chains) == len(prefixes)


def test_ids_in_order_of_first_use_and_arrays_accepted():
    sequences = [np.array([5, 6, 7, 8]), [5, 6, 9], [5, 6, 7, 8], [1]]
    assert chains_from_tokens(sequences) == [((0, 2), (1, 2)), ((0, 2), (2, 1)), ((0, 2), (1, 2)), ((3, 1),)]


@pytest.mark.parametrize("tokens, message", [([], "non-empty"), ([1.5, 2], "integers"), ([-1], "0.."),
                                             ([1 << 32], "0..")])
def test_bad_token_lists_are_named(tokens, message):
    with pytest.raises(TokenError, match=message) as raised:
        chains_from_tokens([[1, 2], tokens])
    assert raised.value.index == 1


SHARED = Path(__file__).resolve().parents[2] / "shared" / "traces"


@pytest.mark.skipif(not SHARED.exists(), reason=f"real traces not found at {SHARED}")
def test_token_ids_of_a_real_trace_simulate_as_its_block_hashes():
    # ../shared/traces/README.md: materialise Mooncake block h as 512 token ids derived from h,
    # the last block cut to length; the radix tree over those tokens must share KV exactly as
    # the loader's block-hash chains do: every step of every schedule the same
    from scheduler import Request, schedule_config
    from scheduler.model_spec import model_spec
    from sim.cost_model import CostModel
    from sim.hardware import hardware_spec
    from sim.roofline import build_roofline_profile
    from sim.simulator import simulate
    from traces.loaders import load_mooncake
    from traces.workload import Workload

    native = load_mooncake(SHARED / "mooncake" / "conversation_trace.jsonl").head(300)
    offsets = np.arange(512, dtype=np.uint64)
    tokens = [np.concatenate([((np.uint64(h) * 512 + offsets[:n]) % (1 << 32)).astype(np.uint32)
                              for h, n in r.prompt]) for r in native.requests]
    chains = chains_from_tokens(tokens)
    imported = Workload("tokens", tuple(Request(r.req_id, r.arrival_s, chain, r.output_len)
                                        for r, chain in zip(native.requests, chains)))
    assert sum(len(c) for c in chains) < sum(len(r.prompt) for r in native.requests)  # not the same chains
    model = model_spec("llama-3.1-8b")
    cost = CostModel(build_roofline_profile(model, hardware_spec("h100-sxm")), model)
    for name in ("fcfs", "batchllm"):
        runs = [simulate(w, schedule_config(name), cost, 25_720, 16) for w in (native, imported)]
        assert runs[0].scheduler.kv.num_evictions > 0 if name == "fcfs" else True
        assert runs[0].scheduler.kv.num_evictions == runs[1].scheduler.kv.num_evictions
        columns = [run.steps.columns() for run in runs]
        assert columns[0].keys() == columns[1].keys()
        for key in columns[0]:
            assert np.array_equal(columns[0][key], columns[1][key]), (name, key)
