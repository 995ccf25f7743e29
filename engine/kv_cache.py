"""The paged KV cache: device tensors indexed by the block ids the shared block manager hands
out, so that prefix sharing in the scheduler is physical sharing in memory."""
from __future__ import annotations

import torch

from scheduler.errors import ConfigError
from scheduler.model_spec import ModelSpec


class PagedKVCache:
    def __init__(self, spec: ModelSpec, num_blocks: int, block_size: int, dtype: torch.dtype,
                 device: str | torch.device) -> None:
        # the attention layers' keys and values (a linear-attention layer keeps a state instead)
        shape = (spec.num_layers - len(spec.linear_layers), num_blocks, block_size, spec.num_kv_heads, spec.head_dim)
        need = 2 * torch.Size(shape).numel() * torch.tensor([], dtype=dtype).element_size()
        if torch.device(device).type == "cuda":
            free, _ = torch.cuda.mem_get_info(torch.device(device))
            if need > free:
                raise ConfigError(f"KV cache of {num_blocks} blocks needs {need / 1e9:.2f} GB; "
                                  f"the device has {free / 1e9:.2f} GB free")
        self.key = torch.zeros(shape, dtype=dtype, device=device)
        self.value = torch.zeros(shape, dtype=dtype, device=device)
        self.block_size = block_size
        self.num_blocks = num_blocks
        # a host-memory tier's copies by block identity (scheduler/host_tier.py): what the
        # scheduler's tier holds, stored and dropped as it says
        self.host: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def store(self, layer: int, slots: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> None:
        """Writes ``key``/``value`` ([tokens, kv heads, head dim]) at flat ``slots``."""
        self.key[layer].view(-1, *self.key.shape[3:])[slots] = key
        self.value[layer].view(-1, *self.value.shape[3:])[slots] = value

    def host_transfers(self, stores, loads, drops=()) -> None:
        """Copies ``stores``' blocks (filled by earlier steps) to host memory under their
        identities, then ``loads``' identities into their blocks ((block id, identity) pairs),
        then forgets ``drops``."""
        for block, identity in stores:
            self.host[identity] = (self.key[:, block].to("cpu", copy=True), self.value[:, block].to("cpu", copy=True))
        for block, identity in loads:
            key, value = self.host[identity]
            self.key[:, block] = key.to(self.key.device)
            self.value[:, block] = value.to(self.value.device)
        for identity in drops:
            del self.host[identity]
