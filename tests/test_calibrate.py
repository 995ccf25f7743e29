"""batchlab calibrate: reading measured benchmarks, fitting the roofline's assumptions to them,
and the fitted simulator against a published sweep it was not fitted to."""
import json
import math
from pathlib import Path

import pytest

from batchlab.calibration import Setting, fit, predict
from scheduler import schedule_config
from scheduler.errors import ConfigError, WorkloadError
from scheduler.model_spec import model_spec
from sim.hardware import hardware_spec
from traces.bench_results import read_bench_points

PUBLISHED = Path(__file__).resolve().parent.parent / "benchmarks" / "published" / "l4-qwen2.5-0.5b-vllm0.23.csv"


def vllm_result(**changes) -> dict:
    """A result as ``vllm bench serve --save-result`` writes it (vllm/benchmarks/serve.py's keys)."""
    result = {"date": "20261203-120000", "backend": "vllm", "label": None, "model_id": "Qwen/Qwen2.5-0.5B-Instruct",
              "tokenizer_id": "Qwen/Qwen2.5-0.5B-Instruct", "num_prompts": 160, "request_rate": "inf",
              "burstiness": 1.0, "max_concurrency": 8, "duration": 15.6, "completed": 160, "failed": 0,
              "total_input_tokens": 160 * 256, "total_output_tokens": 160 * 128, "request_throughput": 10.2,
              "output_throughput": 1312.0, "total_token_throughput": 3936.0, "mean_ttft_ms": 64.0,
              "median_ttft_ms": 60.9, "p99_ttft_ms": 88.4, "mean_tpot_ms": 5.6, "median_tpot_ms": 5.5,
              "mean_itl_ms": 5.6, "median_itl_ms": 5.5, "mean_e2el_ms": 780.0, "median_e2el_ms": 772.0,
              "gpu": "l4"}
    result.update(changes)
    return result


def test_a_vllm_result_becomes_a_point(tmp_path):
    path = tmp_path / "c8.json"
    path.write_text(json.dumps(vllm_result()))
    [point] = read_bench_points([path])
    assert (point.concurrency, len(point.input_lens), set(point.input_lens), set(point.output_lens)) == (8, 160, {256}, {128})
    assert point.measured == pytest.approx({"output_tokens_per_s": 1312.0, "makespan_s": 15.6, "ttft_s_p50": 0.0609,
                                            "tpot_s_p50": 0.0055, "e2e_s_p50": 0.772})
    workload = point.workload(think_s=0.02)
    assert workload.closed_loop.clients == 8 and workload.closed_loop.think_s == 0.02
    # prompts share nothing (the random dataset): one segment of its own each
    assert len({r.prompt[0][0] for r in workload.requests}) == 160
    # --append-result: one object a line, each point named by its line; --save-detailed: lengths per request
    detailed = vllm_result(num_prompts=3, completed=3, max_concurrency=None, request_rate=2.0,
                           input_lens=[100, 200, 300], output_lens=[10, 20, 30])
    path.write_text(json.dumps(vllm_result()) + "\n" + json.dumps(detailed) + "\n")
    first, second = read_bench_points([path])
    assert second.source == f"{path}:2" and second.input_lens == (100, 200, 300) and second.output_lens == (10, 20, 30)
    assert second.concurrency is None and second.request_rate == 2.0
    # a sweep gathered in one file as a list: each result named by its index
    path.write_text(json.dumps([vllm_result(), vllm_result(failed=2)]))
    with pytest.raises(WorkloadError, match=r"c8.json:\[1\]: 2 requests failed"):
        read_bench_points([path])
    path.write_text(json.dumps([vllm_result(), vllm_result(max_concurrency=16)]))
    assert [(p.source.rsplit(":", 1)[1], p.concurrency) for p in read_bench_points([path])] == [("[0]", 8), ("[1]", 16)]
    # SGLang's bench_serving: end-to-end as median_e2e_latency_ms, inter-token latency only, rate Infinity
    sglang = {k: v for k, v in vllm_result().items() if k not in ("median_e2el_ms", "median_tpot_ms")}
    path.write_text(json.dumps({**sglang, "median_e2e_latency_ms": 700.0, "median_itl_ms": 5.0,
                                "request_rate": float("inf")}))
    [third] = read_bench_points([path])
    assert third.measured["e2e_s_p50"] == pytest.approx(0.7) and third.measured["tpot_s_p50"] == pytest.approx(0.005)
    assert math.isinf(third.request_rate) and third.concurrency == 8
    arrivals = [r.arrival_s for r in second.workload().requests]
    assert arrivals[0] == 0 < arrivals[1] < arrivals[2]  # Poisson at 2/s, the first sent at once


@pytest.mark.parametrize("changes, message", [
    ({"failed": 3}, "3 requests failed"),
    ({"request_rate": 4.0}, "client pool .* capped rate"),
    ({"total_input_tokens": None}, "total_input_tokens"),
    ({"input_lens": [1, 2], "output_lens": [1, 2]}, "2 input_lens and 2 output_lens for 160"),
    ({"output_throughput": "fast"}, "output_throughput is 'fast'; expected a number"),
])
def test_a_bad_vllm_result_is_refused_by_name(tmp_path, changes, message):
    record = vllm_result(**changes)
    if changes.get("total_input_tokens", 0) is None:
        del record["total_input_tokens"]
    path = tmp_path / "run.json"
    path.write_text(json.dumps(record))
    with pytest.raises(WorkloadError, match=f"run.json: .*{message}"):
        read_bench_points([path])


@pytest.mark.parametrize("text, message", [
    ("# from a published table\ninput_len,output_len,concurrency\n256,128,1\n", r"sweep.csv:2: no column 'num_prompts'"),
    ("input_len,output_len,num_prompts,concurrency,ttft_ms_p50\n256,128,20,1,27\n256,128,20,two,30\n",
     r"sweep.csv:3: concurrency is 'two'; expected a number"),
    ("input_len,output_len,num_prompts,speed\n256,128,20,9\n", r"sweep.csv:1: unknown columns \['speed'\]"),
    ("input_len,output_len,num_prompts\n256,128,20\n", r"sweep.csv:2: nothing measured"),
    (None, "sweep.csv: no such file"),
    ("\ufeffinput_len, output_len ,num_prompts,e2e_ms_p50\n256,128,0,700\n",  # a BOM and spaces are fine
     r"sweep.csv:2: num_prompts is '0'; expected a whole number >= 1"),
])
def test_a_bad_csv_is_refused_with_file_and_line(tmp_path, text, message):
    path = tmp_path / "sweep.csv"
    if text is not None:
        path.write_text(text)
    with pytest.raises(WorkloadError, match=message):
        read_bench_points([path])


def small_setting() -> Setting:
    return Setting(model_spec("qwen2.5-0.5b"), hardware_spec("l4", memory_utilization=0.6), schedule_config("fcfs"))


def test_the_fit_recovers_what_made_the_measurements(tmp_path):
    """Figures simulated with known parameters, fitted from the preset's: the fit reproduces
    them, and the parameters the points do pin down come back."""
    path = tmp_path / "sweep.csv"
    path.write_text("input_len,output_len,num_prompts,concurrency,output_tokens_per_s,ttft_ms_p50,tpot_ms_p50,e2e_ms_p50\n"
                    + "".join(f"{n},64,{4 * c},{c},1,1,1,1\n" for n, c in ((512, 1), (256, 4), (1024, 16))))
    points = read_bench_points([path])
    setting = small_setting()
    truth = {**setting.values(0.0), "compute_efficiency": 0.45, "memory_efficiency": 0.6, "step_overhead_s": 8e-4,
             "client_overhead_s": 0.005}
    for point in points:
        point.measured.update(predict(point, setting, truth))
    names = ["compute_efficiency", "memory_efficiency", "step_overhead_s", "client_overhead_s"]
    result = fit(points, setting, names, setting.values(0.001))
    assert result.rms_log_error < 2e-3
    for name in names:
        assert result.values[name] == pytest.approx(truth[name], rel=0.05), name
    # figures no bandwidth can reach: the fraction stops at its bound (1), the overhead at 0
    for point in points:
        point.measured.update({m: v / 10 for m, v in point.measured.items() if m != "output_tokens_per_s"})
    faster = fit(points, setting, ["memory_efficiency", "step_overhead_s"], setting.values(0.0))
    assert (faster.values["memory_efficiency"], faster.values["step_overhead_s"]) == (1.0, 0.0)
    with pytest.raises(ConfigError, match="12 measured figures cannot determine 12 parameters"):
        fit(points, setting, names * 3, setting.values(0.001))


@pytest.mark.skipif(not PUBLISHED.exists(), reason="benchmarks/published is not in this checkout")
def test_fitted_to_low_concurrency_it_predicts_the_published_high_one():
    """vLLM 0.23 on an L4 serving Qwen2.5-0.5B (ai.wmx.dev): fitted to concurrency 1..16, the
    simulator predicts concurrency 32, which it never saw, within a few per cent, where the
    data-sheet roofline was 3-56 % off."""
    points = read_bench_points([PUBLISHED])
    assert [p.concurrency for p in points] == [1, 2, 4, 8, 16, 32]
    setting = small_setting()
    start = setting.values(0.001)
    *seen, unseen = points
    result = fit(seen, setting, ["compute_efficiency", "memory_efficiency", "step_overhead_s",
                                 "step_overhead_per_request_s", "client_overhead_s"], start)
    before, after = predict(unseen, setting, start), predict(unseen, setting, result.values)
    error = {m: after[m] / unseen.measured[m] - 1 for m in unseen.measured}
    assert abs(error["output_tokens_per_s"]) < 0.05 and abs(error["e2e_s_p50"]) < 0.05
    assert abs(error["tpot_s_p50"]) < 0.06
    for metric in ("output_tokens_per_s", "tpot_s_p50", "e2e_s_p50"):
        assert abs(error[metric]) < abs(before[metric] / unseen.measured[metric] - 1)
    assert math.isfinite(result.spread["client_overhead_s"])


def test_the_command_fits_reports_and_refuses_bad_settings(tmp_path):
    from test_cli_simulate import batchlab

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    for c, tokens, e2e in ((1, 168, 679), (4, 698, 722), (16, 2277, 880)):
        (sweep / f"c{c}.json").write_text(json.dumps(vllm_result(
            num_prompts=4 * c, completed=4 * c, max_concurrency=c, total_input_tokens=4 * c * 256,
            total_output_tokens=4 * c * 128, output_throughput=tokens, median_e2el_ms=e2e, median_ttft_ms=None,
            median_tpot_ms=None, median_itl_ms=None, duration=None)))
    run = tmp_path / "run"
    result = batchlab("calibrate", f"measurements=[{sweep}]", "model=qwen2.5-0.5b", "hardware=l4",
                      "hardware.overrides.memory_utilization=0.6", "fit=[memory_efficiency,step_overhead_s]",
                      f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr
    calibration = json.loads((run / "calibration.json").read_text())
    assert [p["label"] for p in calibration["points"]] == ["C=1 256/128", "C=16 256/128", "C=4 256/128"]  # by file name
    assert calibration["fitted"] == ["memory_efficiency", "step_overhead_s"]
    assert "client_overhead_s" not in calibration["fitted"]
    rows = calibration["rows"]
    assert len(rows) == 6 and all(row["held_out"] is not None for row in rows)
    assert calibration["median_abs_error"]["calibrated"] < calibration["median_abs_error"]["preset"]
    # the table shows what the file holds; the printed overrides are the fitted values
    first = rows[0]
    assert f"{first['measured']:,.4g}" in result.stdout and f"{first['calibrated']:,.4g}" in result.stdout
    assert (f"hardware.overrides.memory_efficiency={calibration['values']['memory_efficiency']:.4g}"
            in result.stdout)
    assert "hardware.overrides.memory_utilization=0.6" in result.stdout
    bad = batchlab("calibrate", f"measurements=[{sweep}]", "fit=[speed]", f"hydra.run.dir={tmp_path / 'bad'}")
    assert bad.returncode == 2 and "fit=['speed']: unknown parameters ['speed']" in bad.stderr
    unset = batchlab("calibrate", f"hydra.run.dir={tmp_path / 'unset'}")
    assert unset.returncode == 2 and "measurements is not set" in unset.stderr
    # simulate and plan take the fitted values (and only those) from the calibration, and say so
    small = ["model=qwen2.5-0.5b", "hardware=l4", "workload.params.num_requests=64", "schedule.names=[fcfs]",
             "report=false"]
    used = batchlab("simulate", f"calibration={run}", *small, f"hydra.run.dir={tmp_path / 'used'}")
    assert used.returncode == 0, used.stderr
    given = [f"hardware.overrides.{k}={v!r}" for k, v in calibration["fitted_hardware"].items()]
    by_hand = batchlab("simulate", *small, *given, f"hydra.run.dir={tmp_path / 'by_hand'}")
    assert by_hand.returncode == 0, by_hand.stderr
    summaries = [json.loads((tmp_path / d / "summary.json").read_text()) for d in ("used", "by_hand")]
    assert summaries[0]["schedules"]["fcfs"]["makespan_s"] == summaries[1]["schedules"]["fcfs"]["makespan_s"]
    assert summaries[0]["profile"].endswith("calibrated)") and not summaries[1]["profile"].endswith("calibrated)")
    assert summaries[0]["profile_provenance"]["calibration"]["values"] == calibration["fitted_hardware"]
    assert summaries[0]["kv_capacity_blocks"] == summaries[1]["kv_capacity_blocks"]  # the benchmark's memory_utilization stays its own
    elsewhere = batchlab("simulate", f"calibration={run}", "hardware=h100-sxm", f"hydra.run.dir={tmp_path / 'x'}")
    assert elsewhere.returncode == 2 and "holds calibrations for ['l4'], not for hardware=h100-sxm" in elsewhere.stderr
    plan = batchlab("plan", f"calibration=[{run}]", "hardware_options=[h100-sxm]", f"hydra.run.dir={tmp_path / 'p'}")
    assert plan.returncode == 2 and "calibrations for ['l4'], which the plan does not cover" in plan.stderr


def test_prefix_repetition_points_share_their_prefixes(tmp_path):
    """vLLM's prefix_repetition dataset: num_prefixes prefixes, each starting an equal share of
    the prompts. One client at a time, an LRU cache reuses all but the first of each."""
    from batchlab.records import outcome_summary
    from sim.cost_model import CostModel
    from sim.hardware import kv_capacity_blocks
    from sim.roofline import build_roofline_profile
    from sim.simulator import simulate

    path = tmp_path / "prefix.csv"
    path.write_text("input_len,output_len,num_prompts,concurrency,prefix_len,num_prefixes,output_tokens_per_s\n"
                    "640,16,16,1,512,4,100\n")
    [point] = read_bench_points([path])
    assert point.label == "C=1 640/16 (4 x prefix 512)"
    requests = point.workload().requests
    prefixes = [r.prompt[0] for r in requests]
    assert sorted(prefixes.count(p) for p in set(prefixes)) == [4, 4, 4, 4] and {p[1] for p in prefixes} == {512}
    assert {sum(n for _, n in r.prompt) for r in requests} == {640}
    assert prefixes[:4] != sorted(prefixes[:4])  # shuffled, as vLLM does
    setting = small_setting()
    cost = CostModel(build_roofline_profile(setting.model, setting.hardware), setting.model)
    outcome = simulate(point.workload(), schedule_config("fcfs"), cost,
                       kv_capacity_blocks(setting.model, setting.hardware, 16), 16)
    assert outcome_summary(outcome)["prefill_token_saving"] == pytest.approx(12 * 512 / (16 * 640))
    # from a vLLM result, through --metadata; one without the other, or shares that do not divide, refused
    record = vllm_result(prefix_len="512", num_prefixes="4", total_input_tokens=160 * 640)
    (tmp_path / "run.json").write_text(json.dumps(record))
    [point] = read_bench_points([tmp_path / "run.json"])
    assert (point.prefix_len, point.num_prefixes) == (512, 4)
    (tmp_path / "run.json").write_text(json.dumps(vllm_result(prefix_len="512", total_input_tokens=160 * 640)))
    with pytest.raises(WorkloadError, match="prefix_len and num_prefixes go together"):
        read_bench_points([tmp_path / "run.json"])
    path.write_text("input_len,output_len,num_prompts,prefix_len,num_prefixes,output_tokens_per_s\n640,16,10,512,4,1\n")
    with pytest.raises(WorkloadError, match="prefix.csv:2: 10 prompts of 640.* cannot share 4 prefixes"):
        read_bench_points([path])


def test_a_second_model_size_pins_what_one_cannot(tmp_path):
    """Bandwidth and per-step host work trade off on one model (each decode step reads the same
    weights); with a second model size on the same GPU they separate. Figures simulated with
    known values and perturbed by 1-3 %: fitted to the small model alone, the bandwidth comes
    back 12 % off; with the 7B's points too, within 3 %, and its spread shrinks."""
    path = tmp_path / "two.csv"
    path.write_text("input_len,output_len,num_prompts,concurrency,model,output_tokens_per_s,tpot_ms_p50\n"
                    + "".join(f"{n},64,{4 * c},{c},{m},1,1\n" for m in ("qwen2.5-0.5b", "qwen2.5-7b")
                              for n, c in ((512, 1), (256, 4), (1024, 16))))
    points = read_bench_points([path])
    assert points[3].label == "C=1 512/64 qwen2.5-7b"
    setting = Setting(model_spec("qwen2.5-0.5b"), hardware_spec("l4"), schedule_config("fcfs"))
    truth = {**setting.values(0.0), "memory_efficiency": 0.7, "step_overhead_s": 1e-3}
    wobble = iter([1.02, 0.98, 1.01, 0.99, 1.03, 0.97] * 2)
    for point in points:
        point.measured.update({m: v * next(wobble) for m, v in predict(point, setting, truth).items()})
    names = ["memory_efficiency", "step_overhead_s"]
    alone, both = (fit(chosen, setting, names, setting.values(0.0)) for chosen in (points[:3], points))

    def off(result, name):
        return abs(result.values[name] / truth[name] - 1)

    assert off(alone, "memory_efficiency") > 0.08 and off(alone, "step_overhead_s") > 0.2
    assert off(both, "memory_efficiency") < 0.03 and off(both, "step_overhead_s") < 0.05
    assert both.spread["memory_efficiency"] < alone.spread["memory_efficiency"] / 2
    with pytest.raises(WorkloadError, match=r"two.csv:2: model 'llama-9b' is no model preset"):
        path.write_text("input_len,output_len,num_prompts,model,output_tokens_per_s\n256,64,4,llama-9b,1\n")
        read_bench_points([path])
