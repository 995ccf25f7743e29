"""The Triton attention backend for the engine (CUDA devices; the interpreter on CPU in tests).

Decode chunks go through the fused shared-prefix kernel when the plan names groups of them that
read the same prefix blocks, else through split-KV paged decode; prefill chunks (any length,
after cached or shared prefixes) through the varlen paged prefill kernel.
"""
from __future__ import annotations

import numpy as np
import torch

from engine.attention import BACKENDS, AttentionBackend
from scheduler.errors import ConfigError

from .delta_rule import delta_rule_step
from .paged_decode import paged_decode_attention
from .fused_moe import fused_experts
from .kv_store import store_kv
from .paged_prefill import paged_prefill_attention
from .rmsnorm import rms_norm
from .rope import apply_rope_
from .shared_prefix import effective_options, shared_prefix_decode_attention, shared_prefix_layout


def _table(tables: list, device) -> torch.Tensor:
    """Block tables (host sequences of block ids) padded into one int32 tensor on ``device``,
    built on the host and copied once."""
    width = max((len(t) for t in tables), default=1)
    out = np.zeros((len(tables), max(width, 1)), dtype=np.int32)
    for row, table in enumerate(tables):
        out[row, : len(table)] = table
    return torch.from_numpy(out).to(device)


class TritonAttentionBackend(AttentionBackend):
    name = "triton"
    prefix_aware = True
    windows_and_sinks = True

    def __init__(self, options: dict | None = None) -> None:
        """``options``: by kernel, the options its call takes; only ``shared_prefix`` has any
        (``shared_prefix_decode_attention``'s launch and tiling options)."""
        options = dict(options or {})
        unknown = sorted(set(options) - {"shared_prefix"})
        if unknown:
            raise ConfigError(f"kernel options for {unknown}: only the shared_prefix kernel takes options")
        try:
            self.options = {"shared_prefix": effective_options(dict(options.get("shared_prefix") or {}))}
        except ValueError as error:
            raise ConfigError(f"kernels.shared_prefix: {error}") from None

    def rms_norm(self, x, weight, eps, gemma=False, offset=1.0):
        return rms_norm(x.contiguous(), weight, eps, gemma=gemma, offset=offset)

    def rope(self, q, k, positions, cos, sin, inv_freq):
        return apply_rope_(q.contiguous(), positions, inv_freq), apply_rope_(k.contiguous(), positions, inv_freq)

    def store_kv(self, cache, layer, slots, key, value):
        store_kv(key.contiguous(), value.contiguous(), cache.key[layer], cache.value[layer], slots)

    def delta_step(self, q, k, v, g, beta, state):
        return delta_rule_step(q.contiguous(), k.contiguous(), v.contiguous(), g.contiguous(), beta.contiguous(),
                               state.contiguous())

    def experts(self, h, weights, chosen, gate_up, down, **gpt_oss):
        return fused_experts(h.contiguous(), weights, chosen, gate_up, down, **gpt_oss)

    def forward(self, layer, query, cache, meta, window=None, sinks=None):
        """A sliding-window layer's decodes all go through paged decode (its window holds little
        of a shared prefix, and the fused kernel reads every prefix whole)."""
        output = torch.empty_like(query)
        key, value = cache.key[layer], cache.value[layer]
        step = meta.backend_state.get("triton")
        if step is None:  # the same for every layer: built once per step
            step = meta.backend_state["triton"] = self._prepare(meta, query.device, cache.block_size)
        decodes, prefill = step
        for rows, tables, contexts, groups, layout, max_context in decodes:
            queries = query[rows].contiguous()
            if groups and not window:
                result = shared_prefix_decode_attention(queries, key, value, tables, contexts, groups, meta.scale,
                                                        layout=layout, sinks=sinks, **self.options["shared_prefix"])
            else:
                result = paged_decode_attention(queries, key, value, tables, contexts, meta.scale,
                                                max_context=max_context, window=window, sinks=sinks)
            output[rows] = result
        if prefill is not None:
            index, tables, starts, lens, contexts, max_query_len = prefill
            output[index] = paged_prefill_attention(query[index].contiguous(), key, value, tables, starts, lens,
                                                    contexts, meta.scale, max_query_len=max_query_len,
                                                    window=window, sinks=sinks)
        return output

    @staticmethod
    def _prepare(meta, device, block_size: int) -> tuple:
        """Index tensors of a step's decode and prefill chunks and its shared-prefix layout, and
        the lengths the kernels' grids need, from the host-side metadata: once per step, so
        that no layer waits for the device. Decodes of groups with at least two decoding
        members go to the fused shared-prefix kernel; the others to split-KV paged decode (the
        fused kernel reads an ungrouped context in one program, slow for a long one)."""
        decode = [i for i, q_len in enumerate(meta.query_lens) if q_len == 1]
        prefill = [i for i, q_len in enumerate(meta.query_lens) if q_len > 1]
        decode_parts, prefill_part = [], None
        is_decode = set(decode)
        groups = []
        for group in meta.shared_prefix_groups:
            members = [i for i in group[2] if i in is_decode]
            if len(members) >= 2:
                groups.append((group[0], members))
        grouped = [i for _, members in groups for i in members]
        in_group = set(grouped)
        plain = [i for i in decode if i not in in_group]

        def launch(chunks, chunk_groups):
            rows = torch.tensor([meta.query_starts[i] for i in chunks], device=device)
            tables = _table([meta.block_tables[i] for i in chunks], device)
            contexts = torch.tensor([meta.context_lens[i] for i in chunks], dtype=torch.int32, device=device)
            position = {chunk: row for row, chunk in enumerate(chunks)}
            local = [(prefix, [position[i] for i in members]) for prefix, members in chunk_groups]
            layout = None
            if local:
                layout = shared_prefix_layout([meta.block_tables[i] for i in chunks],
                                              [meta.context_lens[i] for i in chunks], local, block_size, device)
            return rows, tables, contexts, local, layout, max(meta.context_lens[i] for i in chunks)

        if grouped:
            decode_parts.append(launch(grouped, groups))
        if plain:
            decode_parts.append(launch(plain, []))
        if prefill:
            starts = [meta.query_starts[i] for i in prefill]
            lens = [meta.query_lens[i] for i in prefill]
            index = torch.from_numpy(np.concatenate([np.arange(s, s + n) for s, n in zip(starts, lens)])).to(device)
            packed_starts = torch.tensor([sum(lens[:k]) for k in range(len(lens))], dtype=torch.int32, device=device)
            context_lens = [meta.context_lens[i] for i in prefill]
            for chunk, queries, context in zip(prefill, lens, context_lens):
                if queries > context:
                    raise ValueError(f"chunk {chunk} of the step has {queries} query tokens but a context of "
                                     f"{context}; expected queries <= context (they are its last tokens)")
            prefill_part = (index, _table([meta.block_tables[i] for i in prefill], device), packed_starts,
                            torch.tensor(lens, dtype=torch.int32, device=device),
                            torch.tensor(context_lens, dtype=torch.int32, device=device), max(lens))
        return decode_parts, prefill_part


BACKENDS["triton"] = TritonAttentionBackend
