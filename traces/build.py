"""Builds a workload from a plain mapping (what the ``workload`` config group holds)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Mapping

from scheduler.errors import ConfigError

from . import loaders, native, synthetic
from .arrivals import with_arrivals
from .workload import Workload

GENERATORS = {
    "batchllm_microbenchmark": synthetic.batchllm_microbenchmark,
    "system_prompt_workload": synthetic.system_prompt_workload,
    "prefix_tree_workload": synthetic.prefix_tree_workload,
    "agent_sessions": synthetic.agent_sessions,
    "mixed_batch": synthetic.mixed_batch,
}
LOADERS = {"mooncake": loaders.load_mooncake, "azure": loaders.load_azure, "lengths": loaders.load_length_csv}


def load_file(path: str | Path) -> Workload:
    suffix = Path(path).suffix.lower()
    if suffix == ".parquet":
        return native.load_parquet(path)
    if suffix in (".jsonl", ".json"):
        return native.load_jsonl(path)
    raise ConfigError(f"workload file {path}: expected a .jsonl or .parquet file in batchlab's format")


def _path(spec: Mapping, kind: str, base_dir: str | Path | None) -> Path:
    path = spec.get("path")
    if not path or path == "???":
        raise ConfigError(f"workload kind {kind!r} needs a path (workload.path=...)")
    given = Path(path)
    path = given if given.is_absolute() or base_dir is None else Path(base_dir) / given
    if not path.exists():  # where a default path (a shared trace's) is missing, say how to give one
        from .errors import TraceError
        what = {"file": "your workload file", "prompts": "your prompts file"}.get(kind, f"your copy of the {kind} trace")
        raise TraceError(path, None, f"no such file (workload.path is {str(given)!r}; set workload.path=FILE to {what})")
    return path


def build_workload(spec: Mapping, base_dir: str | Path | None = None) -> Workload:
    kind = spec.get("kind")
    if kind in GENERATORS:
        params = dict(spec.get("params") or {})
        for key, value in params.items():  # Hydra hands over lists for tuples
            if isinstance(value, list):
                params[key] = tuple(value)
        try:
            workload = GENERATORS[kind](**params)
        except TypeError as error:
            raise ConfigError(f"workload {kind}: {error}") from None
    elif kind == "prompts":
        from .prompt_records import load_prompts

        workload, _ = load_prompts(_path(spec, kind, base_dir), spec.get("tokenizer"), spec.get("output_len"),
                                   spec.get("limit"))
    elif kind in LOADERS or kind == "file":
        path = _path(spec, kind, base_dir)
        workload = load_file(path) if kind == "file" else LOADERS[kind](path)
    else:
        raise ConfigError(f"unknown workload kind {kind!r}; expected one of "
                          f"{sorted(GENERATORS) + sorted(LOADERS) + ['file', 'prompts']}")
    limit = spec.get("limit")
    if limit is not None:
        if not isinstance(limit, int) or limit < 1:
            raise ConfigError(f"workload limit is {limit!r}; expected a positive integer")
        if kind != "prompts":  # read so many lines, a line's completions kept together
            workload = workload.head(limit)
    arrivals = dict(spec.get("arrivals") or {})
    if arrivals:
        workload = with_arrivals(workload, **arrivals)
        if workload.closed_loop is not None:
            loop = workload.closed_loop
            think = f"think{loop.think_s:g}s" + (f",cv{loop.think_cv:g}" if loop.think_cv else "")
            how = (f"{arrivals.get('process')}{arrivals.get('rate') or ''}({think})" if loop.clients is None
                   else f"closed(c{loop.clients},{think})")  # sessions arriving on their own, or a client pool
            workload = replace(workload, name=f"{workload.name}+{how}")
        elif arrivals.get("process", "trace") not in ("trace", "offline") or arrivals.get("scale", 1.0) != 1.0:
            workload = replace(workload, name=f"{workload.name}+{arrivals.get('process')}"
                                              f"{'' if arrivals.get('scale', 1.0) == 1.0 else 'x' + str(arrivals['scale'])}")
    return workload
