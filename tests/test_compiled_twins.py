"""Each compiled twin (Cython, built by ``pip install``; the Python original is its
specification and the fallback) must have been built where CI runs; its own test file holds it
to the Python one. Without a C compiler a user gets the Python ones, and this check skips."""
import os

import pytest

from scheduler._compiled import compiled

TWINS = [("BlockManager", "scheduler._native", "scheduler/_native.pyx"),
         ("ChainIndex", "scheduler._native", "scheduler/_native.pyx"),
         ("prefix_groups", "scheduler._tree", "scheduler/_tree.pyx"),
         ("Bilinear", "sim._interp", "sim/_interp.pyx")]


@pytest.mark.skipif(os.environ.get("BATCHLAB_REQUIRE_NATIVE", "") in ("", "0"),
                    reason="set BATCHLAB_REQUIRE_NATIVE=1 to require the compiled twins (CI does)")
@pytest.mark.parametrize("name, module, source", TWINS)
def test_every_compiled_twin_was_built(name, module, source):
    assert compiled(name, module) is not None, (
        f"{source} was not compiled ({name} missing): pip install printed why (a C compiler and the "
        f"Python headers are needed)")
