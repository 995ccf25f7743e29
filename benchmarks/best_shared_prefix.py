"""The shared-prefix kernel's fastest setting in a kernel benchmark's results (bench_kernels.py's
``shared_prefix_sweep``, by device time), as the config overrides that run it:

    python benchmarks/best_shared_prefix.py benchmarks/results/kernels-shared-prefix-NVIDIA-H200-<date>.json
    kernels.shared_prefix.num_warps=4 kernels.shared_prefix.num_stages=2 ...

so that a GPU session can profile and validate the engine with it (gpu_session.sh's ``tune``
does, or ``measure $(python benchmarks/best_shared_prefix.py FILE)``) before making it the
kernel's default.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: kernels/

OPTIONS = ("num_warps", "num_stages", "prefix_blocks_per_split", "pages", "fused_merge", "prefix_first",
           "members_per_program", "fp32_partials", "merge_eager", "merge_rows", "merge_warps")


# a sweep row whose output is further than this from the per-request kernel's (largest difference
# over largest value; bf16) computes something else: bench_kernels.py ranks it last, and it is never the best
TOLERANCE = 2e-2


def best_overrides(results: dict) -> list[str]:
    """The overrides of the sweep's row with the least device time (as called where none has one)
    among those whose output matched the per-request kernel's (rows from before that check:
    taken as they are)."""
    sweep = results.get("shared_prefix_sweep")
    if not sweep:
        raise ValueError("no shared_prefix_sweep in these results (bench_kernels.py on a GPU writes one)")
    right = [row for row in sweep if row.get("relative_error", 0.0) <= TOLERANCE]
    if not right:
        raise ValueError(f"no setting of the sweep matched the per-request output to {TOLERANCE}")
    best = min(right, key=lambda row: row.get("device_ms") or row["ms"])
    value = lambda v: "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)  # noqa: E731
    return [f"kernels.shared_prefix.{name}={value(best[name])}" for name in OPTIONS if name in best]


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python benchmarks/best_shared_prefix.py benchmarks/results/kernels-<device>-<date>.json",
              file=sys.stderr)
        return 2
    try:
        print(" ".join(best_overrides(json.loads(Path(argv[0]).read_text()))))
    except (OSError, ValueError, KeyError) as error:
        print(f"best_shared_prefix: {argv[0]}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
