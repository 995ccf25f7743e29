"""The model runner: executes a ``BatchPlan`` as one packed forward pass and samples greedily.

It keeps, per request, the tokens it sampled (generation ignores EOS: output lengths come from
the workload), so that decodes and recomputation after preemption feed the same tokens back.
"""
from __future__ import annotations

import os
import time

import numpy as np
import torch

from scheduler import BatchPlan, StepResult
from scheduler.errors import ConfigError
from scheduler.model_spec import ModelSpec
from scheduler.request import Request

from .attention import AttentionMetadata, make_backend
from .host_memory import for_device as host_memory_for
from .kv_cache import PagedKVCache
from .linear_state import LinearStates
from .model import KernelTimer, LlamaModel
from .tokens import check_token_table, prompt_tokens
from .weights import Weights, random_weights


class ModelRunner:
    def __init__(self, spec: ModelSpec, num_kv_blocks: int, block_size: int = 16, device: str = "cpu",
                 dtype: torch.dtype = torch.float32, backend: str = "torch", weights: Weights | None = None,
                 seed: int = 0, keep_logits: bool = False, time_kernels: bool = True,
                 kernel_options: dict | None = None) -> None:
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device=cuda requested but no CUDA device is available")
        if backend == "triton" and self.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            # (else Triton fails at the first kernel: "0 active drivers ... There should only be one")
            raise ConfigError("backend=triton runs its kernels on a GPU (device=cuda); on a CPU only in Triton's "
                              "interpreter, which TRITON_INTERPRET=1 set before the command starts selects (slow: "
                              "tiny models); backend=torch is the CPU's engine path")
        # CPU steps allocate and free large tensors; without this, glibc maps and unmaps them
        # every step and the step times measure the allocator (engine/host_memory.py)
        self.host_memory = host_memory_for(self.device.type)
        self.spec = spec
        self.block_size = block_size
        self.model = LlamaModel(spec, weights or random_weights(spec, seed, dtype, self.device),
                                make_backend(backend, kernel_options))
        self.cache = PagedKVCache(spec, num_kv_blocks, block_size, dtype, self.device)
        self.states = LinearStates(spec, block_size, dtype, self.device) if spec.linear_layers else None
        self.requests: dict[int, Request] = {}
        self.outputs: dict[int, list[int]] = {}
        self.prefixes: dict[int, tuple] = {}   # group prefix id -> the prompt it is cut from
        self.keep_logits = keep_logits
        self.time_kernels = time_kernels
        self.last_logits: dict[int, torch.Tensor] = {}
        self.token_table = None  # segment id -> token ids, for prompts of real tokens
        self.generated: dict[int, np.ndarray] = {}  # output segment id -> what its request generated

    def use_prompt_tokens(self, table) -> None:
        """Read prompts' tokens from ``table`` (segment id -> token ids: a workload's
        ``segment_tokens``) instead of hashing them from segment ids."""
        check_token_table(table, self.spec.vocab_size)
        self.token_table = table

    def add_request(self, request: Request) -> None:
        self.requests[request.req_id] = request
        self.outputs.setdefault(request.req_id, [])

    def _tokens(self, req_id: int, prompt, prompt_len: int, start: int, end: int) -> np.ndarray:
        parts = []
        if start < prompt_len:
            parts.append(prompt_tokens(prompt, start, min(end, prompt_len), self.spec.vocab_size, self.token_table,
                                       self.generated))
        if end > prompt_len:
            generated = self.outputs[req_id]
            parts.append(np.asarray(generated[max(start, prompt_len) - prompt_len:end - prompt_len], dtype=np.int64))
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def add_prefix(self, prefix_id: int, prompt) -> None:
        """A group's shared prefix (negative id): a prefill-only request over ``prompt``'s start."""
        self.prefixes[prefix_id] = prompt

    def execute(self, plan: BatchPlan) -> StepResult:
        started = time.perf_counter()
        timer = KernelTimer(self.device, self.time_kernels)
        if plan.host_stores or plan.host_loads or plan.host_drops:
            self.cache.host_transfers(plan.host_stores, plan.host_loads, plan.host_drops)
            if self.states is not None:
                self.states.host_transfers(plan.host_stores, plan.host_loads, plan.host_drops)
        block_size = self.block_size
        tokens, positions, slots = [], [], []
        meta = AttentionMetadata([], [], [], [])
        logit_rows, samplers = [], []
        offset = 0
        for chunk in plan.chunks:
            prompt = self.requests[chunk.req_id].prompt if chunk.req_id >= 0 else self.prefixes[chunk.req_id]
            ids = self._tokens(chunk.req_id, prompt, chunk.prompt_len, chunk.start, chunk.end)
            position = np.arange(chunk.start, chunk.end)
            table = np.asarray(chunk.block_ids, dtype=np.int64)
            if len(table) * block_size < chunk.end:
                raise AssertionError(f"step {plan.step}: request {chunk.req_id} has {len(table)} blocks "
                                     f"for {chunk.end} tokens")
            tokens.append(ids)
            positions.append(position)
            slots.append(table[position // block_size] * block_size + position % block_size)
            meta.query_starts.append(offset)
            meta.query_lens.append(chunk.num_tokens)
            meta.context_lens.append(chunk.end)
            meta.block_tables.append(chunk.block_ids)
            offset += chunk.num_tokens
            if chunk.samples:
                logit_rows.append(offset - 1)
                samplers.append(chunk.req_id)
        index_of = {chunk.req_id: i for i, chunk in enumerate(plan.chunks)}
        meta.shared_prefix_groups = tuple(
            (group.prefix_len, group.prefix_block_ids, tuple(index_of[r] for r in group.req_ids if r in index_of))
            for group in plan.shared_prefix_groups)
        sampled: dict[int, int] = {}
        if self.states is not None:
            meta.linear_states = self.states.begin(plan.chunks, meta.query_starts)
        if plan.chunks:
            as_tensor = lambda parts: torch.as_tensor(np.concatenate(parts), device=self.device)
            logits = self.model.forward(as_tensor(tokens), as_tensor(positions), as_tensor(slots), self.cache, meta,
                                        torch.as_tensor(logit_rows, dtype=torch.long, device=self.device), timer)
            with timer("lm_head_sampling"):
                chosen = torch.argmax(logits, dim=-1).tolist()
            for req_id, token in zip(samplers, chosen):
                output = self.outputs[req_id]
                output.append(token)
                sampled[req_id] = token
                request = self.requests.get(req_id)
                if request is not None and request.output_segment is not None and len(output) == request.output_len:
                    # later prompts carry this output (an agent's next turn): they read these tokens
                    self.generated[request.output_segment] = np.asarray(output, dtype=np.int64)
            if self.states is not None:  # finished requests and prefixes drop their running states
                self.states.finish(meta.linear_states, {c.req_id for c in plan.chunks if self._finished(c)})
            if self.keep_logits:
                self.last_logits = {r: logits[i].detach().cpu() for i, r in enumerate(samplers)}
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        duration = time.perf_counter() - started
        kernels = dict(timer.times)  # after the synchronize above: CUDA events are done
        kernels["overhead"] = max(duration - sum(kernels.values()), 0.0)
        return StepResult(plan.step, duration, sampled, kernels)

    def _finished(self, chunk) -> bool:
        if chunk.req_id < 0:
            return chunk.end >= chunk.prompt_len
        request = self.requests.get(chunk.req_id)
        return request is not None and len(self.outputs[chunk.req_id]) >= request.output_len
