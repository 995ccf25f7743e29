"""``batchlab report``: report.md (+ PNGs), a self-contained report.html and timeline.json,
built from run directories alone."""
from __future__ import annotations

import base64
import html
from pathlib import Path

from batchlab import __version__

from . import plots
from .run_records import RunRecords, load_run
from .tables import column_legend, comparison_frame, formatted_rows
from .timeline import write_timeline


def _group_by_workload(runs: list[RunRecords]) -> list[list[RunRecords]]:
    groups: dict[tuple, list[RunRecords]] = {}
    for run in runs:
        groups.setdefault(run.workload_key, []).append(run)
    return list(groups.values())


def _markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(lines)


def _html_table(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = []
    for row in rows[1:]:
        cells = []
        for cell in row:
            best = cell.startswith("**") and cell.endswith("**") and len(cell) > 4
            text = html.escape(cell[2:-2] if best else cell)
            cells.append(f'<td class="best">{text}</td>' if best else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _provenance(run: RunRecords) -> list[str]:
    s = run.summary
    profile = s.get("profile_provenance", {})
    lines = [f"run directory: {run.path}", f"mode: {s.get('mode', 'simulated')}",
             f"workload: {s.get('workload')} ({s.get('num_requests')} requests; source {s.get('workload_source')})",
             f"model: {s.get('model')}; hardware: {s.get('hardware')}",
             f"profile: {s.get('profile')} — kind **{s.get('profile_kind')}**"
             + (", an analytic roofline, not a measurement" if s.get("profile_kind") == "roofline" else ""),
             f"profile source: {', '.join(f'{k}={v}' for k, v in sorted(profile.items())) or 'n/a'}",
             f"KV capacity: {s.get('kv_capacity_blocks')} blocks of {s.get('block_size')} tokens",
             f"batchlab version of the run: {s.get('batchlab_version')}; of this report: {__version__}"]
    lines += [f"note: {note}" for note in s.get("workload_notes", [])]
    return lines


def build_report(run_dirs: list[str | Path], out_dir: str | Path) -> Path:
    runs = [load_run(d) for d in run_dirs]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = ["# batchlab report", ""]
    body = ["<h1>batchlab report</h1>"]
    groups = _group_by_workload(runs)
    if len(groups) > 1:
        text = ("These runs replayed different workloads; each workload gets its own section and "
                "no numbers are compared across sections.")
        md += [f"> {text}", ""]
        body.append(f'<p class="warn">{html.escape(text)}</p>')
    for index, group in enumerate(groups, 1):
        table = comparison_frame(group)
        rows = formatted_rows(table)
        workload = group[0].summary.get("workload")
        legend = column_legend(table)
        md += [f"## Workload {index}: {workload}", "", _markdown_table(rows), "",
               "Best value per column in **bold**; speedup is over fcfs of the same run.", ""]
        md += [f"- *{heading}*: {meaning}" for heading, meaning in legend] + [""]
        body += [f"<h2>Workload {index}: {html.escape(str(workload))}</h2>", _html_table(rows),
                 "<p>Best value per column highlighted; speedup is over fcfs of the same run.</p>",
                 "<dl class='legend'>" + "".join(f"<dt>{html.escape(h)}</dt><dd>{html.escape(m)}</dd>"
                                                 for h, m in legend) + "</dl>"]
        multi = table["run"].nunique() > 1
        series = [(plots._series_name(run.path.name, s, multi), run, s) for run in group for s in run.schedules()]
        req_groups = [(n, r.requests[r.requests["schedule"] == s]) for n, r, s in series]
        step_groups = [(n, r.steps[r.steps["schedule"] == s]) for n, r, s in series]
        figures = [
            ("Throughput", plots.throughput_bars(table, out_dir / f"w{index}_throughput.png")),
            ("Latency CDFs", plots.latency_cdfs(req_groups, out_dir / f"w{index}_latency_cdfs.png")),
            ("Tokens per step", plots.step_series(step_groups, "num_tokens", "tokens in the step",
                                                  "Tokens per step (valleys = under-filled batches)",
                                                  out_dir / f"w{index}_tokens_per_step.png")),
            ("KV blocks in use", plots.step_series(step_groups, "kv_blocks_used", "KV blocks in use",
                                                   "KV cache occupancy", out_dir / f"w{index}_kv_blocks.png")),
            ("Prefill tokens", plots.prefill_bars(table, out_dir / f"w{index}_prefill_tokens.png")),
            ("Request lifetimes", plots.request_lifetimes(req_groups, out_dir / f"w{index}_lifetimes.png")),
        ]
        for title, path in figures:
            md += [f"### {title}", "", f"![{title}]({path.name})", ""]
            data = base64.b64encode(path.read_bytes()).decode()
            body.append(f'<h3>{html.escape(title)}</h3><img alt="{html.escape(title)}" src="data:image/png;base64,{data}">')
    md += ["## Provenance", ""]
    body.append("<h2>Provenance</h2>")
    for run in runs:
        lines = _provenance(run)
        md += [f"- {line}" for line in lines] + ["", "```yaml", run.config_text.strip(), "```", ""]
        body.append("<ul>" + "".join(f"<li>{html.escape(line).replace('**', '')}</li>" for line in lines) + "</ul>")
        body.append(f"<details><summary>config of {html.escape(run.path.name)}</summary>"
                    f"<pre>{html.escape(run.config_text)}</pre></details>")
    write_timeline(runs, out_dir / "timeline.json")
    md += ["Step and request timeline: `timeline.json` (Chrome trace format; open in https://ui.perfetto.dev)."]
    (out_dir / "report.md").write_text("\n".join(md) + "\n")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:4px 8px;"
             "text-align:right}td:first-child,th:first-child{text-align:left}td.best{background:#d7f5d7;"
             "font-weight:bold}img{max-width:100%}.legend{font-size:13px}.legend dt{font-weight:bold}"
             ".legend dd{margin:0 0 4px 16px}.warn{background:#fff3cd;padding:8px}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>batchlab report</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")
    (out_dir / "report.html").write_text(page)
    return out_dir / "report.html"
