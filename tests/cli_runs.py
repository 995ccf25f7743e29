"""Running batchlab's commands as a user does, and reading what a run wrote."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def batchlab(*args, cwd=ROOT):
    """``batchlab ARGS`` in a fresh process (one torch thread), its output captured."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "batchlab.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def schedule_steps(run_dir: Path, schedule: str | None = None):
    """A run's step records (of ``schedule``; None: the run's only one), without the schedule column."""
    import pandas as pd

    steps = pd.read_parquet(Path(run_dir) / "steps.parquet")
    if schedule is not None:
        steps = steps[steps.schedule == schedule]
    return steps.drop(columns="schedule").reset_index(drop=True)
