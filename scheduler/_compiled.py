"""Which compiled twins (``scheduler/_native.pyx``, ``scheduler/_tree.pyx``, ``sim/_interp.pyx``)
to use: where the module was built and ``BATCHLAB_PURE_PYTHON`` is unset (or 0), the compiled
class or function; else None (the Python one serves)."""
from __future__ import annotations

import importlib
import os


def compiled(name: str, module: str = "scheduler._native"):
    """The compiled class or function ``name`` of ``module`` (``scheduler._native``,
    ``scheduler._tree``, ``sim._interp``), or None."""
    if os.environ.get("BATCHLAB_PURE_PYTHON", "") not in ("", "0"):
        return None
    try:
        native = importlib.import_module(module)
    except ImportError:  # not built (no C compiler at install time)
        return None
    return getattr(native, name)
