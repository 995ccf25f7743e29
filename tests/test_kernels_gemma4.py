"""Gemma 4's shapes through the Triton kernels (on CPU: Triton's interpreter): its full layers'
head size of 512. (Its norm and GeGLU experts, and the engine on it: tests/test_kernels.py.)"""
import pytest
import torch

triton = pytest.importorskip("triton")

from kernels.paged_decode import paged_decode_attention, paged_decode_reference  # noqa: E402
from kernels.paged_prefill import paged_prefill_attention  # noqa: E402
from kernels.shared_prefix import shared_prefix_decode_attention  # noqa: E402
from test_kernels import DEVICE, TOLERANCE, caches, relative_error  # noqa: E402


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gemma4_full_layers_head_size_through_the_attention_kernels(dtype):
    """Gemma 4 31B's full layers (head size 512, 8 query heads a kv head, softmax scale 1) through
    paged decode, paged prefill and the shared-prefix kernel: each against the reference (a
    prefill chunk's query at position p is a decode over its first p + 1 tokens)."""
    block_size, head_dim, heads, kv_heads = 16, 512, 8, 1
    key, value, generator = caches(12, block_size, kv_heads, head_dim, dtype, seed=5)
    key, value = key / 8, value  # scores of a few units at scale 1, as Gemma 4's normalised keys give
    tables = torch.tensor([[3, 5, 0], [3, 5, 7], [9, 0, 0]], dtype=torch.int32, device=DEVICE)
    contexts = torch.tensor([37, 40, 11], dtype=torch.int32, device=DEVICE)
    query = (torch.randn((3, heads, head_dim), generator=generator) / 8).to(DEVICE, dtype)
    ref = paged_decode_reference(query.float(), key.float(), value.float(), tables, contexts, 1.0)
    for name, call in (("decode", lambda out: paged_decode_attention(query, key, value, tables, contexts, 1.0,
                                                                     blocks_per_split=1, out=out)),
                       ("shared prefix", lambda out: shared_prefix_decode_attention(
                           query, key, value, tables, contexts, [(32, [0, 1])], 1.0, out=out))):
        out = call(torch.full_like(query, float("nan")))
        assert relative_error(out, ref) <= TOLERANCE[dtype], name
    # a 6-token chunk after 31 cached tokens and a whole 11-token prompt, causal
    query_lens, chunk_contexts = [6, 11], [37, 11]
    chunks = torch.randn((17, heads, head_dim), generator=generator).div(8).to(DEVICE, dtype)
    out = paged_prefill_attention(chunks, key, value, tables[[0, 2]], torch.tensor([0, 6], dtype=torch.int32,
                                  device=DEVICE), torch.tensor(query_lens, dtype=torch.int32, device=DEVICE),
                                  torch.tensor(chunk_contexts, dtype=torch.int32, device=DEVICE), 1.0,
                                  out=torch.full_like(chunks, float("nan")))
    rows = [(chunk, ctx - q_len + i + 1) for chunk, (q_len, ctx) in enumerate(zip(query_lens, chunk_contexts))
            for i in range(q_len)]
    ref = paged_decode_reference(chunks.float(), key.float(), value.float(), tables[[0 if c == 0 else 2 for c, _ in rows]],
                                 torch.tensor([n for _, n in rows], dtype=torch.int32, device=DEVICE), 1.0)
    assert relative_error(out, ref) <= TOLERANCE[dtype]
