"""Output lengths as a scheduler would know them: estimates with an error of a chosen spread.

Policies that may read output lengths (``use_output_lengths``: BatchLLM's output-aware variant,
``blend``) were handed the true lengths. A real scheduler has at best an estimate (BlendServe,
arXiv 2411.16102, samples outputs to estimate them; its gains shrink where outputs vary more).
``with_output_estimates`` gives each request an estimate: its length times a lognormal factor
of mean 1 and coefficient of variation ``cv``, drawn from ``seed``; the requests still generate
their true lengths.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from scheduler.errors import ConfigError

from .workload import Workload


def with_output_estimates(workload: Workload, cv: float, seed: int = 0) -> Workload:
    """``workload`` with each request's ``output_estimate`` off by a lognormal factor (mean 1,
    coefficient of variation ``cv``); ``cv=0``: the workload as it is (policies see the truth)."""
    if isinstance(cv, bool) or not isinstance(cv, (int, float)) or not cv >= 0:
        raise ConfigError(f"output_estimate.cv is {cv!r}; expected a coefficient of variation >= 0")
    if cv == 0:
        return workload
    sigma = math.sqrt(math.log1p(cv * cv))
    factors = np.random.default_rng(seed).lognormal(-sigma * sigma / 2, sigma, len(workload.requests))
    requests = tuple(dataclasses.replace(r, output_estimate=max(1, int(round(r.output_len * f))))
                     for r, f in zip(workload.requests, factors.tolist()))
    return dataclasses.replace(workload, requests=requests,
                               name=f"{workload.name}+estimates(cv{cv:g})")
