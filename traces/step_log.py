"""Columnar step records, appended per step (or per stretch of steps) and flushed to Parquet in
parts as the run goes, so an interrupted run keeps what it had done. Shared by the simulator
(predicted durations) and the engine (measured durations); the kernel columns are each
producer's own."""
from __future__ import annotations

from array import array
from pathlib import Path

import numpy as np

from .columns import read_parquet_numeric, write_parquet

STEP_COLUMNS = ("step", "start_s", "duration_s", "num_tokens", "num_prefill_tokens", "num_decode_tokens",
                "num_requests", "num_sampled", "kv_blocks_used", "num_waiting", "num_preempted",
                "num_loaded_tokens")  # the last: prompt tokens loaded from a host-memory tier
_FLOAT_COLUMNS = STEP_COLUMNS[1:3]  # start_s, duration_s; the other step columns are counts


class StepLog:
    def __init__(self, kernels: tuple[str, ...], flush_dir: Path | None = None, flush_every: int = 200_000) -> None:
        self.kernels = tuple(kernels)
        self._names = STEP_COLUMNS + tuple(f"kernel_{k}_s" for k in self.kernels)
        # two typed buffers, row after row: the counts (int64) and the times (float64) of each
        # step, 8 bytes a value instead of a Python object each (a million-request run logs
        # millions of steps); a step is a few C-level extends, a column a strided copy out of one
        self._counts = array("q")  # step, then STEP_COLUMNS[3:]
        self._times = array("d")   # start_s, duration_s, then the kernels
        self._count_names = ("step",) + STEP_COLUMNS[3:]
        self._time_names = _FLOAT_COLUMNS + self._names[len(STEP_COLUMNS):]
        self._flush_dir = flush_dir
        self._flush_every = flush_every
        self._buffered = 0
        self._parts = 0
        self.num_steps = 0

    def add_step(self, values: dict[str, float], kernels: dict[str, float]) -> None:
        """One step, by column name; a kernel it does not name took no time."""
        self.add_row(tuple(values[name] for name in STEP_COLUMNS),
                     tuple(kernels.get(name, 0.0) for name in self.kernels))

    def add_row(self, values: tuple, kernels: tuple) -> None:
        """One step: ``values`` in STEP_COLUMNS order, ``kernels`` in this log's kernel order.
        A count column refuses a non-integer value (TypeError, nothing added)."""
        if len(values) != len(STEP_COLUMNS) or len(kernels) != len(self.kernels):
            raise ValueError(f"a step row has {len(STEP_COLUMNS)} values and {len(self.kernels)} kernel "
                             f"times; got {len(values)} and {len(kernels)}")
        counts, times = self._counts, self._times
        try:
            counts.append(values[0])
            counts.extend(values[3:])
            times.append(values[1])
            times.append(values[2])
            times.extend(kernels)
        except TypeError:
            self._truncate()
            raise
        self._after(1)

    def add_steps(self, values: dict[str, np.ndarray], kernels: dict[str, np.ndarray], count: int) -> None:
        """``count`` steps at once: per column an array of ``count`` values, or one value for all."""
        counts = np.empty((count, len(self._count_names)), dtype=np.int64)
        for index, name in enumerate(self._count_names):
            counts[:, index] = _counts(name, values[name], count)
        times = np.empty((count, len(self._time_names)), dtype=np.float64)
        for index, name in enumerate(_FLOAT_COLUMNS):
            times[:, index] = _per_step(values[name], count)
        for index, name in enumerate(self.kernels, len(_FLOAT_COLUMNS)):
            times[:, index] = _per_step(kernels[name], count)
        self._counts.frombytes(counts.tobytes())
        self._times.frombytes(times.tobytes())
        self._after(count)

    def _truncate(self) -> None:
        """Drops a half-added step from the buffer that took it."""
        del self._counts[self._buffered * len(self._count_names):]
        del self._times[self._buffered * len(self._time_names):]

    def _after(self, count: int) -> None:
        self.num_steps += count
        self._buffered += count
        if self._flush_dir is not None and self._buffered >= self._flush_every:
            self.flush()

    def _buffer_columns(self) -> dict[str, np.ndarray]:
        counts = np.frombuffer(self._counts, dtype=np.int64).reshape(-1, len(self._count_names))
        times = np.frombuffer(self._times, dtype=np.float64).reshape(-1, len(self._time_names))
        columns = {name: counts[:, i].copy() for i, name in enumerate(self._count_names)}
        columns.update({name: times[:, i].copy() for i, name in enumerate(self._time_names)})
        return {name: columns[name] for name in self._names}

    def frame(self):
        """The buffered steps as a pandas DataFrame."""
        import pandas as pd

        if not self._buffered:  # no rows: the columns pandas makes of empty lists, as before
            return pd.DataFrame({name: [] for name in self._names})
        return pd.DataFrame(self._buffer_columns())

    def columns(self) -> dict[str, np.ndarray]:
        """Every step (the parts flushed so far and the buffer), one numpy array per column:
        what the run records are written from, without pandas."""
        parts = [read_parquet_numeric(p) for p in self._parts_written()]
        if not parts:
            return self._buffer_columns()
        buffered = self._buffer_columns()
        return {name: np.concatenate([part[name] for part in parts] + [buffered[name]]) for name in self._names}

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
        del self._counts[:], self._times[:]


def _per_step(values, count: int):
    """``values`` (an array of at least ``count``) cut to ``count``, or one value for every step
    as it is (assigned into a column, it fills it)."""
    if isinstance(values, np.ndarray) and values.ndim:
        return values[:count]
    return values


def _counts(name: str, values, count: int):
    values = _per_step(values, count)
    dtype = values.dtype if isinstance(values, (np.ndarray, np.generic)) else np.asarray(values).dtype
    if dtype.kind not in "iub":
        raise TypeError(f"step column {name!r} counts; got {dtype} values")
    return values
