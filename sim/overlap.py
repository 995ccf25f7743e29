"""Steps whose compute-bound and memory-bound work overlap (``hardware.overrides.step_overlap``).

The roofline charges each kernel the larger of its compute time and its memory time, and a
step the sum over its kernels: a step of prefill GEMMs (compute-bound) beside decode attention
(memory-bound) pays for both. NanoFlow (arXiv 2408.12757) splits a step into nano-batches and runs
the two kinds of kernel at once, and BlendServe (arXiv 2411.16102) takes a step that overlaps
perfectly as its "practical optimum". Here a step costs the larger of two sums: its kernels'
compute times (a roofline without bandwidth limits) and their memory times (one without FLOP
limits), each with the step's launches, communication and host work. That is the bound, not an
engine: real overlap loses some of it to interference.

Only the analytic roofline splits that way; a measured profile's kernel times do not.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from scheduler import BatchPlan
from scheduler.model_spec import ModelSpec

from .cost_model import CostModel
from .hardware import HardwareSpec
from .roofline import build_roofline_profile

UNLIMITED = 1e30  # FLOP/s or bytes/s that make that side of a kernel free


class OverlapCostModel:
    """A cost model (as ``CostModel`` is used) whose steps take the larger of their compute
    and memory times. Each side is a plain ``CostModel``, so a fast-forwarded stretch and its
    steps one by one agree to the bit, as they do there."""

    def __init__(self, model: ModelSpec, hardware: HardwareSpec) -> None:
        self.model = model
        self.profile = build_roofline_profile(model, hardware)
        self.profile.provenance["step_overlap"] = True
        self.compute = CostModel(build_roofline_profile(model, dataclasses.replace(hardware, hbm_bandwidth=UNLIMITED)),
                                 model)
        self.memory = CostModel(build_roofline_profile(model, dataclasses.replace(hardware, peak_flops=UNLIMITED)),
                                model)
        self.prefix_aware = self.compute.prefix_aware
        self.tensor_parallel = hardware.tensor_parallel

    def for_schedule(self, schedule: str) -> "OverlapCostModel":
        return self  # a roofline charges every schedule's host work alike

    def step(self, plan: BatchPlan):
        compute = self.compute.step(plan)
        memory = self.memory.step(plan)
        return compute if compute[0] >= memory[0] else memory

    def decode_steps(self, batch: int, context_sums: np.ndarray, shared, shared_tokens: int):
        compute, compute_parts = self.compute.decode_steps(batch, context_sums, shared, shared_tokens)
        memory, memory_parts = self.memory.decode_steps(batch, context_sums, shared, shared_tokens)
        larger = compute >= memory
        return (np.where(larger, compute, memory),
                {name: np.where(larger, compute_parts[name], memory_parts[name]) for name in compute_parts})

    def load_seconds(self, tokens: int, remote: int = 0) -> float:
        return self.compute.load_seconds(tokens, remote)  # host copies: neither FLOPs nor HBM


def roofline_cost_model(model: ModelSpec, hardware: HardwareSpec) -> "CostModel | OverlapCostModel":
    """The analytic roofline's cost model for ``hardware``: kernel times summed, or, where it
    says ``step_overlap``, each step the larger of its compute and memory times."""
    if hardware.step_overlap:
        return OverlapCostModel(model, hardware)
    return CostModel(build_roofline_profile(model, hardware), model)
