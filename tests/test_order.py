"""The `sorted` schedule (a batch sorted by prompt, BatchLLM §6.2.1's ablation) and `batchlab
order`, which writes a prompts file in the order a simulated schedule admitted it."""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_runs import batchlab, schedule_steps

from batchlab.order import OrderError, admission_orders, order_main
from batchlab.records import admission_ranks, request_columns
from scheduler import schedule_config
from scheduler.model_spec import model_spec
from sim.cost_model import CostModel
from sim.hardware import hardware_spec
from sim.roofline import build_roofline_profile
from sim.simulator import simulate
from traces.synthetic import batchllm_microbenchmark, prefix_tree_workload

ROOT = Path(__file__).resolve().parents[1]
MODEL = model_spec("llama-3.1-8b")
COST = CostModel(build_roofline_profile(MODEL, hardware_spec("h100-sxm")), MODEL)


def _steps(outcome):
    columns = outcome.steps.columns()
    return {name: np.asarray(values) for name, values in columns.items()}


def test_sorted_is_fcfs_over_the_batch_presorted():
    """A shuffled batch under `sorted` runs step for step as fcfs runs it unshuffled (groups one
    after the other), and an LRU cache holding ~12 prompts keeps the sharing fcfs loses."""
    shuffled = batchllm_microbenchmark(400, 40, 20, 8, 256, shuffle=True, seed=3)
    ordered = batchllm_microbenchmark(400, 40, 20, 8, 256, shuffle=False, seed=3)
    blocks = 12 * 440 // 16
    by_sorting = simulate(shuffled, schedule_config("sorted"), COST, blocks, 16)
    presorted = simulate(ordered, schedule_config("fcfs"), COST, blocks, 16)
    as_given = simulate(shuffled, schedule_config("fcfs"), COST, blocks, 16)
    mine, theirs = _steps(by_sorting), _steps(presorted)
    assert mine.keys() == theirs.keys()
    for name in mine:
        assert np.array_equal(mine[name], theirs[name]), name
    saved = lambda outcome: outcome.scheduler.stats.prefill_token_saving
    # at best each group of 8 computes its 400-token prefix once (7 * 400 of 8 * 440 tokens
    # saved); members admitted in the step that computes the prefix compute it too, as in vLLM
    assert 0.9 * 7 * 400 / (8 * 440) < saved(by_sorting) <= 7 * 400 / (8 * 440)
    assert saved(as_given) < 0.5 * saved(by_sorting)


def test_sorted_admits_depth_first_and_the_records_say_so():
    workload = prefix_tree_workload((3, 4), (200, 60), 20, 3, 10, shuffle=True, seed=5)
    outcome = simulate(workload, schedule_config("sorted", max_num_seqs=4), COST, 2_000, 16)
    columns = request_columns(outcome.scheduler, "sorted")
    order = columns["req_id"][np.argsort(columns["admission"])]
    prompts = [workload.requests[i].prompt for i in order]
    assert prompts == sorted(r.prompt for r in workload.requests)  # the prefix tree, depth first
    assert sorted(columns["admission"]) == list(range(len(workload.requests)))
    # the first admissions in time agree with the ranks
    first = columns["first_scheduled_s"][np.argsort(columns["admission"])]
    assert np.all(np.diff(first) >= 0)


def test_admission_ranks():
    assert admission_ranks([-1, 5, 2, 9]).tolist() == [-1, 1, 0, 2]
    assert admission_ranks([]).tolist() == []


def test_admission_orders_and_what_is_not_one_batch(tmp_path):
    base = {"schedule": np.array(["fcfs"] * 4, dtype=object), "req_id": np.array([0, 1, 2, 3]),
            "arrival_s": np.zeros(4), "admission": np.array([2, 0, 1, 3])}
    assert {k: v.tolist() for k, v in admission_orders(base, "fcfs", tmp_path).items()} == {0: [1, 2, 0, 3]}
    # replicas rank their own admissions
    split = {**base, "replica": np.array([1, 2, 2, 1]), "admission": np.array([1, 1, 0, 0])}
    assert {k: v.tolist() for k, v in admission_orders(split, "fcfs", tmp_path).items()} == {1: [3, 0], 2: [2, 1]}
    with pytest.raises(OrderError, match="arrive over 1.5 s; an order is for a batch sent at once"):
        admission_orders({**base, "arrival_s": np.array([0.0, 1.5, 0.0, 0.0])}, "fcfs", tmp_path)
    with pytest.raises(OrderError, match="1 of 4 requests were never admitted under fcfs"):
        admission_orders({**base, "admission": np.array([1, -1, 0, 2])}, "fcfs", tmp_path)
    with pytest.raises(OrderError, match="no admission column"):
        admission_orders({k: v for k, v in base.items() if k != "admission"}, "fcfs", tmp_path)


def _prompts_file(path: Path) -> list[bytes]:
    """48 token-id prompts, 12 prefixes of 96 tokens, shuffled; a blank line in the middle and
    no newline at the end, as files come."""
    rng = np.random.default_rng(7)
    lines = []
    for index in rng.permutation(48):
        prefix = [1000 + 10 * int(index % 12) + k for k in range(96)]
        own = rng.integers(5000, 9000, 20).tolist()
        lines.append(json.dumps({"prompt_token_ids": prefix + own, "max_tokens": 8 + int(index % 3), "id": int(index)}))
    text = "\n".join(lines[:10]) + "\n\n" + "\n".join(lines[10:])
    path.write_text(text)
    return [line.encode() + b"\n" for line in lines]


def _memory_for(blocks: int) -> float:
    """An H100's memory cut so that Llama-3.1-8B leaves ``blocks`` KV blocks (of 16 tokens)."""
    from sim.hardware import shard

    hardware = hardware_spec("h100-sxm")
    part = shard(MODEL, hardware)
    need = part.weight_bytes + hardware.activation_reserve_bytes + (blocks + 0.5) * part.kv_bytes_per_token * 16
    return need / hardware.memory_utilization


SMALL_GPU = (f"hardware.overrides.memory_bytes={_memory_for(40)!r}",)  # 6 of 12 prefixes: order decides the sharing


@pytest.fixture(scope="module")
def prompts_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("order")
    prompts = tmp / "batch.jsonl"
    lines = _prompts_file(prompts)
    result = batchlab("simulate", "workload=prompts", f"workload.path={prompts}", *SMALL_GPU,
                      "schedule.names=[fcfs,sorted,batchllm]", "report=false", f"hydra.run.dir={tmp / 'run'}")
    assert result.returncode == 0, result.stderr
    (tmp / "simulate.out").write_text(result.stdout)
    return tmp, prompts, lines


def test_simulate_over_prompts_says_how_to_send_them_in_order(prompts_run):
    tmp, prompts, _ = prompts_run
    summary = json.loads((tmp / "run" / "summary.json").read_text())
    assert summary["workload_offline"] is True
    sorted_s = summary["schedules"]["sorted"]["makespan_s"]
    assert (f"runs your prompts as sorted did ({sorted_s:,.1f} s against fcfs's "
            f"{summary['schedules']['fcfs']['makespan_s']:,.1f} s) when sent in its order: "
            f"batchlab order {tmp / 'run'} ORDERED.jsonl --schedule sorted") in (tmp / "simulate.out").read_text()
    # arriving over time there is no batch to order, and no hint
    result = batchlab("simulate", "workload=prompts", f"workload.path={prompts}", *SMALL_GPU,
                      "workload.arrivals.process=poisson", "workload.arrivals.rate=50", "schedule.names=[fcfs,sorted]",
                      "report=false", f"hydra.run.dir={tmp / 'arriving'}")
    assert result.returncode == 0, result.stderr
    assert "batchlab order" not in result.stdout
    assert json.loads((tmp / "arriving" / "summary.json").read_text())["workload_offline"] is False


def test_order_writes_the_lines_in_admission_order_and_fcfs_over_them_runs_as_sorted(prompts_run):
    import pandas as pd

    tmp, prompts, lines = prompts_run
    run = tmp / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["kv_capacity_blocks"] == 40
    out = tmp / "sorted.jsonl"
    result = batchlab("order", str(run), str(out), "--schedule", "sorted")
    assert result.returncode == 0, result.stderr
    assert "wrote 48 prompts" in result.stdout and "schedule.names=[fcfs]" in result.stdout
    requests = pd.read_parquet(run / "requests.parquet")
    mine = requests[requests.schedule == "sorted"].sort_values("admission")
    written = out.read_bytes().splitlines(keepends=True)
    assert written == [lines[i] for i in mine.req_id]  # byte for byte, in admission order
    # what fcfs makes of the written order is what `sorted` made of the original
    follow = batchlab("simulate", "workload=prompts", f"workload.path={out}", *SMALL_GPU, "schedule.names=[fcfs]",
                      "report=false", f"hydra.run.dir={tmp / 'follow'}")
    assert follow.returncode == 0, follow.stderr
    pd.testing.assert_frame_equal(schedule_steps(run, "sorted"), schedule_steps(tmp / "follow"))
    saving = {name: entry["prefill_token_saving"] for name, entry in summary["schedules"].items()}
    assert saving["sorted"] > saving["fcfs"]
    # no --schedule: the run's fastest
    best = min(summary["schedules"], key=lambda name: summary["schedules"][name]["makespan_s"])
    assert order_main([str(run), str(tmp / "best.jsonl")]) == 0
    chosen = requests[requests.schedule == best].sort_values("admission")
    assert (tmp / "best.jsonl").read_bytes().splitlines(keepends=True) == [lines[i] for i in chosen.req_id]


def test_order_refuses_with_what_to_do(prompts_run, capsys):
    tmp, prompts, _ = prompts_run
    run = tmp / "run"
    assert order_main([str(run), str(tmp / "x.jsonl"), "--schedule", "lpm"]) == 2
    assert "schedule 'lpm' is not in this run; it has ['batchllm', 'fcfs', 'sorted']" in capsys.readouterr().err
    assert order_main([str(run), str(prompts)]) == 2
    assert "that is the prompts file itself" in capsys.readouterr().err
    longer = tmp / "longer.jsonl"
    longer.write_bytes(prompts.read_bytes() + b'\n{"prompt_token_ids": [1, 2, 3]}\n')
    assert order_main([str(run), str(tmp / "x.jsonl"), "--prompts", str(longer)]) == 2
    assert "49 prompts, but the run simulated 48; simulate the whole file" in capsys.readouterr().err
    assert order_main([str(tmp), str(tmp / "x.jsonl")]) == 2
    assert "no config.yaml; expected a run directory" in capsys.readouterr().err
    other = tmp / "other_run"
    shutil.copytree(run, other)
    config = (other / "config.yaml").read_text().replace("kind: prompts", "kind: file")
    (other / "config.yaml").write_text(config)
    assert order_main([str(other), str(tmp / "x.jsonl")]) == 2
    assert "not a prompts file; give --prompts FILE" in capsys.readouterr().err
    assert order_main([str(other), str(tmp / "x.jsonl"), "--prompts", str(prompts)]) == 0
    assert not (tmp / ".x.jsonl.partial").exists()
    # the run's own prompts file touched since the run read it: refused
    moved = tmp / "moved"
    shutil.copytree(run, moved / "run")
    shutil.copy2(prompts, moved / "batch.jsonl")
    summary = json.loads((moved / "run" / "summary.json").read_text())
    assert summary["workload_file"]["path"] == str(prompts.resolve())
    summary["workload_file"]["path"] = str((moved / "batch.jsonl").resolve())
    (moved / "run" / "summary.json").write_text(json.dumps(summary))
    config = (moved / "run" / "config.yaml").read_text().replace(str(prompts), str(moved / "batch.jsonl"))
    (moved / "run" / "config.yaml").write_text(config)
    assert order_main([str(moved / "run"), str(tmp / "y.jsonl")]) == 0
    stat = (moved / "batch.jsonl").stat()
    os.utime(moved / "batch.jsonl", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert order_main([str(moved / "run"), str(tmp / "z.jsonl")]) == 2
    assert "batch.jsonl: changed since the run read it" in capsys.readouterr().err and not (tmp / "z.jsonl").exists()


def test_order_over_replicas_writes_each_engine_its_share(prompts_run):
    """Two engines, the batch split by prefix (BatchLLM's sharding): one file each, together the
    whole batch once, each in its engine's admission order, and fcfs over engine 2's file runs as
    that engine ran `sorted`."""
    import pandas as pd

    tmp, prompts, lines = prompts_run
    run = tmp / "replicas"
    result = batchlab("simulate", "workload=prompts", f"workload.path={prompts}", *SMALL_GPU, "replicas=2",
                      "schedule.names=[sorted]", "report=false", f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr
    assert order_main([str(run), str(tmp / "split.jsonl")]) == 0
    requests = pd.read_parquet(run / "requests.parquet")
    written = {}
    for k in (1, 2):
        mine = requests[requests.replica == k].sort_values("admission")
        written[k] = (tmp / f"split.replica{k}.jsonl").read_bytes().splitlines(keepends=True)
        assert written[k] == [lines[i] for i in mine.req_id]
    assert sorted(written[1] + written[2]) == sorted(lines) and not (tmp / "split.jsonl").exists()
    follow = batchlab("simulate", "workload=prompts", f"workload.path={tmp / 'split.replica2.jsonl'}", *SMALL_GPU,
                      "schedule.names=[fcfs]", "report=false", f"hydra.run.dir={tmp / 'follow2'}")
    assert follow.returncode == 0, follow.stderr
    steps = pd.read_parquet(run / "steps.parquet")
    steps = steps[steps.replica == 2].drop(columns=["schedule", "replica"]).reset_index(drop=True)
    again = pd.read_parquet(tmp / "follow2" / "steps.parquet").drop(columns="schedule").reset_index(drop=True)
    pd.testing.assert_frame_equal(steps, again)


SHARED = Path(__file__).resolve().parents[2] / "shared" / "traces"


@pytest.mark.skipif(not (SHARED / "mooncake").exists(), reason=f"real traces not found at {SHARED}")
def test_sorted_keeps_what_an_unbounded_cache_keeps_of_a_real_trace():
    """The first 1,500 requests of Mooncake's synthetic trace as one batch on an H100 (25,720
    blocks, about 25 of its prompts): sent as they came, an LRU cache keeps 5 % of the reuse an
    unbounded cache has; sorted, all of it but a few blocks (SGLang's Theorem 3.1: depth first is
    optimal when the cache holds the longest request)."""
    from traces.arrivals import with_arrivals
    from traces.loaders import load_mooncake

    workload = load_mooncake(SHARED / "mooncake" / "synthetic_trace.jsonl")
    workload = with_arrivals(workload.head(1500), "offline")
    saved = lambda name, blocks: simulate(workload, schedule_config(name), COST, blocks,
                                          16).scheduler.stats.prefill_token_saving
    unbounded = saved("fcfs", 10_000_000)
    assert 0.24 < unbounded < 0.25
    assert saved("fcfs", 25_720) < 0.06 * unbounded
    assert saved("sorted", 25_720) > 0.995 * unbounded


def test_order_from_a_measured_engine_run(tmp_path):
    """`batchlab run` (the engine, tiny model) over a prompts file writes the same admission
    column; the order taken from it keeps each shared prefix's prompts together, depth first."""
    rng = np.random.default_rng(3)
    rows = []
    for index in range(12):
        prefix = [10 + int(index % 3)] * 40
        rows.append({"prompt_token_ids": prefix + rng.integers(20, 200, 8).tolist(), "max_tokens": 3})
    prompts = tmp_path / "batch.jsonl"
    prompts.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = batchlab("run", "workload=prompts", f"workload.path={prompts}", "schedule.names=[sorted]",
                      "report=false", "progress=false", f"hydra.run.dir={tmp_path / 'measured'}")
    assert result.returncode == 0, result.stderr
    assert order_main([str(tmp_path / "measured"), str(tmp_path / "ordered.jsonl")]) == 0
    written = [json.loads(line)["prompt_token_ids"] for line in (tmp_path / "ordered.jsonl").read_text().splitlines()]
    assert sorted(written) == sorted(row["prompt_token_ids"] for row in rows)
    prefixes = [tokens[0] for tokens in written]
    runs = [p for i, p in enumerate(prefixes) if i == 0 or prefixes[i - 1] != p]
    assert sorted(runs) == [10, 11, 12]  # three runs of four: each prefix's prompts one after the other
