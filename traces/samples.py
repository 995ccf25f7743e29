"""Several completions of each prompt (parallel sampling: ``n`` in vLLM's SamplingParams and
OpenAI's API; pass@k evaluations, best-of-n, RL rollouts such as GRPO's groups).

An engine serves ``n`` completions of a prompt as ``n`` requests with that prompt, added one
after the other at the prompt's arrival (vLLM's ``ParentRequest`` fans a request out into child
requests; the first computes the prompt, the others find it in the prefix cache). Here each
request becomes ``n`` requests, adjacent and numbered in order (request ``i``'s samples are the
ids ``i * n`` to ``i * n + n - 1`` where every request has the same ``n``), with its prompt and
arrival. Their output lengths are the request's, or, with ``output_cv``, each drawn apart: the
request's length times a lognormal factor of mean 1 and that coefficient of variation (sampled
completions end at different lengths; a limit without EOS, as ``batchlab run`` generates, gives
them all the same).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from scheduler import Request
from scheduler.errors import ConfigError

from .workload import Workload


def check_samples(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"samples.n is {n!r}; expected the number of completions of each prompt, an integer >= 1")
    return n


def expand(requests, counts, output_cv: float = 0.0, seed: int = 0) -> tuple[Request, ...]:
    """``requests`` with request ``k`` repeated ``counts[k]`` times, ids renumbered from 0 in
    order; output lengths drawn apart with ``output_cv`` (0: each sample the request's)."""
    if isinstance(output_cv, bool) or not isinstance(output_cv, (int, float)) or not output_cv >= 0:
        raise ConfigError(f"samples.output_cv is {output_cv!r}; expected a coefficient of variation >= 0")
    total = int(sum(counts))
    factors = None
    if output_cv:
        sigma = math.sqrt(math.log1p(output_cv * output_cv))
        factors = np.random.default_rng(seed).lognormal(-sigma * sigma / 2, sigma, total).tolist()
    expanded, next_id = [], 0
    for request, count in zip(requests, counts):
        for _ in range(count):
            length = request.output_len
            if factors is not None:
                length = max(1, int(round(length * factors[next_id])))
            expanded.append(dataclasses.replace(request, req_id=next_id, output_len=length))
            next_id += 1
    return tuple(expanded)


def with_samples(workload: Workload, n: int, output_cv: float = 0.0, seed: int = 0) -> Workload:
    """``workload`` with ``n`` completions of each request (``n=1``, no spread: as it is)."""
    n = check_samples(n)
    if n == 1 and not output_cv:
        return workload
    if workload.sessions is not None or workload.closed_loop is not None:
        raise ConfigError("samples.n: a workload of sessions or a closed loop of clients sends one request at a "
                          "time; give samples to an offline batch or to arrivals (poisson, gamma, a trace)")
    if any(r.output_segment is not None for r in workload.requests):
        raise ConfigError("samples.n: this workload's answers feed later prompts (agents' turns); several "
                          "completions of them are not defined")
    requests = expand(workload.requests, [n] * len(workload.requests), output_cv, seed)
    spread = f",cv{output_cv:g}" if output_cv else ""
    return dataclasses.replace(workload, requests=requests, name=f"{workload.name}+samples(n{n}{spread})")
