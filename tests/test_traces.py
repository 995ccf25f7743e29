"""Loaders on the real traces (skipped when ../shared is absent) and on malformed files."""
import json
import math
from pathlib import Path

import pytest

from scheduler import ConfigError, WorkloadError
from traces.arrivals import with_arrivals
from traces.build import build_workload
from traces.errors import TraceError
from traces.loaders import load_azure, load_length_csv, load_mooncake
from traces.native import load_jsonl, load_parquet, save_jsonl, save_parquet
from traces.synthetic import prefix_tree_workload, system_prompt_workload

SHARED = Path(__file__).resolve().parents[2] / "shared" / "traces"
needs_traces = pytest.mark.skipif(not SHARED.exists(), reason=f"real traces not found at {SHARED}")


@needs_traces
def test_mooncake_conversation_trace():
    workload = load_mooncake(SHARED / "mooncake" / "conversation_trace.jsonl")
    assert len(workload) == 12_031
    assert workload.prompt_tokens == 144_793_823  # the trace's 145M prompt tokens
    first = workload.requests[0]
    assert first.prompt_len == 6758 and len(first.prompt) == math.ceil(6758 / 512)
    assert first.prompt[-1][1] == 6758 - 13 * 512  # the partial last block
    assert workload.requests[1].prompt[0] == first.prompt[0]  # both start with block id 0


def infinite_cache_reuse(workload) -> tuple[float, float]:
    """(blocks, tokens) whose whole prefix an earlier request already had, in arrival order:
    what a cache that never evicts could reuse."""
    nodes: dict = {}
    blocks = reused_blocks = tokens = reused_tokens = 0
    for request in sorted(workload.requests, key=lambda r: (r.arrival_s, r.req_id)):
        node = 0
        for segment in request.prompt:
            key = (node, segment)
            seen = key in nodes
            node = nodes.setdefault(key, len(nodes) + 1)
            blocks += 1
            tokens += segment[1]
            reused_blocks += seen
            reused_tokens += segment[1] * seen
    return reused_blocks / blocks, reused_tokens / tokens


@needs_traces
@pytest.mark.parametrize("name,published", [("conversation_trace", 0.366), ("synthetic_trace", 0.64)])
def test_mooncake_block_reuse_is_the_published_figure(name, published):
    # ../shared/traces/README.md: block reuse with an infinite cache, 36.6 % (conversation) and
    # 64 % (synthetic) of 512-token blocks; the loader's segment chains must give the same
    blocks, _ = infinite_cache_reuse(load_mooncake(SHARED / "mooncake" / f"{name}.jsonl"))
    assert blocks == pytest.approx(published, abs=0.0005 if published == 0.366 else 0.005)


@needs_traces
def test_unbounded_lru_cache_reuses_everything_an_infinite_cache_would():
    # fcfs with a KV cache larger than the whole trace: every token whose prefix came before is
    # a cache hit (vLLM registers full blocks as they are computed, so even requests in flight
    # together share), and the simulator's saving is exactly the infinite-cache reuse
    from batchlab.records import outcome_summary
    from scheduler import schedule_config
    from scheduler.model_spec import model_spec
    from sim.cost_model import CostModel
    from sim.hardware import hardware_spec
    from sim.roofline import build_roofline_profile
    from sim.simulator import simulate

    workload = load_mooncake(SHARED / "mooncake" / "synthetic_trace.jsonl")
    _, tokens = infinite_cache_reuse(workload)
    model = model_spec("llama-3.1-8b")
    cost = CostModel(build_roofline_profile(model, hardware_spec("h100-sxm")), model)
    outcome = simulate(workload, schedule_config("fcfs"), cost, workload.prompt_tokens // 16 + 200_000, 16)
    summary = outcome_summary(outcome)
    assert summary["prefill_token_saving"] == pytest.approx(tokens, abs=1e-3)
    assert outcome.scheduler.kv.num_evictions == 0


@needs_traces
def test_azure_and_length_traces():
    conv = load_azure(SHARED / "azure-llm-2023" / "AzureLLMInferenceTrace_conv.csv")
    assert len(conv) == 19_366 and conv.requests[0].arrival_s == 0.0
    assert conv.requests[1].arrival_s == pytest.approx(50.9951690 - 46.6805900, abs=1e-6)
    assert 3400 < conv.requests[-1].arrival_s < 3600
    sharegpt = load_length_csv(SHARED / "sarathi-sharegpt" / "sharegpt_8k_filtered_stats_llama2_tokenizer.csv")
    assert len(sharegpt) == 30_731 and sharegpt.is_offline


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


GOOD = {"timestamp": 0, "input_length": 600, "output_length": 5, "hash_ids": [1, 2]}


@pytest.mark.parametrize("line, message", [
    ("{not json", r"bad\.jsonl:2: malformed JSON"),
    (json.dumps({**GOOD, "hash_ids": [1]}), r"bad\.jsonl:2: 1 hash_ids for input_length 600; expected ceil\(600/512\) = 2"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "output_length"}), r"bad\.jsonl:2: missing field 'output_length'"),
    (json.dumps({**GOOD, "output_length": -3}), r"bad\.jsonl:2: field 'output_length' is -3; expected an integer >= 1"),
    (json.dumps({**GOOD, "timestamp": "soon"}), r"bad\.jsonl:2: field 'timestamp'"),
])
def test_mooncake_errors_name_file_and_line(tmp_path, line, message):
    path = write(tmp_path, "bad.jsonl", json.dumps(GOOD) + "\n" + line + "\n")
    with pytest.raises(TraceError, match=message):
        load_mooncake(path)


def test_unsorted_timestamps_are_sorted_with_a_warning(tmp_path):
    rows = [{**GOOD, "timestamp": 2000}, {**GOOD, "timestamp": 500, "input_length": 10, "hash_ids": [7]}]
    path = write(tmp_path, "t.jsonl", "\n".join(json.dumps(r) for r in rows))
    with pytest.warns(UserWarning, match="not sorted"):
        workload = load_mooncake(path)
    assert [r.prompt_len for r in workload.requests] == [10, 600]
    assert [r.arrival_s for r in workload.requests] == [0.0, 1.5]
    assert "not sorted" in workload.notes[0]


def test_azure_and_length_errors(tmp_path):
    bad_time = write(tmp_path, "a.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,5,5\n")
    with pytest.raises(TraceError, match=r"a\.csv:2: TIMESTAMP 'yesterday'"):
        load_azure(bad_time)
    missing = write(tmp_path, "b.csv", "TIMESTAMP,ContextTokens\n2023-11-16 18:15:46.6805900,5\n")
    with pytest.raises(TraceError, match=r"b\.csv:1: missing column\(s\) \['GeneratedTokens'\]"):
        load_azure(missing)
    zero = write(tmp_path, "c.csv", "num_prefill_tokens,num_decode_tokens\n5,5\n7,0\n")
    with pytest.raises(TraceError, match=r"c\.csv:3: field 'num_decode_tokens' is 0"):
        load_length_csv(zero)
    with pytest.raises(TraceError, match="no such file"):
        load_mooncake(tmp_path / "absent.jsonl")


def test_azure_timestamps_parse_as_whole_date_times(tmp_path):
    """The loader parses each minute once and adds seconds and fraction: the same floats as
    parsing every stamp whole (UTC), for any spelling datetime accepts; a malformed fraction,
    a short row or a bad count names its line (blank lines counted)."""
    from datetime import datetime, timezone

    stamps = ["2023-11-16 18:15:46.6805900", "2023-11-16 18:15:59", "2023-11-16T18:16:00.5",
              "2023-11-16 18:16:07.0000001", "2023-11-17 00:00:00.25"]
    path = write(tmp_path, "az.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n" +
                 "".join(f"{stamp},{i + 1},{i + 2}\n" for i, stamp in enumerate(stamps)))
    requests = load_azure(path).requests

    def whole(stamp):
        head, _, fraction = stamp.partition(".")
        seconds = datetime.fromisoformat(head).replace(tzinfo=timezone.utc).timestamp()
        return seconds + float("0." + fraction) if fraction else seconds
    assert [r.arrival_s for r in requests] == [whole(s) - whole(stamps[0]) for s in stamps]
    assert [(r.prompt_len, r.output_len) for r in requests] == [(i + 1, i + 2) for i in range(len(stamps))]
    header = "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.1,5,5\n\n"
    for row, message in [("2023-11-16 18:15:47.5e3,5,5", r"az2\.csv:4: TIMESTAMP '2023-11-16 18:15:47\.5e3'"),
                         ("2023-11-16 18:15:61,5,5", r"az2\.csv:4: TIMESTAMP"),
                         ("2023-11-16 18:15:47,5", r"az2\.csv:4: 2 fields; expected 3"),
                         ("2023-11-16 18:15:47,5,-1", r"az2\.csv:4: field 'GeneratedTokens' is -1"),
                         ("2023-11-16 18:15:47,five,1", r"az2\.csv:4: field 'ContextTokens' is 'five'")]:
        with pytest.raises(TraceError, match=message):
            load_azure(write(tmp_path, "az2.csv", header + row + "\n"))


def test_native_formats_round_trip(tmp_path):
    workload = with_arrivals(prefix_tree_workload((2, 3), (50, 20), 7, 2, 9), "poisson", rate=3.0, seed=1)
    save_jsonl(workload, tmp_path / "w.jsonl")
    save_parquet(workload, tmp_path / "w.parquet")
    assert load_jsonl(tmp_path / "w.jsonl").requests == workload.requests
    assert load_parquet(tmp_path / "w.parquet").requests == workload.requests


def test_native_jsonl_errors(tmp_path):
    path = write(tmp_path, "w.jsonl", '{"req_id": 0, "arrival_s": 0, "prompt": [[1, 0]], "output_len": 1}\n')
    with pytest.raises(TraceError, match=r"w\.jsonl:1: request 0: segment 0 has length 0"):
        load_jsonl(path)


def test_arrival_processes():
    base = system_prompt_workload(num_requests=2000, seed=0)
    poisson = with_arrivals(base, "poisson", rate=10.0, seed=0)
    gaps = [b.arrival_s - a.arrival_s for a, b in zip(poisson.requests, poisson.requests[1:])]
    assert sum(gaps) / len(gaps) == pytest.approx(0.1, rel=0.1)
    bursty = with_arrivals(base, "gamma", rate=10.0, cv=4.0, seed=0)
    bursty_gaps = [b.arrival_s - a.arrival_s for a, b in zip(bursty.requests, bursty.requests[1:])]
    cv = (sum((g - 0.1) ** 2 for g in bursty_gaps) / len(bursty_gaps)) ** 0.5 / 0.1
    assert cv > 2.5
    scaled = with_arrivals(poisson, "trace", scale=2.0)
    assert scaled.requests[-1].arrival_s == pytest.approx(2 * poisson.requests[-1].arrival_s)
    # re-timed requests are the same requests (prompt, lengths, ids), sorted by time, ties kept
    # in workload order
    assert sorted(r.req_id for r in bursty.requests) == list(range(2000))
    for old, new in zip(base.requests, sorted(bursty.requests, key=lambda r: r.req_id)):
        assert (new.prompt, new.output_len, new.prompt_len) == (old.prompt, old.output_len, old.prompt_len)
    assert [r.req_id for r in with_arrivals(base, "offline").requests] == [r.req_id for r in base.requests]
    # replaying a trace's own times keeps its requests, sorted by time
    from dataclasses import replace
    replayed = with_arrivals(replace(poisson, requests=poisson.requests[::-1]), "trace")
    assert replayed.requests == poisson.requests
    assert all(a is b for a, b in zip(with_arrivals(poisson, "trace").requests, poisson.requests))
    with pytest.raises(WorkloadError, match="request 3: arrival_s is -1.0"):
        base.requests[3].with_arrival(-1.0)


def test_build_workload_from_config_mapping():
    workload = build_workload({"kind": "batchllm_microbenchmark", "params": {"num_requests": 32, "share_degree": 4},
                               "arrivals": {"process": "offline"}, "limit": 10})
    assert len(workload) == 10 and workload.is_offline
    with pytest.raises(ConfigError, match="unknown workload kind 'nope'"):
        build_workload({"kind": "nope"})


def test_step_log_flushes_parts_and_keeps_every_step(tmp_path):
    """Steps are flushed to part files as a run goes (an interrupted run keeps them); reading
    back gives every step in order, whether added one by one or a stretch at a time."""
    import numpy as np
    import pandas as pd

    from traces.step_log import STEP_COLUMNS, StepLog

    log = StepLog(("mlp", "attn"), tmp_path / "steps", flush_every=3)
    for step in range(4):
        log.add_step({name: step for name in STEP_COLUMNS}, {"mlp": 0.5 * step})
    log.add_steps({name: np.arange(4, 9) if name == "step" else 1 for name in STEP_COLUMNS},
                  {"mlp": np.full(5, 2.0), "attn": np.arange(5) / 10}, 5)
    log.add_step({name: 9 for name in STEP_COLUMNS}, {"attn": 0.25})
    assert len(list((tmp_path / "steps").glob("part-*.parquet"))) == 2  # after steps 0-3 and 4-8
    steps = log.all_steps()
    assert steps["step"].tolist() == list(range(10)) and log.num_steps == 10
    assert steps["kernel_mlp_s"].tolist() == [0.0, 0.5, 1.0, 1.5, 2.0, 2.0, 2.0, 2.0, 2.0, 0.0]
    assert steps["kernel_attn_s"].tolist() == [0.0] * 4 + [0.0, 0.1, 0.2, 0.3, 0.4] + [0.25]
    assert str(steps["num_tokens"].dtype) == "int64" and str(steps["start_s"].dtype) == "float64"
    # the parts as pandas reads them, then the buffer: what `columns` (and so `all_steps`) read
    # through pyarrow's buffers
    parts = [pd.read_parquet(p) for p in sorted((tmp_path / "steps").glob("part-*.parquet"))]
    pd.testing.assert_frame_equal(steps, pd.concat(parts + [log.frame()], ignore_index=True), check_exact=True)


def test_step_log_columns_keep_their_types():
    """Counts are int64 and times float64, in the frame and in the flushed parts; a count column
    refuses a fractional value instead of truncating it."""
    import numpy as np

    from traces.step_log import STEP_COLUMNS, StepLog

    log = StepLog(("mlp",))
    assert len(log.frame()) == 0
    log.add_step({name: 3 for name in STEP_COLUMNS} | {"start_s": 1, "duration_s": 0.25}, {"mlp": 1e-3})
    log.add_steps({name: np.array([4, 5]) for name in STEP_COLUMNS} | {"duration_s": np.array([0.5, 0.75])},
                  {"mlp": np.array([2e-3, 3e-3])}, 2)
    frame = log.frame()
    assert frame["num_tokens"].tolist() == [3, 4, 5] and str(frame["num_tokens"].dtype) == "int64"
    assert frame["start_s"].tolist() == [1.0, 4.0, 5.0] and frame["duration_s"].tolist() == [0.25, 0.5, 0.75]
    with pytest.raises(TypeError):
        log.add_step({name: 7 for name in STEP_COLUMNS} | {"num_tokens": 2.5}, {})
    with pytest.raises(TypeError, match="'num_tokens' counts"):
        log.add_steps({name: np.array([8]) for name in STEP_COLUMNS} | {"num_tokens": np.array([1.5])},
                      {"mlp": np.zeros(1)}, 1)
    assert log.frame().equals(frame) and log.num_steps == 3  # the refused steps left nothing behind


def test_columns_written_without_pandas_read_back_as_pandas_writes_them(tmp_path):
    """traces/columns.py writes run records through pyarrow's buffers; the files hold the types
    and the missing values (NaN as null) that pandas' ``to_parquet`` writes, and read back
    as the same frame."""
    import numpy as np
    import pandas as pd
    import pyarrow.parquet as pq

    from traces.columns import read_parquet_numeric, write_parquet

    columns = {"schedule": np.array(["fcfs", "batchllm", "fcfs"], dtype=object),
               "req_id": np.array([3, -1, 7]), "finish_s": np.array([1.5, np.nan, 2.25]),
               "small": np.array([1, 2, 3], dtype=np.int32), "flag": np.array([True, False, True]),
               "one": np.full(3, "décodé", dtype=object)}  # one value throughout: a shortcut
    write_parquet(columns, tmp_path / "ours.parquet")
    frame = pd.DataFrame(columns)
    frame.to_parquet(tmp_path / "pandas.parquet", index=False)
    ours, theirs = pq.read_table(tmp_path / "ours.parquet"), pq.read_table(tmp_path / "pandas.parquet")
    assert [(f.name, str(f.type)) for f in ours.schema][:3] == [(f.name, str(f.type)) for f in theirs.schema][:3]
    assert ours.column("finish_s").null_count == theirs.column("finish_s").null_count == 1
    expected = pd.read_parquet(tmp_path / "pandas.parquet").astype({"small": "int64", "flag": "int64"})
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "ours.parquet"), expected, check_exact=True)
    with pytest.raises(TypeError, match="'schedule': large_string"):
        read_parquet_numeric(tmp_path / "ours.parquet")
    write_parquet({"finish_s": columns["finish_s"]}, tmp_path / "missing.parquet")
    with pytest.raises(TypeError, match="'finish_s': double with 1 nulls"):
        read_parquet_numeric(tmp_path / "missing.parquet")
    numeric = {name: columns[name] for name in ("req_id", "small")}
    write_parquet(numeric, tmp_path / "numeric.parquet")
    back = read_parquet_numeric(tmp_path / "numeric.parquet")
    assert list(back) == ["req_id", "small"] and back["small"].dtype == np.int64
    assert back["req_id"].tolist() == [3, -1, 7] and back["small"].tolist() == [1, 2, 3]
    with pytest.raises(TypeError, match="'name': objects other than strings"):
        write_parquet({"name": np.array(["fcfs", None], dtype=object)}, tmp_path / "bad.parquet")
    with pytest.raises(TypeError, match="'when'"):
        write_parquet({"when": np.array(["2026-01-01"], dtype="datetime64[D]")}, tmp_path / "bad.parquet")
