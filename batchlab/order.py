"""``batchlab order``: a batch's prompts file rewritten in the order a schedule admitted them.

An engine that serves requests in the order they are sent (vLLM, SGLang's default) keeps a
prefix cached only while the prompts that share it follow one another. BatchLLM (arXiv
2412.03594, §6.2.1) measured vLLM going from 6 to 13.02 on a batch merely sorted by prefix
(BatchLLM itself: 18). This command takes a run directory of ``batchlab simulate`` (or ``run``)
over your own prompts and writes the prompts file's lines, byte for byte, in the order the
chosen schedule first admitted each request (the ``admission`` column of requests.parquet), so
the engine you have gets that order. How much of the schedule's gain the order carries by itself
is a simulation of ``fcfs`` over the written file, which the command prints. A run over several
engines (``replicas=N``) gives one file an engine, its share of the split in its admission order.

The output is written whole or not at all (temporary files renamed once all are written).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np


class OrderError(Exception):
    """What is wrong, with the file or run it is about."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batchlab order",
        description="Write a batch's prompts (JSON lines) in the order a simulated schedule admitted them, to "
                    "send to an engine that serves in arrival order (vLLM, SGLang).")
    parser.add_argument("run_dir", help="a directory written by `batchlab simulate` (or `run`) over the prompts")
    parser.add_argument("output", help="the JSON-lines file to write")
    parser.add_argument("--schedule", default=None,
                        help="the schedule whose order to take (default: the run's fastest)")
    parser.add_argument("--prompts", default=None,
                        help="the prompts file to reorder, one request per non-blank line in request order "
                             "(default: the run's workload.path when it ran workload=prompts)")
    return parser


def _load_run(run_dir: Path) -> tuple[dict, dict, dict]:
    import yaml

    from traces.columns import read_parquet

    for name in ("config.yaml", "summary.json", "requests.parquet"):
        if not (run_dir / name).is_file():
            raise OrderError(f"{run_dir}: no {name}; expected a run directory of batchlab simulate or run")
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    summary = json.loads((run_dir / "summary.json").read_text())
    table = read_parquet(run_dir / "requests.parquet")
    return config, summary, {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


def _schedule(summary: dict, requested: str | None, run_dir: Path) -> str:
    schedules = summary.get("schedules") or {}
    if not schedules:
        raise OrderError(f"{run_dir / 'summary.json'}: no schedule finished in this run")
    if requested is None:
        return min(schedules, key=lambda name: schedules[name]["makespan_s"])
    if requested not in schedules:
        raise OrderError(f"{run_dir}: schedule {requested!r} is not in this run; it has {sorted(schedules)}")
    return requested


def admission_orders(requests: dict, schedule: str, run_dir: Path) -> dict[int, np.ndarray]:
    """Each engine's request ids under ``schedule`` in the order it first admitted them (by
    replica, 1, 2, ...; 0 for a run of one engine); refuses runs whose order is not a batch's
    (arrivals over time, requests never admitted)."""
    if "admission" not in requests:
        raise OrderError(f"{run_dir / 'requests.parquet'}: no admission column (written by an older batchlab); "
                         f"simulate again")
    rows = np.asarray(requests["schedule"]) == schedule
    arrivals = np.asarray(requests["arrival_s"], dtype=np.float64)[rows]
    if len(arrivals) and arrivals.max() > arrivals.min():
        raise OrderError(f"{run_dir}: the requests arrive over {arrivals.max() - arrivals.min():,.1f} s; an order is "
                         f"for a batch sent at once (simulate with workload.arrivals.process=offline)")
    req_ids = np.asarray(requests["req_id"], dtype=np.int64)[rows]
    admission = np.asarray(requests["admission"], dtype=np.int64)[rows]
    missing = int((admission < 0).sum())
    if missing:
        raise OrderError(f"{run_dir}: {missing:,} of {len(req_ids):,} requests were never admitted under "
                         f"{schedule} (an interrupted run?); simulate the whole batch")
    if not np.array_equal(np.sort(req_ids), np.arange(len(req_ids))):
        raise OrderError(f"{run_dir}: request ids of {schedule} are not 0..{len(req_ids) - 1}")
    replica = np.asarray(requests["replica"], dtype=np.int64)[rows] if "replica" in requests \
        else np.zeros(len(req_ids), dtype=np.int64)
    orders = {}
    for engine in np.unique(replica):
        mine = replica == engine
        orders[int(engine)] = req_ids[mine][np.argsort(admission[mine], kind="stable")]
    return orders


def _prompts_path(config: dict, given: str | None, run_dir: Path) -> Path:
    workload = config.get("workload") or {}
    if given is not None:
        return Path(given)
    if workload.get("kind") != "prompts":
        raise OrderError(f"{run_dir}: the run's workload is {workload.get('kind')!r}, not a prompts file; give "
                         f"--prompts FILE (the JSON lines its requests came from, one a line, in request order)")
    return Path(workload["path"])


def _check_unchanged(summary: dict, path: Path) -> None:
    """The run's own workload file must be as the run read it (size and modification time)."""
    seen = summary.get("workload_file")
    if not seen or not path.is_file() or str(path.resolve()) != seen["path"]:
        return
    stat = path.stat()
    if (stat.st_size, stat.st_mtime_ns) != (seen["bytes"], seen["mtime_ns"]):
        raise OrderError(f"{path}: changed since the run read it ({seen['bytes']:,} bytes then, {stat.st_size:,} "
                         f"now, or a newer modification time); simulate it again")


def _lines(path: Path) -> list[bytes]:
    """The non-blank lines of ``path`` (request i is the i-th, as the prompts loader counts)."""
    if not path.is_file():
        raise OrderError(f"{path}: no such file")
    with path.open("rb") as handle:
        lines = [line if line.endswith(b"\n") else line + b"\n" for line in handle if line.strip()]
    return lines


def request_counts(lines: list[bytes], path: Path, samples: int = 1) -> np.ndarray:
    """The requests each line became: its ``n`` (completions; 1 where absent), times the run's
    ``samples.n``."""
    import json

    from traces.errors import TraceError
    from traces.prompt_records import line_samples, record_scopes

    counts = np.full(len(lines), samples, dtype=np.int64)
    for index, line in enumerate(lines):
        if b'"n"' in line:  # the few lines that may carry one are parsed, as the prompts loader reads them
            where = f"line {index + 1} of its non-blank lines"
            try:
                record = json.loads(line)
            except ValueError as error:
                raise OrderError(f"{path}, {where}: not JSON ({error})") from None
            try:
                counts[index] *= line_samples(record_scopes(record), path, None)
            except TraceError as error:
                raise OrderError(f"{error} ({where})") from None
    return counts


def line_orders(orders: dict[int, np.ndarray], requests_of: np.ndarray) -> dict[int, np.ndarray]:
    """Each engine's order of requests as an order of the lines they came from (a line's
    completions adjacent requests, numbered in line order): each line where the first of its
    requests was admitted. The completions of a line split over engines are refused."""
    if (requests_of == 1).all():
        return orders
    line_of = np.repeat(np.arange(len(requests_of)), requests_of)
    lines, seen = {}, np.full(len(requests_of), -1, dtype=np.int64)
    for engine, order in orders.items():
        mapped = line_of[order]
        first = np.sort(np.unique(mapped, return_index=True)[1])
        lines[engine] = mapped[first]
        clash = seen[lines[engine]] >= 0
        if clash.any():
            raise OrderError(f"line {int(lines[engine][clash][0]) + 1}'s completions went to several engines; split "
                             f"the batch by prefix (sharding=prefix), which keeps a prompt's completions on one engine")
        seen[lines[engine]] = engine
    return lines


def output_paths(output: Path, engines: list[int]) -> dict[int, Path]:
    """``output`` for one engine; ``NAME.replicaK.SUFFIX`` beside it for each of several."""
    if engines == [0]:
        return {0: output}
    return {k: output.with_name(f"{output.stem}.replica{k}{output.suffix}") for k in engines}


def write_orders(lines: list[bytes], orders: dict[int, np.ndarray], paths: dict[int, Path]) -> None:
    """Every file written in full before any is renamed into place: all or none."""
    partials = {k: path.with_name(f".{path.name}.partial") for k, path in paths.items()}
    try:
        for k, partial in partials.items():
            with partial.open("wb") as handle:
                handle.writelines(lines[i] for i in orders[k])
        for k, partial in partials.items():
            os.replace(partial, paths[k])
    finally:
        for partial in partials.values():
            partial.unlink(missing_ok=True)


def order_main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    run_dir = Path(args.run_dir)
    try:
        config, summary, requests = _load_run(run_dir)
        schedule = _schedule(summary, args.schedule, run_dir)
        orders = admission_orders(requests, schedule, run_dir)
        path = _prompts_path(config, args.prompts, run_dir)
        paths = output_paths(Path(args.output), sorted(orders))
        for output in paths.values():
            if output.exists() and path.exists() and output.resolve() == path.resolve():
                raise OrderError(f"{output}: that is the prompts file itself; write the order to another file")
        _check_unchanged(summary, path)
        lines = _lines(path)
        requests_of = request_counts(lines, path, (config.get("samples") or {}).get("n", 1))
        simulated = sum(map(len, orders.values()))
        if int(requests_of.sum()) != simulated:
            limit = (config.get("workload") or {}).get("limit")
            raise OrderError(f"{path}: {len(lines):,} prompts" + (f" ({int(requests_of.sum()):,} requests with their "
                             f"completions)" if len(lines) != requests_of.sum() else "")
                             + f", but the run simulated {simulated:,}"
                             + (f" (workload.limit={limit})" if limit else "")
                             + "; simulate the whole file")
        orders = line_orders(orders, requests_of)
        count = len(lines)
        write_orders(lines, orders, paths)
    except OrderError as error:
        print(f"batchlab order: error: {error}", file=sys.stderr)
        return 2
    entry = summary["schedules"][schedule]
    done = f"{schedule} simulated {entry['makespan_s']:,.1f} s, prefill saved {entry['prefill_token_saving']:.3f}"
    if list(paths) == [0]:
        moved = int((orders[0] != np.arange(count)).sum())
        print(f"wrote {count:,} prompts to {paths[0]} in {schedule}'s admission order ({moved:,} moved; {done})")
        print(f"what an engine serving in arrival order makes of it: {follow_up(config, paths[0])}")
        return 0
    print(f"wrote {count:,} prompts for {len(paths)} engines in {schedule}'s split and admission order ({done}):")
    for k, output in paths.items():
        print(f"  engine {k}: {len(orders[k]):,} prompts, {output}")
    print(f"what engine k serving in arrival order makes of its file: {follow_up(config, paths[min(paths)])} "
          f"(each file in turn; the batch takes as long as the slowest)")
    return 0


def follow_up(config: dict, output: Path) -> str:
    """The simulate command that runs fcfs over ``output`` as the run ran its workload."""
    workload = config.get("workload") or {}
    words = ["batchlab simulate workload=prompts", f"workload.path={output}"]
    if workload.get("tokenizer"):
        words.append(f"workload.tokenizer={workload['tokenizer']}")
    if workload.get("output_len"):
        words.append(f"workload.output_len={workload['output_len']}")
    samples = config.get("samples") or {}
    for key, plain in (("n", 1), ("output_cv", 0.0), ("seed", 0)):
        if samples.get(key, plain) != plain:
            words.append(f"samples.{key}={samples[key]}")
    for group in ("model", "hardware"):
        preset = (config.get(group) or {}).get("preset")
        if preset:
            words.append(f"{group}={preset}")
        for key, value in ((config.get(group) or {}).get("overrides") or {}).items():
            words.append(f"{group}.overrides.{key}={value}")
    return " ".join(words + ["schedule.names=[fcfs]"])
