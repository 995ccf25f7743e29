"""What every Hydra subcommand shares: where the configs are, progress on stderr, and one way
to end on bad input (a clear line, exit 2) or on Ctrl-C (records kept, exit 130)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, TypeVar

from scheduler.errors import WorkloadError

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
T = TypeVar("T")


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def guarded(name: str, run_dir: Path, work: Callable[[], T], kept: str | None = None) -> T:
    """``work()``, ending on bad input or Ctrl-C with a line that says what was kept: ``kept``,
    or by default the records of every finished schedule in ``run_dir``."""
    try:
        return work()
    except (WorkloadError, ValueError) as error:
        say(f"batchlab {name}: error: {error}")
        sys.exit(2)
    except KeyboardInterrupt:
        say(f"batchlab {name}: interrupted; " + (kept or f"the records of every finished schedule are in {run_dir} "
            f"(summary.json says complete: false; steps flushed so far are under parts/)"))
        sys.exit(130)


def workload_of(cfg, base_dir: str):
    """The composed config's workload, with output-length estimates where it asks for them."""
    from omegaconf import OmegaConf

    from traces.build import build_workload

    workload = build_workload(OmegaConf.to_container(cfg.workload, resolve=True), base_dir)
    estimate = cfg.get("output_estimate")
    if estimate is not None and estimate.get("cv"):
        from traces.estimates import with_output_estimates
        workload = with_output_estimates(workload, estimate.cv, int(estimate.get("seed", 0)))
    return workload
