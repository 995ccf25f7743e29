"""A measured profile written as the simulator loads it (``sim/profile.py``'s ``Profile.load``):
``tables.npz`` (each table's values and grid per axis) and ``profile.json`` (kind, model, dtype,
provenance, each table's axes)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def write_profile(directory: str | Path, tables: dict[str, tuple], model: str, dtype: str,
                  provenance: dict) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for name, (axes, grids, values) in tables.items():
        arrays[f"{name}.values"] = values
        for axis, grid in zip(axes, grids):
            arrays[f"{name}.grid.{axis}"] = grid
    np.savez(directory / "tables.npz", **arrays)
    meta = {"kind": "measured", "model": model, "dtype": dtype, "provenance": provenance,
            "axes": {name: list(axes) for name, (axes, _, _) in tables.items()}}
    (directory / "profile.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    return directory
