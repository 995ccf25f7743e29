"""Tables as numpy columns, to and from Parquet through pyarrow's buffers, without pandas.

Run records are written after every simulation, and importing pandas took longer than writing
them (0.2 s of a 3 s replay). pyarrow imports pandas as soon as it converts a numpy array
(``pa.array``, ``Array.to_numpy``), so the columns go in and out as raw buffers: int64,
float64 (NaN written as null, as pandas' ``to_parquet`` does) and strings (large_string, as
pandas 3 writes them). Readers get the same tables whichever way a file was written.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

Columns = Mapping[str, np.ndarray]  # a table, one array per column, in column order


def _arrow_array(name: str, values: np.ndarray):
    import pyarrow as pa

    count = len(values)
    if values.dtype == object:  # strings
        texts = values.tolist()
        if set(map(type, texts)) - {str}:
            raise TypeError(f"column {name!r}: objects other than strings (a None, a number?) cannot be written")
        if count and texts.count(texts[0]) == count:  # one value throughout (a run's schedule)
            one = texts[0].encode()
            offsets, data = np.arange(count + 1, dtype=np.int64) * len(one), one * count
        else:
            encoded = [text.encode() for text in texts]
            offsets = np.zeros(count + 1, dtype=np.int64)
            np.cumsum([len(e) for e in encoded], out=offsets[1:])
            data = b"".join(encoded)
        return pa.Array.from_buffers(pa.large_string(), count, [None, pa.py_buffer(offsets), pa.py_buffer(data)])
    if values.dtype.kind == "f":
        values = np.ascontiguousarray(values, dtype=np.float64)
        missing = np.isnan(values)
        validity = pa.py_buffer(np.packbits(~missing, bitorder="little")) if missing.any() else None
        return pa.Array.from_buffers(pa.float64(), count, [validity, pa.py_buffer(values)])
    if values.dtype.kind in "iub":
        return pa.Array.from_buffers(pa.int64(), count, [None, pa.py_buffer(
            np.ascontiguousarray(values, dtype=np.int64))])
    raise TypeError(f"column {name!r}: cannot write {values.dtype} values (int, float or str expected)")


def write_parquet(columns: Columns, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = [_arrow_array(name, np.asarray(values)) for name, values in columns.items()]
    # dictionary pages for the strings only: trying them on every numeric column took half the
    # time of writing a step table, for files 1 % smaller
    strings = [name for name, array in zip(columns, arrays) if array.type == pa.large_string()]
    pq.write_table(pa.Table.from_arrays(arrays, names=list(columns)), path, use_dictionary=strings)


def _numpy_column(name: str, column) -> np.ndarray:
    import pyarrow as pa

    kinds = {pa.int64(): np.int64, pa.float64(): np.float64}
    dtype = kinds.get(column.type)
    if dtype is None or column.null_count:
        raise TypeError(f"column {name!r}: {column.type} with {column.null_count} nulls; numeric columns "
                        "without nulls expected")
    pieces = [np.frombuffer(chunk.buffers()[1], dtype=dtype)[chunk.offset:chunk.offset + len(chunk)]
              for chunk in column.chunks]
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=dtype)


def read_parquet_numeric(path: Path) -> dict[str, np.ndarray]:
    """A Parquet file of int64 and float64 columns without nulls (step-log parts) as numpy."""
    table = read_parquet(path)
    return {name: _numpy_column(name, table.column(name)) for name in table.column_names}


def read_parquet(path: Path):
    """A whole Parquet file as a pyarrow Table (``ParquetFile.read``: ``pq.read_table`` imports
    pandas)."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).read()
