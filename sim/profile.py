"""Profiles: per-kernel time tables over shape grids, interpolated.

A profile is what the cost model reads; where it came from (measured on a device by
``batchlab profile``, or generated from a roofline) is recorded in ``kind`` and ``provenance``
and reported with every result. Lookups interpolate linearly between grid points and
extrapolate linearly past the last one (below the first point the first value holds). A
cost never shrinks by extrapolation: where the last segment slopes down (measurement noise),
the last value holds instead, so a lookup is never below the smallest value in its table.
"""
from __future__ import annotations

import json
from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scheduler._compiled import compiled
from scheduler.errors import ConfigError

# kernel name -> axis names. Layer kernels are per layer; the rest per step.
KERNEL_AXES: dict[str, tuple[str, ...]] = {
    "linear_qkv": ("tokens",),
    "linear_o": ("tokens",),
    "mlp": ("tokens",),
    "elementwise": ("tokens",),              # norms, RoPE, residual adds, KV-cache store
    "attn_prefill": ("query_tokens", "context"),
    "attn_decode": ("batch", "mean_context"),
    "attn_shared_prefix": ("queries", "prefix_len"),
    "lm_head_sampling": ("sampled",),
    "step_overhead": ("requests",),
}
# optional per-step tables; absent, they cost nothing (roofline and older measured profiles)
OPTIONAL_KERNEL_AXES: dict[str, tuple[str, ...]] = {
    # host work of a step's prompt chunks beyond what as many decodes cost (step_overhead)
    "prefill_overhead": ("prefill_chunks", "prefill_tokens"),
    # a host-memory KV tier's copies (measured, engine/profile_host.py; or the roofline's): loads,
    # stores, and loads of another machine's blocks (roofline only); a tier needs the first two
    "host_kv_copy": ("tokens",), "host_kv_store": ("tokens",), "host_kv_remote_copy": ("tokens",),
    # per layer: a prompt chunk's attention after a step's first (measured profiles: on a CPU
    # the chunks after the first run warm); absent, every chunk costs attn_prefill
    "attn_prefill_warm": ("query_tokens", "context"),
}
# "schedule_overhead_<schedule>": that schedule's scheduler work per step beyond what
# step_overhead holds (fcfs's), e.g. finding the shared-prefix groups of a step's decodes
SCHEDULE_OVERHEAD = "schedule_overhead_"
SCHEDULE_OVERHEAD_AXES = ("requests",)


def table_axes(name: str) -> tuple[str, ...] | None:
    """The axes a kernel table of this name must have (None: a name this version ignores)."""
    if name.startswith(SCHEDULE_OVERHEAD):
        return SCHEDULE_OVERHEAD_AXES
    return KERNEL_AXES.get(name) or OPTIONAL_KERNEL_AXES.get(name)


LAYER_KERNELS = ("linear_qkv", "linear_o", "mlp", "elementwise", "attn_prefill", "attn_decode",
                 "attn_shared_prefix")
PROFILE_KINDS = ("measured", "roofline", "constant")


def _interp_axis(grid: np.ndarray, x: np.ndarray):
    index = np.clip(np.searchsorted(grid, x, side="right") - 1, 0, max(len(grid) - 2, 0))
    if len(grid) == 1:
        return index, np.zeros_like(x, dtype=float)
    low, high = grid[index], grid[index + 1]
    weight = np.maximum((x - low) / (high - low), 0.0)
    return index, weight


def _lerp(a: float, b: float, w: float) -> float:
    if w > 1.0 and b < a:  # no downward extrapolation past the grid
        return b
    return a + w * (b - a)


def _lerp_array(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    return np.where((w > 1.0) & (b < a), b, a + w * (b - a))


def _scalar_axis(grid: list[float], x: float) -> tuple[int, float]:
    index = min(max(bisect_right(grid, x) - 1, 0), max(len(grid) - 2, 0))
    if len(grid) == 1:
        return index, 0.0
    low = grid[index]
    return index, max((x - low) / (grid[index + 1] - low), 0.0)


def _point_lookup(grids: tuple[list[float], ...], values: list):
    if len(grids) == 1:
        (grid,) = grids
        if len(grid) == 1:
            only = values[0]
            return lambda x: only
        return lambda x: _lerp_at(grid, values, x)
    grid_a, grid_b = grids
    if len(grid_a) == 1 or len(grid_b) == 1:
        def general(x: float, y: float) -> float:
            i, wi = _scalar_axis(grid_a, x)
            j, wj = _scalar_axis(grid_b, y)
            i1 = min(i + 1, len(grid_a) - 1)
            j1 = min(j + 1, len(grid_b) - 1)
            row, row1 = values[i], values[i1]
            return _lerp(_lerp(row[j], row[j1], wj), _lerp(row1[j], row1[j1], wj), wi)
        return general
    native = compiled("Bilinear", "sim._interp")
    return native(grid_a, grid_b, values) if native is not None else _bilinear(grid_a, grid_b, values)


def _bilinear(grid_a: list[float], grid_b: list[float], values: list):
    """Bilinear interpolation over two axes of at least two points each (``_scalar_axis`` and
    ``_lerp`` inlined): the specification of its compiled twin, ``sim/_interp.pyx``."""
    last_a, last_b = len(grid_a) - 2, len(grid_b) - 2

    def bilinear(x: float, y: float) -> float:
        i = bisect_right(grid_a, x) - 1
        i = 0 if i < 0 else (last_a if i > last_a else i)
        low = grid_a[i]
        wi = (x - low) / (grid_a[i + 1] - low)
        if 0.0 > wi:  # max(wi, 0.0)
            wi = 0.0
        j = bisect_right(grid_b, y) - 1
        j = 0 if j < 0 else (last_b if j > last_b else j)
        low = grid_b[j]
        wj = (y - low) / (grid_b[j + 1] - low)
        if 0.0 > wj:
            wj = 0.0
        row, row1 = values[i], values[i + 1]
        a, b = row[j], row[j + 1]
        v = b if (wj > 1.0 and b < a) else a + wj * (b - a)
        a, b = row1[j], row1[j + 1]
        v1 = b if (wj > 1.0 and b < a) else a + wj * (b - a)
        return v1 if (wi > 1.0 and v1 < v) else v + wi * (v1 - v)
    return bilinear


def _lerp_at(grid: list[float], values: list[float], x: float) -> float:
    i, w = _scalar_axis(grid, x)
    return _lerp(values[i], values[i + 1], w)


@dataclass(frozen=True)
class Table:
    axes: tuple[str, ...]
    grids: tuple[np.ndarray, ...]
    values: np.ndarray  # seconds, shape = grid lengths

    def __post_init__(self) -> None:
        if len(self.axes) != len(self.grids) or self.values.shape != tuple(len(g) for g in self.grids):
            raise ConfigError(f"profile table {self.axes}: grid shapes {[len(g) for g in self.grids]} "
                              f"do not match values {self.values.shape}")
        for axis, grid in zip(self.axes, self.grids):
            if len(grid) == 0 or np.any(np.diff(grid) <= 0):
                raise ConfigError(f"profile table axis {axis!r}: grid must be non-empty and increasing")
        bad = ~np.isfinite(self.values) | (self.values < 0)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            at = ", ".join(f"{axis}={grid[i]:g}" for axis, grid, i in zip(self.axes, self.grids, where))
            raise ConfigError(f"profile table {self.axes}: time at {at} is {float(self.values[where])!r}; "
                              f"expected finite, non-negative seconds")

    def scalar(self, *coords: float) -> float:
        """The same interpolation for one point, in plain Python (no numpy call overhead)."""
        return self.point_lookup()(*coords)

    def point_lookup(self):
        """``scalar`` as a function of the coordinates, specialised to this table once (the
        cost model calls it per step): the same arithmetic as ``_scalar_axis`` and ``_lerp``,
        inlined, so the same floats."""
        cached = self.__dict__.get("_point_lookup")
        if cached is None:
            cached = _point_lookup(tuple(g.tolist() for g in self.grids), self.values.tolist())
            object.__setattr__(self, "_point_lookup", cached)
        return cached

    def __call__(self, *coords) -> np.ndarray:
        """Vectorised lookup; each coordinate is a scalar or an array (broadcast together)."""
        points = np.broadcast_arrays(*[np.asarray(c, dtype=float) for c in coords])
        if len(points) == 1:
            index, weight = _interp_axis(self.grids[0], points[0])
            v = self.values
            if len(v) == 1:
                return np.broadcast_to(v[0], points[0].shape).astype(float)
            return _lerp_array(v[index], v[index + 1], weight)
        (i, wi), (j, wj) = (_interp_axis(self.grids[0], points[0]), _interp_axis(self.grids[1], points[1]))
        v = self.values
        i1 = np.minimum(i + 1, v.shape[0] - 1)
        j1 = np.minimum(j + 1, v.shape[1] - 1)
        return _lerp_array(_lerp_array(v[i, j], v[i, j1], wj), _lerp_array(v[i1, j], v[i1, j1], wj), wi)


@dataclass(frozen=True)
class Profile:
    kind: str                        # measured | roofline | constant
    model: str                       # model preset or config name the profile is for
    dtype: str
    tables: dict[str, Table]
    provenance: dict = field(default_factory=dict)  # device, backend, versions, date, source

    def __post_init__(self) -> None:
        if self.kind not in PROFILE_KINDS:
            raise ConfigError(f"profile kind {self.kind!r}; expected one of {PROFILE_KINDS}")
        missing = set(KERNEL_AXES) - set(self.tables)
        if missing:
            raise ConfigError(f"profile for {self.model!r} lacks kernel table(s) {sorted(missing)}")
        for name, table in self.tables.items():
            expected = table_axes(name)
            if expected is not None and table.axes != expected:
                raise ConfigError(f"profile table {name!r} has axes {table.axes}; expected {expected}")

    @property
    def label(self) -> str:
        source = self.provenance.get("device") or self.provenance.get("hardware") or "?"
        calibrated = ", calibrated" if "calibration" in self.provenance else ""
        overlapped = ", steps overlapped" if self.provenance.get("step_overlap") else ""
        return f"{self.kind} ({source}, {self.model}, {self.dtype}{calibrated}{overlapped})"

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {}
        for name, table in self.tables.items():
            arrays[f"{name}.values"] = table.values
            for axis, grid in zip(table.axes, table.grids):
                arrays[f"{name}.grid.{axis}"] = grid
        np.savez(directory / "tables.npz", **arrays)
        meta = {"kind": self.kind, "model": self.model, "dtype": self.dtype, "provenance": self.provenance,
                "axes": {name: list(table.axes) for name, table in self.tables.items()}}
        (directory / "profile.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "Profile":
        directory = Path(directory)
        for required in ("profile.json", "tables.npz"):
            if not (directory / required).exists():
                raise ConfigError(f"profile directory {directory}: missing {required}")
        try:
            meta = json.loads((directory / "profile.json").read_text())
            tables = {}
            with np.load(directory / "tables.npz") as arrays:
                for name, axes in meta["axes"].items():
                    try:
                        tables[name] = Table(tuple(axes), tuple(arrays[f"{name}.grid.{a}"] for a in axes),
                                             arrays[f"{name}.values"])
                    except (ConfigError, KeyError) as error:
                        raise ConfigError(f"profile directory {directory}: kernel {name!r}: {error}") from None
            return cls(meta["kind"], meta["model"], meta["dtype"], tables, meta.get("provenance", {}))
        except (json.JSONDecodeError, KeyError) as error:
            raise ConfigError(f"profile directory {directory}: profile.json is malformed ({error})") from None


def constant_profile(seconds_per_token: float = 0.0, step_s: float = 1.0, model: str = "any") -> Profile:
    """For exact-timeline tests: every step costs ``step_s`` plus ``seconds_per_token`` per token
    (charged through the per-layer ``elementwise`` kernel of a one-layer model)."""
    zero = lambda axes: Table(axes, tuple(np.array([0.0, 1.0]) for _ in axes), np.zeros((2,) * len(axes)))
    tables = {name: zero(axes) for name, axes in KERNEL_AXES.items()}
    tables["elementwise"] = Table(("tokens",), (np.array([0.0, 1.0]),), np.array([0.0, seconds_per_token]))
    tables["step_overhead"] = Table(("requests",), (np.array([0.0]),), np.array([step_s]))
    return Profile("constant", model, "any", tables, {"hardware": "constant"})
