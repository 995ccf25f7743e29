"""Reports built from small real run directories: numbers match the records, the HTML renders."""
import json
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from reports.build import build_report
from reports.run_records import RunRecordError, load_run
from reports.tables import COLUMNS, MEANINGS, comparison_frame, formatted_rows

from test_cli_simulate import batchlab


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    made = {}
    for name, extra in (("h100", []), ("a100", ["hardware=a100-80gb"]),
                        ("other", ["workload.params.share_degree=8"])):
        result = batchlab("simulate", "workload.params.num_requests=96", "workload.params.share_degree=4",
                          "schedule.names=[fcfs,batchllm]", "report=false", *extra, f"hydra.run.dir={base / name}")
        assert result.returncode == 0, result.stderr
        made[name] = base / name
    return made


def test_table_numbers_match_the_records(runs, tmp_path):
    run = load_run(runs["h100"])
    table = comparison_frame([run])
    requests = pd.read_parquet(runs["h100"] / "requests.parquet")
    steps = pd.read_parquet(runs["h100"] / "steps.parquet")
    for _, row in table.iterrows():
        mine = requests[requests["schedule"] == row["schedule"]]
        makespan = mine["finish_s"].max() - mine["arrival_s"].min()
        assert row["makespan_s"] == pytest.approx(makespan, rel=1e-12)
        tokens = mine["prompt_len"].sum() + mine["output_len"].sum()
        assert row["throughput_tokens_per_s"] == pytest.approx(tokens / makespan, rel=1e-12)
        ttft = (mine["first_token_s"] - mine["arrival_s"]).to_numpy()
        assert row["ttft_s_p99"] == pytest.approx(np.percentile(ttft, 99), rel=1e-12)
        assert row["peak_kv_blocks"] == steps[steps["schedule"] == row["schedule"]]["kv_blocks_used"].max()
        assert row["makespan_s"] == pytest.approx(run.summary["schedules"][row["schedule"]]["makespan_s"], rel=1e-12)
    fcfs = table.set_index("schedule").loc["fcfs", "throughput_tokens_per_s"]
    batchllm = table.set_index("schedule").loc["batchllm"]
    assert batchllm["speedup_vs_fcfs"] == pytest.approx(batchllm["throughput_tokens_per_s"] / fcfs)
    rows = formatted_rows(table)
    best_makespan = min(range(1, len(rows)), key=lambda i: table.iloc[i - 1]["makespan_s"])
    assert rows[best_makespan][1].startswith("**")


def test_report_files_and_cross_run_comparison(runs, tmp_path):
    page = build_report([runs["h100"], runs["a100"]], tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "h100-sxm" in md and "a100-80gb" in md and "roofline" in md
    assert md.count("## Workload") == 1  # same workload: one comparison
    html = page.read_text()
    assert "data:image/png;base64," in html and 'src="w1_' not in html  # self-contained
    assert len(list(tmp_path.glob("w1_*.png"))) == 6
    events = json.loads((tmp_path / "timeline.json").read_text())["traceEvents"]
    steps = [e for e in events if e.get("cat") == "step"]
    records = pd.concat([load_run(runs["h100"]).steps, load_run(runs["a100"]).steps])
    assert len(steps) == len(records)
    assert {e["ph"] for e in events if e.get("cat") == "request"} >= {"b", "e"}


def test_every_column_of_a_reports_table_is_explained_under_it(runs, tmp_path):
    page = build_report([runs["h100"]], tmp_path)
    md = (tmp_path / "report.md").read_text()
    headings = formatted_rows(comparison_frame([load_run(runs["h100"])]))[0]
    explained = [h for h in headings[1:] if "p99" not in h]  # a p99 column goes with its p50
    assert len(explained) >= 8
    for heading in explained:
        assert f"- *{heading}*: " in md
        assert f"<dt>{heading}</dt><dd>" in page.read_text()
    assert "falls below 0 where they cost more than the cache saved" in md
    # and the columns this run does not show (a host tier's share, sessions' times)
    assert {key for key, *_ in COLUMNS if not key.endswith("_p99")} == set(MEANINGS)


def test_different_workloads_are_not_compared(runs, tmp_path):
    build_report([runs["h100"], runs["other"]], tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "different workloads" in md and md.count("## Workload") == 2


def test_partial_run_directory_names_the_missing_file(runs, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(runs["h100"], partial)
    (partial / "steps.parquet").unlink()
    with pytest.raises(RunRecordError, match=r"partial: missing steps\.parquet"):
        load_run(partial)
    (partial / "steps.parquet").write_text("not parquet")
    with pytest.raises(RunRecordError, match=r"steps\.parquet: unreadable"):
        load_run(partial)
    result = batchlab("report", str(tmp_path / "nowhere"))
    assert result.returncode == 2 and "not a run directory" in result.stderr


def test_html_renders_non_blank_in_headless_chromium(runs, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it); cannot render the HTML")
    page = build_report([runs["h100"]], tmp_path)
    shot = tmp_path / "shot.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,1600",
                    f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120)
    import matplotlib.image as mpimg

    pixels = mpimg.imread(shot)[..., :3]
    assert pixels.shape[0] > 1000
    # a blank page is one colour; the report has tables, bars and curves
    assert pixels.std() > 0.05
    assert (pixels < 0.5).mean() > 0.01  # dark pixels: text and plot lines


def test_a_schedule_drawn_on_another_says_so_in_the_legend(monkeypatch, tmp_path):
    """Schedules that make the same plans draw one line (decode_first on fcfs, on the default
    workload): the legend names the one underneath, and the copy is dashed."""
    import matplotlib.pyplot as plt

    from reports import plots

    a, b = np.array([1.0, 2.0]), np.array([1.0, 3.0])
    assert plots.twins(["fcfs", "decode_first", "batchllm", "lpm"], [(a,), (a.copy(),), (b,), (a,)]) == \
        [None, "fcfs", None, "fcfs"]
    assert plots.twins(["x", "y"], [(a, a), (a, b)]) == [None, None]  # equal in one array only
    steps = pd.DataFrame({"start_s": [0.0, 1.0, 2.0], "num_tokens": [5, 6, 7]})
    legends = []

    def keep(fig, path):
        legends.append([(t.get_text(), line.get_linestyle()) for t, line in
                        zip(fig.axes[0].get_legend().get_texts(), fig.axes[0].get_lines())])
        plt.close(fig)
        return path

    monkeypatch.setattr(plots, "_save", keep)
    plots.step_series([("fcfs", steps), ("decode_first", steps.copy()), ("batchllm", steps.assign(num_tokens=[5, 6, 8]))],
                      "num_tokens", "tokens", "Tokens per step", tmp_path / "steps.png")
    assert legends == [[("fcfs", "-"), ("decode_first (= fcfs)", "--"), ("batchllm", "-")]]
