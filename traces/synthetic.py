"""Synthetic workloads, all offline (t=0) until ``traces.arrivals.with_arrivals`` says otherwise.

Segment ids come from disjoint ranges, so two prompts share exactly what the generator meant
them to share.
"""
from __future__ import annotations

import numpy as np

from scheduler import Request
from scheduler.errors import ConfigError

from .workload import Workload

_PREFIX_BASE = 1 << 40   # shared prefixes
_DISTINCT_BASE = 1 << 41  # per-request parts


def _positive(generator: str, **values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigError(f"{generator}: {name} is {value!r}; expected an integer >= 1")


def batchllm_microbenchmark(prefix_len: int = 2000, distinct_len: int = 200, output_len: int = 100,
                            share_degree: int = 16, num_requests: int = 6400, shuffle: bool = True,
                            seed: int = 0) -> Workload:
    """BatchLLM §6: groups of ``share_degree`` prompts sharing a ``prefix_len`` prefix, each
    with ``distinct_len`` tokens of its own, ``output_len`` output tokens, shuffled order."""
    _positive("batchllm_microbenchmark", prefix_len=prefix_len, distinct_len=distinct_len,
              output_len=output_len, share_degree=share_degree, num_requests=num_requests)
    order = np.arange(num_requests)
    if shuffle:
        order = np.random.default_rng(seed).permutation(num_requests)
    requests = tuple(
        Request(req_id, 0.0, ((_PREFIX_BASE + index // share_degree, prefix_len),
                              (_DISTINCT_BASE + index, distinct_len)), output_len)
        for req_id, index in enumerate(order.tolist()))
    name = (f"batchllm-micro(p{prefix_len},d{distinct_len},o{output_len},sd{share_degree},"
            f"n{num_requests}{',shuffled' if shuffle else ''})")
    return Workload(name, requests, "synthetic:batchllm_microbenchmark")


def system_prompt_workload(num_system_prompts: int = 8, system_len: int = 1500, user_len_min: int = 50,
                           user_len_max: int = 500, output_len_min: int = 20, output_len_max: int = 300,
                           num_requests: int = 2000, seed: int = 0) -> Workload:
    """Chat/agent traffic: each request draws one of a few long system prompts (Zipf-like
    popularity), then a user part and an output length drawn uniformly."""
    _positive("system_prompt_workload", num_system_prompts=num_system_prompts, system_len=system_len,
              user_len_min=user_len_min, user_len_max=user_len_max, output_len_min=output_len_min,
              output_len_max=output_len_max, num_requests=num_requests)
    if user_len_min > user_len_max or output_len_min > output_len_max:
        raise ConfigError("system_prompt_workload: a minimum length exceeds its maximum")
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, num_system_prompts + 1)
    systems = rng.choice(num_system_prompts, size=num_requests, p=weights / weights.sum())
    users = rng.integers(user_len_min, user_len_max + 1, num_requests)
    outputs = rng.integers(output_len_min, output_len_max + 1, num_requests)
    requests = tuple(
        Request(i, 0.0, ((_PREFIX_BASE + int(systems[i]), system_len), (_DISTINCT_BASE + i, int(users[i]))),
                int(outputs[i]))
        for i in range(num_requests))
    return Workload(f"system-prompts(k{num_system_prompts},s{system_len},n{num_requests})", requests,
                    "synthetic:system_prompt_workload")


def prefix_tree_workload(fanouts: tuple[int, ...] = (4, 4), level_lens: tuple[int, ...] = (1000, 300),
                         leaf_len: int = 100, requests_per_leaf: int = 4, output_len: int = 100,
                         shuffle: bool = True, seed: int = 0) -> Workload:
    """A multi-level prefix tree: level ``i`` has ``fanouts[i]`` children per node, each adding
    ``level_lens[i]`` tokens; every tree leaf is shared by ``requests_per_leaf`` requests that
    add ``leaf_len`` tokens of their own (a RAG or few-shot evaluation shape)."""
    if len(fanouts) != len(level_lens) or not fanouts:
        raise ConfigError("prefix_tree_workload: fanouts and level_lens need the same, non-zero length")
    _positive("prefix_tree_workload", leaf_len=leaf_len, requests_per_leaf=requests_per_leaf,
              output_len=output_len, **{f"fanouts[{i}]": f for i, f in enumerate(fanouts)},
              **{f"level_lens[{i}]": n for i, n in enumerate(level_lens)})
    paths: list[tuple] = [()]
    next_id = _PREFIX_BASE
    for fanout, length in zip(fanouts, level_lens):
        grown = []
        for path in paths:
            for _ in range(fanout):
                grown.append(path + ((next_id, length),))
                next_id += 1
        paths = grown
    prompts = [path + ((_DISTINCT_BASE + leaf * requests_per_leaf + k, leaf_len),)
               for leaf, path in enumerate(paths) for k in range(requests_per_leaf)]
    if shuffle:
        prompts = [prompts[i] for i in np.random.default_rng(seed).permutation(len(prompts))]
    requests = tuple(Request(i, 0.0, prompt, output_len) for i, prompt in enumerate(prompts))
    return Workload(f"prefix-tree(f{'x'.join(map(str, fanouts))},n{len(requests)})", requests,
                    "synthetic:prefix_tree_workload")


_CLASS_BASE = 1 << 43  # the templates of mixed_batch's classes


def mixed_batch(prompt_lens: tuple[int, ...] = (3000, 300), output_lens: tuple[int, ...] = (30, 600),
                counts: tuple[int, ...] = (3000, 3000), shared: float = 0.35, share_degree: int = 8,
                template_len: int = 16, shuffle: bool = True, seed: int = 0) -> Workload:
    """Classes of requests of different shapes in one batch (BlendServe, arXiv 2411.16102: an
    offline batch mixes compute-heavy requests, long prompts and short outputs, with
    memory-heavy ones, short prompts and long outputs). Class ``c`` has ``counts[c]`` requests
    of ``prompt_lens[c]`` prompt and ``output_lens[c]`` output tokens; each prompt is its class's
    template (``template_len`` tokens), then a prefix of ``shared`` x its length that
    ``share_degree`` requests of the class share, then tokens of its own."""
    if not (len(prompt_lens) == len(output_lens) == len(counts)) or not prompt_lens:
        raise ConfigError("mixed_batch: prompt_lens, output_lens and counts need the same, non-zero length")
    _positive("mixed_batch", share_degree=share_degree, template_len=template_len,
              **{f"{name}[{i}]": v for name, values in (("prompt_lens", prompt_lens), ("output_lens", output_lens),
                                                         ("counts", counts)) for i, v in enumerate(values)})
    if isinstance(shared, bool) or not isinstance(shared, (int, float)) or not 0 <= shared < 1:
        raise ConfigError(f"mixed_batch: shared is {shared!r}; expected a fraction of the prompt in [0, 1)")
    prompts, outputs = [], []
    group = _PREFIX_BASE
    own = _DISTINCT_BASE
    for c, (length, output, count) in enumerate(zip(prompt_lens, output_lens, counts)):
        prefix = round(shared * length)
        if template_len + prefix >= length:
            raise ConfigError(f"mixed_batch: class {c}'s prompt of {length} tokens leaves none of its own after "
                              f"the template ({template_len}) and the shared prefix ({prefix})")
        for index in range(count):
            if index % share_degree == 0:
                group += 1
            head = ((_CLASS_BASE + c, template_len),) + (((group, prefix),) if prefix else ())
            prompts.append(head + ((own, length - template_len - prefix),))
            outputs.append(output)
            own += 1
    order = np.random.default_rng(seed).permutation(len(prompts)) if shuffle else np.arange(len(prompts))
    requests = tuple(Request(i, 0.0, prompts[j], outputs[j]) for i, j in enumerate(order.tolist()))
    shapes = "+".join(f"{n}x{p}/{o}" for p, o, n in zip(prompt_lens, output_lens, counts))
    return Workload(f"mixed({shapes},shared{shared:g},sd{share_degree})", requests, "synthetic:mixed_batch")


_SESSION_BASE = 1 << 42  # agents' own context: task, outputs, observations


def agent_sessions(num_sessions: int = 256, turns: int = 8, system_len: int = 2000, task_len: int = 500,
                   observation_len: int = 1000, output_len: int = 200) -> Workload:
    """Agents, each a session of ``turns`` turns that re-sends its whole context: turn t's prompt
    is the system prompt all agents share, the session's task, then for each earlier turn the
    agent's output (``output_len`` tokens) and the tool's observation (``observation_len``);
    ``system_len=0``: agents that share nothing. A client runs a session's turns one after the
    other (``Workload.sessions``: a closed loop's pool, or sessions arriving on their own).
    A turn's output is the next turn's ``output_segment``: its generated blocks are cached for
    the next turn, and the engine feeds the next turn the tokens it generated."""
    _positive("agent_sessions", num_sessions=num_sessions, turns=turns, task_len=task_len,
              observation_len=observation_len, output_len=output_len)
    if system_len != 0:
        _positive("agent_sessions", system_len=system_len)
    requests, sessions = [], []
    for session in range(num_sessions):
        base = _SESSION_BASE + session * (2 * turns + 1)
        chain = [(_PREFIX_BASE, system_len)] * (system_len > 0) + [(base, task_len)]
        ids = []
        for turn in range(turns):
            req_id = session * turns + turn
            answer = base + 1 + 2 * turn  # this turn's output, as the next turns' prompts carry it
            requests.append(Request(req_id, 0.0, tuple(chain), output_len,
                                    output_segment=answer if turn + 1 < turns else None, priority=session))
            ids.append(req_id)
            chain += [(base + 1 + 2 * turn, output_len), (base + 2 + 2 * turn, observation_len)]
        sessions.append(tuple(ids))
    name = f"agent-sessions(s{num_sessions},t{turns},sys{system_len},task{task_len},obs{observation_len},o{output_len})"
    return Workload(name, tuple(requests), "synthetic:agent_sessions", sessions=tuple(sessions))
