"""Columnar step records, appended per step (or per stretch of steps) and flushed to Parquet in
parts as the run goes, so an interrupted run keeps what it had done. Shared by the simulator
(predicted durations) and the engine (measured durations); the kernel columns are each
producer's own."""
from __future__ import annotations

from pathlib import Path

import numpy as np

STEP_COLUMNS = ("step", "start_s", "duration_s", "num_tokens", "num_prefill_tokens", "num_decode_tokens",
                "num_requests", "num_sampled", "kv_blocks_used", "num_waiting", "num_preempted")


class StepLog:
    def __init__(self, kernels: tuple[str, ...], flush_dir: Path | None = None, flush_every: int = 200_000) -> None:
        self.kernels = tuple(kernels)
        self._columns: dict[str, list] = {name: [] for name in STEP_COLUMNS + tuple(f"kernel_{k}_s" for k in kernels)}
        # the column lists themselves, for the per-step appends (flush empties them in place)
        self._step_lists = [(name, self._columns[name]) for name in STEP_COLUMNS]
        self._kernel_lists = [(name, self._columns[f"kernel_{name}_s"]) for name in self.kernels]
        self._flush_dir = flush_dir
        self._flush_every = flush_every
        self._buffered = 0
        self._parts = 0
        self.num_steps = 0

    def add_step(self, values: dict[str, float], kernels: dict[str, float]) -> None:
        for name, column in self._step_lists:
            column.append(values[name])
        for name, column in self._kernel_lists:
            column.append(kernels.get(name, 0.0))
        self._after(1)

    def add_steps(self, values: dict[str, np.ndarray], kernels: dict[str, np.ndarray], count: int) -> None:
        for name in STEP_COLUMNS:
            self._columns[name].extend(np.broadcast_to(values[name], (count,)).tolist())
        for name in self.kernels:
            self._columns[f"kernel_{name}_s"].extend(np.broadcast_to(kernels[name][:count], (count,)).tolist())
        self._after(count)

    def _after(self, count: int) -> None:
        self.num_steps += count
        self._buffered += count
        if self._flush_dir is not None and self._buffered >= self._flush_every:
            self.flush()

    def frame(self):
        import pandas as pd

        return pd.DataFrame(self._columns)

    def all_steps(self):
        """Every step: the parts flushed so far and the buffer."""
        import pandas as pd

        parts = sorted(self._flush_dir.glob("part-*.parquet")) if self._flush_dir and self._flush_dir.exists() else []
        frames = [pd.read_parquet(p) for p in parts]
        if self._buffered or not frames:
            frames.append(self.frame())
        return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]

    def flush(self) -> None:
        """Writes the buffered steps as one more part file and empties the buffer."""
        if self._flush_dir is None or self._buffered == 0:
            return
        self._flush_dir.mkdir(parents=True, exist_ok=True)
        self.frame().to_parquet(self._flush_dir / f"part-{self._parts:05d}.parquet", index=False)
        self._parts += 1
        self._buffered = 0
        for values in self._columns.values():
            values.clear()
