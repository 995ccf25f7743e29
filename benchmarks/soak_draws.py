"""The random draws of benchmarks/soak.py: a case's workload, schedule, options, KV cache size
and the shared-prefix kernel's options, each reproducible from the case's seed and index (a
case recorded in a test or a note draws the same whatever else is added: new draws take streams
of their own)."""
from __future__ import annotations

import random

from scheduler import WorkloadError, schedule_config
from scheduler.model_spec import WindowBlocks

SCHEDULES = ("fcfs", "prefix_grouped", "decode_first", "batchllm", "lpm", "sorted", "blend", "priority", "sglang")


def draw_workload(rng: random.Random, arrivals: bool):
    """(kind, workload): a BatchLLM microbenchmark, a prefix tree or a mixed batch, small and
    with lengths not multiples of a block, sometimes several completions a prompt; with
    ``arrivals``, sometimes Poisson, gamma or a closed loop of clients, or agents' sessions."""
    from traces.arrivals import with_arrivals
    from traces.samples import with_samples
    from traces.synthetic import agent_sessions, batchllm_microbenchmark, mixed_batch, prefix_tree_workload

    seed = rng.randrange(1000)
    kind = rng.choice(("micro", "tree", "mixed", "agents") if arrivals else ("micro", "tree", "mixed"))
    if kind == "micro":
        workload = batchllm_microbenchmark(rng.randint(5, 60), rng.randint(1, 30), rng.randint(1, 12),
                                           rng.randint(1, 5), rng.randint(4, 24), seed=seed)
    elif kind == "tree":
        workload = prefix_tree_workload((rng.randint(1, 3), rng.randint(1, 3)), (rng.randint(3, 40), rng.randint(1, 25)),
                                        rng.randint(1, 20), rng.randint(1, 3), rng.randint(1, 10), seed=seed)
    elif kind == "mixed":
        workload = mixed_batch((rng.randint(30, 80), rng.randint(12, 24)), (rng.randint(1, 4), rng.randint(5, 15)),
                               (rng.randint(2, 8), rng.randint(2, 8)), shared=rng.choice((0.0, 0.35)),
                               share_degree=rng.randint(1, 4), template_len=rng.randint(1, 8), seed=seed)
    else:
        workload = agent_sessions(rng.randint(1, 6), rng.randint(1, 4), rng.choice((0, 8, 30)), rng.randint(1, 20),
                                  rng.randint(1, 20), rng.randint(1, 12))
    if kind != "agents" and rng.random() < 0.3:
        workload = with_samples(workload, rng.randint(2, 4), output_cv=rng.choice((0.0, 0.5)), seed=seed)
    if arrivals:
        process = rng.choice(("closed", "poisson", "gamma", None) if kind != "agents" else ("closed", "poisson"))
        if process == "closed":
            workload = with_arrivals(workload, "closed", clients=rng.randint(1, 4), think_s=rng.choice((0.0, 0.05)),
                                     think_cv=rng.choice((0.0, 1.0)), seed=seed)
        elif process is not None:
            workload = with_arrivals(workload, process, rate=rng.choice((0.5, 5.0, 50.0)), seed=seed,
                                     think_s=0.05 if kind == "agents" else 0.0)
    return kind, workload


def draw_medium_workload(rng: random.Random, arrivals: bool):
    """(kind, workload) of ``--scale medium``: 100-400 requests with prompts of a few hundred
    tokens (a sliding window or a linear layer's state pages then matter, and a stretch's
    decodes evict cached blocks others would hit), sometimes several completions a prompt and
    Poisson or gamma arrivals."""
    from traces.arrivals import with_arrivals
    from traces.samples import with_samples
    from traces.synthetic import batchllm_microbenchmark, prefix_tree_workload, system_prompt_workload

    seed = rng.randrange(1000)
    kind = rng.choice(("micro", "system", "tree"))
    if kind == "micro":
        workload = batchllm_microbenchmark(rng.randint(100, 400), rng.randint(10, 60), rng.randint(10, 60),
                                           rng.randint(2, 8), rng.randint(60, 200), seed=seed)
    elif kind == "system":
        workload = system_prompt_workload(rng.randint(2, 6), rng.randint(100, 300), 10, 80, 5, 60,
                                          rng.randint(60, 200), seed=seed)
    else:
        workload = prefix_tree_workload((rng.randint(2, 4), rng.randint(1, 3)), (rng.randint(100, 200),
                                        rng.randint(20, 60)), rng.randint(5, 20), rng.randint(1, 3),
                                        rng.randint(10, 40), seed=seed)
    if rng.random() < 0.2:
        workload = with_samples(workload, rng.randint(2, 4), output_cv=0.5, seed=seed)
    process = rng.choice(("poisson", "gamma", None)) if arrivals else None
    if process is not None:
        workload = with_arrivals(workload, process, rate=rng.choice((20.0, 50.0)), cv=3.0, seed=seed)
    return kind, workload


def draw_options(rng: random.Random, workload, budgets=(8, 16, 17, 33, 64, 512)) -> dict:
    """Schedule options, each set at random or left at the schedule's own."""
    options = {"max_num_batched_tokens": rng.choice(budgets)}
    for name, values, chance in (("caching", ("lru", "off"), 0.4), ("max_num_seqs", (1, 2, 5, None), 0.3),
                                 ("kv_threshold", (0.5, 0.9, None), 0.3), ("new_token_ratio", (0.3, 0.7, 1.0, None), 0.3),
                                 ("mixed_batches", (True, False), 0.25), ("cache_in_step", (True, False), 0.25),
                                 ("preemption", ("vllm", "sglang"), 0.3), ("host_cache_blocks", (4, 32), 0.25),
                                 ("cascade_attention", (True,), 0.2), ("enable_chunked_prefill", (False,), 0.2)):
        if rng.random() < chance:
            options[name] = rng.choice(values)
    if options.get("enable_chunked_prefill") is False:  # a whole prompt must fit a step, and so must one
        # recomputed after a preemption with its answer so far (vLLM: max_num_batched_tokens >= max_model_len)
        longest = max(r.prompt_len + r.output_len - 1 for r in workload.requests)
        options["max_num_batched_tokens"] = longest + rng.randint(0, 40)
    return options


def draw_case(seed: int, index: int, arrivals: bool, model, scale: str = "small", grouped: bool = False):
    """(kind, workload, schedule, options, KV blocks, block size) of case ``seed:index`` for
    ``model`` (its sliding windows' or linear layers' blocks held beside a request's own).
    ``grouped``: mostly a schedule whose plans name shared-prefix groups (the Triton backend's
    soak, for its shared-prefix kernel; of the plain draws about 1 in 30 ran it, cascade
    attention needing 256 tokens and 8 requests), from a stream of the case's own."""
    rng = random.Random(seed * 100_000 + index)
    medium = scale == "medium"
    kind, workload = draw_medium_workload(rng, arrivals) if medium else draw_workload(rng, arrivals)
    block_size = 16 if model.sliding_window else rng.choice((4, 16))
    schedule = rng.choice(SCHEDULES)
    swap = random.Random(f"{seed}:{index}:grouped")
    if grouped and swap.random() < 0.6:  # (before the cache size, drawn for the schedule that runs)
        schedule = swap.choice(("prefix_grouped", "batchllm"))
    options = draw_options(rng, workload, (16, 64, 256, 1024)) if medium else draw_options(rng, workload)
    window = model.window_blocks(block_size)
    if isinstance(window, WindowBlocks):  # a hybrid model: vLLM's retention interval for its pages too,
        # from a stream of its own (the cases recorded before keep their draws)
        extra = random.Random(f"{seed}:{index}:retention")
        if extra.random() < 0.5:
            options["retention_interval"] = extra.choice((None, block_size, 3 * block_size))
    if "host_cache_blocks" in options and random.Random(f"{seed}:{index}:async").random() < 0.4:
        options["host_load_async"] = True  # loads beside the steps (vLLM's asynchronous connectors)
    need = smallest_cache(schedule_config(schedule, **options), workload, block_size, window)
    # mostly a cache barely larger than the largest request: preemption, groups dropped, deadlocks broken
    blocks = rng.choice((need + 1, need + 1, need + 2, need + 3, need + 4, need * 2, 4096))
    if medium:  # a few requests' worth up to a few dozen (drawn after the small draw, which the
        # recorded medium cases were drawn with too)
        blocks = rng.choice((need + 1, need + 8, need + 32, need * 2, need * 4, need * 8))
    return kind, workload, schedule, options, blocks, block_size


def smallest_cache(config, workload, block_size: int, window_blocks) -> int:
    """The fewest KV blocks that hold the workload's longest request (with what it holds for
    its model's sliding windows or linear layers' state)."""
    from scheduler import Scheduler

    longest = max(workload.requests, key=lambda r: r.prompt_len + r.output_len)
    blocks = -(-(longest.prompt_len + longest.output_len - 1) // block_size)
    for blocks in range(blocks, blocks + 4096):
        try:
            Scheduler(config, blocks, block_size, window_blocks=window_blocks).check_fits(longest)
            return blocks
        except WorkloadError:
            continue
    raise WorkloadError(f"no KV cache up to {blocks} blocks holds request {longest.req_id}")


def draw_kernel_options(seed: int, index: int) -> dict:
    """The shared-prefix kernel's options (``kernels.shared_prefix.*``), each set at random or
    left at its default, from a stream of the case's own (the torch backend's cases keep their draws)."""
    rng = random.Random(f"{seed}:{index}:kernels")
    options = {}
    for name, values in (("prefix_blocks_per_split", (1, 2, 3)), ("pages", (1, 2, 4)),
                         ("members_per_program", (None, 1, 2, 4)), ("fused_merge", (True, False)),
                         ("prefix_first", (True, False)), ("fp32_partials", (True, False)),
                         ("merge_rows", (1, 2, 4)), ("merge_eager", (True, False))):
        if rng.random() < 0.5:
            options[name] = rng.choice(values)
    return {"shared_prefix": options}
