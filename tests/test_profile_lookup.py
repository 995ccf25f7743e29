"""The profile tables' two-axis point lookup has a compiled twin (sim/_interp.pyx): it must
give the Python lookup's floats bit for bit, or simulated step times (and every record after
them) would depend on whether a C compiler was present at install time."""
import math
import random

import pytest
from hypothesis import given, settings, strategies as st

from scheduler._compiled import compiled
from sim.profile import _bilinear

NATIVE = compiled("Bilinear", "sim._interp")
needs_native = pytest.mark.skipif(NATIVE is None, reason="sim/_interp.pyx not compiled here")


@needs_native
@settings(max_examples=200, deadline=None)
@given(a=st.lists(st.floats(0.5, 1e6), min_size=2, max_size=12, unique=True),
       b=st.lists(st.floats(0.5, 1e7), min_size=2, max_size=12, unique=True),
       seed=st.integers(0, 2**32 - 1))
def test_compiled_bilinear_gives_the_same_floats(a, b, seed):
    """Random grids and tables (rising, falling, flat), points inside, on, below and past the
    grids (extrapolation up, clamped down), ints and floats: equal to the last bit."""
    grid_a, grid_b = sorted(a), sorted(b)
    rng = random.Random(seed)
    values = [[rng.choice([rng.random() * 1e-3, 0.0, 5e-4]) for _ in grid_b] for _ in grid_a]
    python, native = _bilinear(grid_a, grid_b, values), NATIVE(grid_a, grid_b, values)
    points = [(x, y) for x in grid_a[:3] for y in grid_b[:3]]
    points += [(rng.uniform(0, 2 * grid_a[-1]), rng.uniform(0, 2 * grid_b[-1])) for _ in range(40)]
    points += [(rng.randrange(1, 4096), rng.randrange(1, 1 << 21)) for _ in range(20)]
    points += [(0.0, -1.0), (grid_a[-1] * 3, grid_b[-1] * 5), (math.inf, 1.0)]
    for x, y in points:
        expected, got = python(x, y), native(x, y)
        assert (math.isnan(expected) and math.isnan(got)) or got.hex() == expected.hex(), (x, y)


@needs_native
def test_compiled_bilinear_refuses_tables_it_cannot_hold():
    with pytest.raises(ValueError):
        NATIVE([1.0], [1.0, 2.0], [[1.0, 2.0]])
    with pytest.raises(ValueError):
        NATIVE([1.0, 2.0], [1.0, 2.0], [[1.0, 2.0], [3.0]])
