"""Errors for workload files: always the file, the line and what was expected."""
from __future__ import annotations

from scheduler.errors import WorkloadError


class TraceError(WorkloadError):
    def __init__(self, path: object, line: int | None, message: str) -> None:
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {message}")
        self.path = path
        self.line = line


def json_lines(path):
    """(line number, parsed object) for each non-blank line of a JSON-lines file; a missing
    file or a malformed line is a ``TraceError`` naming the file and line."""
    import json
    from pathlib import Path

    path = Path(path)
    if not path.exists():
        raise TraceError(path, None, "no such file")
    with path.open("r", encoding="utf-8") as handle:
        for line, text in enumerate(handle, 1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as error:
                raise TraceError(path, line, f"malformed JSON ({error.msg} at column {error.colno})") from None
            if not isinstance(record, dict):
                raise TraceError(path, line, "expected a JSON object")
            yield line, record
