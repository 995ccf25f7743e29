"""``batchlab simulate`` run as a user runs it, for the benchmarks that read its run records back
(hydragen_samples.py, sglang_admission.py)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_simulate(args, run_dir: Path) -> Path:
    """``batchlab simulate ARGS`` (one torch thread, no report, no progress lines) into
    ``run_dir``; exits with the command and its error where it fails."""
    command = [sys.executable, "-m", "batchlab.cli", "simulate", *args, "report=false", "progress=false",
               f"hydra.run.dir={run_dir}"]
    result = subprocess.run(command, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True,
                            text=True)
    if result.returncode:
        raise SystemExit(f"{' '.join(map(str, command))} failed:\n{result.stderr[-2000:]}")
    return Path(run_dir)
