"""Columnar step records, appended per step (or per stretch of steps) and flushed to Parquet in
parts as the run goes, so an interrupted run keeps what it had done. Shared by the simulator
(predicted durations) and the engine (measured durations); the kernel columns are each
producer's own."""
from __future__ import annotations

from array import array
from itertools import repeat
from pathlib import Path

import numpy as np

from .columns import read_parquet_numeric, write_parquet

STEP_COLUMNS = ("step", "start_s", "duration_s", "num_tokens", "num_prefill_tokens", "num_decode_tokens",
                "num_requests", "num_sampled", "kv_blocks_used", "num_waiting", "num_preempted")
_FLOAT_COLUMNS = ("start_s", "duration_s")  # the other step columns are counts


class StepLog:
    def __init__(self, kernels: tuple[str, ...], flush_dir: Path | None = None, flush_every: int = 200_000) -> None:
        self.kernels = tuple(kernels)
        # typed arrays, not lists: 8 bytes a value instead of a Python object each (a
        # million-request run logs millions of steps), and a frame is a copy of their buffers
        self._columns: dict[str, array] = {
            name: array("d" if name in _FLOAT_COLUMNS else "q") for name in STEP_COLUMNS}
        self._columns.update({f"kernel_{k}_s": array("d") for k in kernels})
        # the columns themselves, for the per-step appends (flush empties them in place)
        self._step_lists = [(name, self._columns[name]) for name in STEP_COLUMNS]
        self._kernel_lists = [(name, self._columns[f"kernel_{name}_s"]) for name in self.kernels]
        self._flush_dir = flush_dir
        self._flush_every = flush_every
        self._buffered = 0
        self._parts = 0
        self.num_steps = 0

    def add_step(self, values: dict[str, float], kernels: dict[str, float]) -> None:
        """One step; a count column refuses a non-integer value (TypeError, nothing added)."""
        try:
            for name, column in self._step_lists:
                column.append(values[name])
            for name, column in self._kernel_lists:
                column.append(kernels.get(name, 0.0))
        except (TypeError, KeyError):
            self._truncate()
            raise
        self._after(1)

    def add_steps(self, values: dict[str, np.ndarray], kernels: dict[str, np.ndarray], count: int) -> None:
        try:
            for name in STEP_COLUMNS:
                _extend(name, self._columns[name], values[name], count)
            for name in self.kernels:
                _extend(name, self._columns[f"kernel_{name}_s"], kernels[name][:count], count)
        except (TypeError, KeyError, ValueError):
            self._truncate()
            raise
        self._after(count)

    def _truncate(self) -> None:
        """Drops a half-added step from the columns that took it."""
        for column in self._columns.values():
            del column[self._buffered:]

    def _after(self, count: int) -> None:
        self.num_steps += count
        self._buffered += count
        if self._flush_dir is not None and self._buffered >= self._flush_every:
            self.flush()

    def _buffer_columns(self) -> dict[str, np.ndarray]:
        return {name: np.frombuffer(values, dtype=np.float64 if values.typecode == "d" else np.int64).copy()
                for name, values in self._columns.items()}

    def frame(self):
        """The buffered steps as a pandas DataFrame."""
        import pandas as pd

        if not self._buffered:  # no rows: the columns pandas makes of empty lists, as before
            return pd.DataFrame({name: [] for name in self._columns})
        return pd.DataFrame(self._buffer_columns())

    def columns(self) -> dict[str, np.ndarray]:
        """Every step (the parts flushed so far and the buffer), one numpy array per column:
        what the run records are written from, without pandas."""
        parts = [read_parquet_numeric(p) for p in self._parts_written()]
        if not parts:
            return self._buffer_columns()
        buffered = self._buffer_columns()
        return {name: np.concatenate([part[name] for part in parts] + [buffered[name]]) for name in self._columns}

    def all_steps(self):
        """``columns`` as a pandas DataFrame."""
        import pandas as pd

        if not self._buffered and not self._parts_written():
            return self.frame()
        return pd.DataFrame(self.columns())

    def _parts_written(self) -> list[Path]:
        if self._flush_dir is None or not self._flush_dir.exists():
            return []
        return sorted(self._flush_dir.glob("part-*.parquet"))

    def flush(self) -> None:
        """Writes the buffered steps as one more part file and empties the buffer."""
        if self._flush_dir is None or self._buffered == 0:
            return
        self._flush_dir.mkdir(parents=True, exist_ok=True)
        write_parquet(self._buffer_columns(), self._flush_dir / f"part-{self._parts:05d}.parquet")
        self._parts += 1
        self._buffered = 0
        for values in self._columns.values():
            del values[:]


def _extend(name: str, column: array, values, count: int) -> None:
    if not isinstance(values, np.ndarray):  # one value for every step (a count refuses a float)
        column.extend(repeat(values, count))
        return
    if values.shape != (count,):
        values = np.broadcast_to(values, (count,))
    if column.typecode == "q":
        if values.dtype.kind not in "iub":
            raise TypeError(f"step column {name!r} counts; got {values.dtype} values")
        column.frombytes(values.astype(np.int64, copy=False).tobytes())
    else:
        column.frombytes(values.astype(np.float64, copy=False).tobytes())
