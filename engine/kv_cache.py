"""The paged KV cache: device tensors indexed by the block ids the shared block manager hands
out, so that prefix sharing in the scheduler is physical sharing in memory."""
from __future__ import annotations

import torch

from scheduler.errors import ConfigError
from scheduler.model_spec import ModelSpec


class PagedKVCache:
    def __init__(self, spec: ModelSpec, num_blocks: int, block_size: int, dtype: torch.dtype,
                 device: str | torch.device) -> None:
        # the attention layers' keys and values (a linear-attention layer keeps a state instead):
        # one tensor [layers, blocks, block size, kv heads, head dim] where every layer has the same
        # shape, else a list of each layer's [blocks, block size, kv heads, head dim] (Gemma 4's full
        # layers have their own), indexed the same way
        layers = [spec.layer_attention(i not in spec.sliding_layers) for i in range(spec.num_layers)
                  if i not in spec.linear_layers]
        shapes = [(num_blocks, block_size, heads, d) for heads, d in layers]
        size = torch.tensor([], dtype=dtype).element_size()
        need = 2 * sum(torch.Size(shape).numel() for shape in shapes) * size
        if torch.device(device).type == "cuda":
            free, _ = torch.cuda.mem_get_info(torch.device(device))
            if need > free:
                raise ConfigError(f"KV cache of {num_blocks} blocks needs {need / 1e9:.2f} GB; "
                                  f"the device has {free / 1e9:.2f} GB free")
        if len(set(shapes)) == 1:
            shape = (len(shapes), *shapes[0])
            self.key = torch.zeros(shape, dtype=dtype, device=device)
            self.value = torch.zeros(shape, dtype=dtype, device=device)
        else:
            self.key = [torch.zeros(shape, dtype=dtype, device=device) for shape in shapes]
            self.value = [torch.zeros(shape, dtype=dtype, device=device) for shape in shapes]
        self.block_size = block_size
        self.num_blocks = num_blocks
        # a host-memory tier's copies by block identity (scheduler/host_tier.py): what the
        # scheduler's tier holds, stored and dropped as it says
        self.host: dict[int, tuple] = {}

    def store(self, layer: int, slots: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> None:
        """Writes ``key``/``value`` ([tokens, kv heads, head dim]) at flat ``slots``."""
        keys, values = self.key[layer], self.value[layer]
        keys.view(-1, *keys.shape[2:])[slots] = key
        values.view(-1, *values.shape[2:])[slots] = value

    def host_transfers(self, stores, loads, drops=()) -> None:
        """Copies ``stores``' blocks (filled by earlier steps) to host memory under their
        identities, then ``loads``' identities into their blocks ((block id, identity) pairs),
        then forgets ``drops``."""
        stacked = isinstance(self.key, torch.Tensor)  # every layer's block in one copy, or layer by layer
        for block, identity in stores:
            if stacked:
                self.host[identity] = (self.key[:, block].to("cpu", copy=True), self.value[:, block].to("cpu", copy=True))
            else:
                self.host[identity] = ([k[block].to("cpu", copy=True) for k in self.key],
                                       [v[block].to("cpu", copy=True) for v in self.value])
        for block, identity in loads:
            key, value = self.host[identity]
            if stacked:
                self.key[:, block] = key.to(self.key.device)
                self.value[:, block] = value.to(self.value.device)
                continue
            for layer, (k, v) in enumerate(zip(key, value)):
                self.key[layer][block] = k.to(self.key[layer].device)
                self.value[layer][block] = v.to(self.value[layer].device)
        for identity in drops:
            del self.host[identity]
