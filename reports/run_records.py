"""Reading run directories (what ``batchlab simulate``, and later ``batchlab run``, write)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

REQUIRED_FILES = ("summary.json", "requests.parquet", "steps.parquet")


class RunRecordError(ValueError):
    """A run directory is missing a file or holds something unreadable."""


@dataclass(frozen=True)
class RunRecords:
    path: Path
    summary: dict
    requests: pd.DataFrame
    steps: pd.DataFrame
    config_text: str

    @property
    def label(self) -> str:
        mode = self.summary.get("mode", "simulated")
        return f"{self.path.name} ({mode}, {self.summary.get('hardware', '?')})"

    @property
    def workload_key(self) -> tuple:
        """Runs are comparable when they replayed the same workload."""
        return (self.summary.get("workload"), self.summary.get("num_requests"))

    def schedules(self) -> list[str]:
        return list(self.summary.get("schedules", {}))


def load_run(path: str | Path) -> RunRecords:
    path = Path(path)
    if not path.is_dir():
        raise RunRecordError(f"{path}: not a run directory")
    missing = [name for name in REQUIRED_FILES if not (path / name).exists()]
    if missing:
        raise RunRecordError(f"{path}: missing {', '.join(missing)}; a run directory holds "
                             f"{', '.join(REQUIRED_FILES)} (is the run still going, or was it interrupted early?)")
    try:
        summary = json.loads((path / "summary.json").read_text())
    except json.JSONDecodeError as error:
        raise RunRecordError(f"{path / 'summary.json'}: not valid JSON ({error.msg}, line {error.lineno})") from None
    if not isinstance(summary, dict) or "schedules" not in summary:
        raise RunRecordError(f"{path / 'summary.json'}: expected an object with a 'schedules' entry")
    frames = {}
    for name in ("requests", "steps"):
        try:
            frames[name] = pd.read_parquet(path / f"{name}.parquet")
        except Exception as error:  # pyarrow raises several types for damaged files
            raise RunRecordError(f"{path / (name + '.parquet')}: unreadable ({error})") from None
        if "schedule" not in frames[name].columns:
            raise RunRecordError(f"{path / (name + '.parquet')}: no 'schedule' column")
    config = path / "config.yaml"
    return RunRecords(path, summary, frames["requests"], frames["steps"],
                      config.read_text() if config.exists() else "(no config.yaml)")
