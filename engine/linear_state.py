"""The Gated DeltaNet layers' states: what stands in for their KV cache.

A running request carries, per linear layer, the convolution's last inputs and the recurrent
state after its last computed token. Prefix sharing needs more: a request that starts at a
prefix hit (or a group's shared prefix, or after preemption) starts from the state at that
position, and the scheduler shares prefixes in whole KV blocks. So, as vLLM does for these
models, a state is kept for every full block, taken after the block's last token, keyed by the
block id that holds it: the physical block a hit shares is the state's key. A block filled again
with other tokens drops its state; one its holder fills in the same step as a request hits it
hands its state over within the step (the holder's chunk goes first in every layer).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from scheduler.model_spec import ModelSpec

from .delta_net import causal_conv, delta_rule_chunk, gated_rms_norm, l2_normalise
from .linear_weights import LinearWeights, sizes


@dataclass
class ChunkStates:
    """One chunk's states through a step: ``conv`` [linear layers, kernel - 1, channels] and
    ``rec`` [linear layers, value heads, key dim, value dim] (fp32) hold the start state until a
    layer has run and its end state after; ``source``: the block id whose state, made in this
    step by another chunk, it starts from; ``cuts``: (tokens into the chunk, block id) where a
    block fills; ``made``: layer -> the states at the cuts."""
    req_id: int
    start: int
    end: int
    table: tuple  # the request's block ids
    row: int      # its first token's row in the packed batch
    conv: torch.Tensor
    rec: torch.Tensor
    source: int | None = None
    cuts: list = field(default_factory=list)
    made: dict = field(default_factory=dict)


@dataclass
class StepStates:
    """A step's states: its chunks (holders of a block before the chunks that start from it), and
    those of its one-token chunks that start from their own or a kept state (its decodes),
    batched: ``conv`` [linear layers, singles, kernel - 1, channels] and ``rec`` [linear layers,
    singles, value heads, key dim, value dim], each single's ``ChunkStates`` holding views of
    them, so that a layer steps them all on one contiguous slice, in place."""
    chunks: list
    singles: list
    conv: torch.Tensor | None = None
    rec: torch.Tensor | None = None


class LinearStates:
    def __init__(self, spec: ModelSpec, block_size: int, dtype: torch.dtype, device: torch.device) -> None:
        keys, values, heads = sizes(spec)
        self.layers = {index: i for i, index in enumerate(spec.linear_layers)}  # model layer -> its state's index
        count = len(self.layers)
        self.zero_conv = torch.zeros(count, spec.linear_conv_kernel - 1, 2 * keys + values, dtype=dtype, device=device)
        self.zero_rec = torch.zeros(count, heads, spec.linear_key_dim, spec.linear_value_dim, device=device)
        self.block_size = block_size
        self.running: dict[int, tuple[int, torch.Tensor, torch.Tensor]] = {}  # req -> (position, conv, rec)
        self.blocks: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # block id -> states after its last token
        self.host: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}    # a host tier's copies, by identity
        self.block_starts = 0  # chunks that started from a block's state (a prefix hit, a group's prefix)
        self.missing_ok = False  # a start with no state there starts from zeros (the profiler's synthetic steps)

    def begin(self, chunks, rows) -> StepStates:
        """Each chunk's start states (its own running ones, updated in place, or copies), holders
        of a block before the chunks that start from it in the same step; ``rows``: where each
        chunk's tokens start in the packed batch."""
        size = self.block_size
        steps, made_here = [], set()
        for chunk, row in zip(chunks, rows):
            state = ChunkStates(chunk.req_id, chunk.start, chunk.end, chunk.block_ids, row, self.zero_conv,
                                self.zero_rec)
            first = -(-(chunk.start + 1) // size) * size  # the first block end after the chunk's start
            state.cuts = [(p - chunk.start, chunk.block_ids[p // size - 1]) for p in range(first, chunk.end + 1, size)]
            made_here.update(block for _, block in state.cuts)
            steps.append(state)
        for state in steps:
            running = self.running.get(state.req_id)
            if running is not None and running[0] == state.start and state.start:
                state.conv, state.rec = running[1], running[2]  # its own: updated in place, unless a view
                if state.end - state.start > 1 and state.rec._base is not None:  # of an old step's batch
                    state.conv, state.rec = state.conv.clone(), state.rec.clone()
                continue
            if state.start:
                block = state.table[state.start // size - 1]
                if state.start % size == 0 and block in made_here:
                    state.source = block
                elif state.start % size == 0 and block in self.blocks:
                    state.conv, state.rec = self.blocks[block]
                elif not self.missing_ok:
                    raise AssertionError(f"request {state.req_id} starts at token {state.start} with no "
                                         f"linear-attention state there (not its own last position, no state kept "
                                         f"for block {block})")
                self.block_starts += state.source is not None or state.conv is not self.zero_conv
            if state.end - state.start > 1 or state.source is not None:  # a single's are copied below
                state.conv, state.rec = state.conv.clone(), state.rec.clone()  # zeros or a block's: shared
        holders = [s for s in steps if s.source is None]
        waiting = [s for s in steps if s.source is not None]
        while waiting:  # holders first: a chain of same-step hits resolves in order
            ready = {block for s in holders for _, block in s.cuts}
            now = [s for s in waiting if s.source in ready]
            if not now:
                raise AssertionError(f"blocks {sorted({s.source for s in waiting})} are hit in the step that fills "
                                     "them, by chunks that fill them themselves")
            holders += now
            waiting = [s for s in waiting if s.source not in ready]
        stepping = {state.req_id for state in steps}
        for req_id, (position, conv, rec) in self.running.items():  # out of this step: off an old step's batch
            if req_id not in stepping and rec._base is not None:
                self.running[req_id] = (position, conv.clone(), rec.clone())
        singles = [i for i, s in enumerate(holders) if s.end - s.start == 1 and s.source is None]
        step = StepStates(holders, singles)
        if singles:
            step.conv = torch.stack([holders[i].conv for i in singles], dim=1)
            step.rec = torch.stack([holders[i].rec for i in singles], dim=1)
            for j, i in enumerate(singles):
                holders[i].conv, holders[i].rec = step.conv[:, j], step.rec[:, j]
        return step

    def finish(self, step: StepStates, done: set) -> None:
        """After a step: the blocks its chunks began filling drop their old states, those they
        filled keep their new ones, each request keeps its end state (unless ``done``). Of
        synthetic steps (``missing_ok``) the same work is done and nothing kept."""
        size, steps = self.block_size, step.chunks
        for state in steps:
            for position in range(-(-state.start // size) * size, state.end, size):
                self.blocks.pop(state.table[position // size], None)
        for state in steps:
            for i, (_, block) in enumerate(state.cuts):
                convs, recs = zip(*(state.made[layer][i] for layer in range(len(self.layers))))
                self.blocks[block] = (torch.stack(convs), torch.stack(recs))
            if state.req_id in done:
                self.running.pop(state.req_id, None)
            else:
                self.running[state.req_id] = (state.end, state.conv, state.rec)
        if self.missing_ok:  # a profiler's requests: the work measured, the states of no use
            self.running.clear()
            self.blocks.clear()

    def host_transfers(self, stores, loads, drops=()) -> None:
        """A host tier's copies follow the KV blocks' (PagedKVCache.host_transfers)."""
        for block, identity in stores:
            if block in self.blocks:
                self.host[identity] = tuple(t.to("cpu", copy=True) for t in self.blocks[block])
        for block, identity in loads:  # a state the block held before is another content's
            self.blocks.pop(block, None)
            if identity in self.host:
                self.blocks[block] = tuple(t.to(self.zero_rec.device) for t in self.host[identity])
        for identity in drops:
            self.host.pop(identity, None)


def linear_attention(h: torch.Tensor, weights: LinearWeights, spec: ModelSpec, layer: int, states: StepStates,
                     eps: float, timer, step) -> torch.Tensor:
    """The ``layer``-th Gated DeltaNet layer over the packed batch ``h`` [tokens, hidden], its
    states in and out through ``states``. ``timer``: the engine's KernelTimer (the
    projections as linear_qkv and linear_o, the convolution and recurrence as attention);
    ``step``: the decodes' recurrence step (an attention backend's ``delta_step``)."""
    _, values, heads = sizes(spec)
    with timer("linear_qkv"):
        mixed, z = h @ weights.qkv.T, h @ weights.z.T
        beta = torch.sigmoid(h @ weights.b.T).float()
        g = -weights.a_log.float().exp() * torch.nn.functional.softplus((h @ weights.a.T).float()
                                                                         + weights.dt_bias.float())
    with timer("attention"):
        out = _recurrence(mixed, g, beta, weights, spec, layer, states, step)
    with timer("norms"):
        gated = gated_rms_norm(out.to(h.dtype), z.view(-1, heads, spec.linear_value_dim), weights.norm, eps)
    with timer("linear_o"):
        return gated.reshape(h.shape[0], values) @ weights.out.T


def _recurrence(mixed, g, beta, weights: LinearWeights, spec: ModelSpec, layer: int, states: StepStates, step):
    """The convolution and the delta rule for every chunk: outputs [tokens, value heads, value dim], fp32."""
    keys, values, heads = sizes(spec)
    dk, dv = spec.linear_key_dim, spec.linear_value_dim
    per = heads // spec.linear_key_heads
    out = torch.empty(mixed.shape[0], heads, dv, dtype=torch.float32, device=mixed.device)
    width = spec.linear_conv_kernel - 1

    def split(x):  # conv outputs [n, channels] -> q (normalised, scaled), k (normalised), v per value head
        q, k, v = x.split((keys, keys, values), dim=-1)
        q = l2_normalise(q.reshape(-1, spec.linear_key_heads, dk)).repeat_interleave(per, dim=1) * dk ** -0.5
        k = l2_normalise(k.reshape(-1, spec.linear_key_heads, dk)).repeat_interleave(per, dim=1)
        return q, k, v.reshape(-1, heads, dv)

    made = {}  # block id -> this layer's states after it, as chunks make them
    steps, singles = states.chunks, states.singles
    if singles:  # decodes (and one-token chunks) together, one recurrence step on the batched states
        at = torch.tensor([steps[i].row for i in singles], device=mixed.device)
        history, state = states.conv[layer], states.rec[layer]   # [batch, kernel - 1, channels], [batch, heads, ..]
        inputs = torch.cat((history, mixed[at, None, :]), dim=1)
        conv = torch.nn.functional.silu((inputs.float() * weights.conv.float().T[None]).sum(1))
        q, k, v = split(conv)
        result, rec = step(q, k, v, g[at], beta[at], state)
        if rec is not state:  # the torch step's new tensor (the Triton kernel's is the same, updated)
            state.copy_(rec)
        history.copy_(inputs[:, 1:])
        out[at] = result
        for j, i in enumerate(singles):  # a block its decode fills: the state after it (views: this layer's slice)
            if steps[i].cuts:
                steps[i].made[layer] = [(history[j], state[j])]
                made[steps[i].cuts[0][1]] = steps[i].made[layer][0]
    done = set(singles)
    for i, state in enumerate(steps):
        if i in done:
            continue
        begin, count = state.row, state.end - state.start
        if state.source is not None:
            state.conv[layer], state.rec[layer] = made[state.source]
        conv, inputs = causal_conv(mixed[begin:begin + count], state.conv[layer], weights.conv)
        q, k, v = split(conv)
        cuts = [c for c, _ in state.cuts]
        result, rec, saved = delta_rule_chunk(q, k, v, g[begin:begin + count], beta[begin:begin + count],
                                              state.rec[layer], [c for c in cuts if c < count])
        if cuts and cuts[-1] == count:
            saved.append(rec)  # a cut at the chunk's end is its end state
        out[begin:begin + count] = result
        state.made[layer] = [(inputs[c:c + width].to(mixed.dtype), s) for c, s in zip(cuts, saved)]
        made.update({block: made_state for (_, block), made_state in zip(state.cuts, state.made[layer])})
        state.conv[layer], state.rec[layer] = inputs[count:].to(mixed.dtype), rec
    return out
