# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Compiled twin of ``profile._bilinear``: a profile table's point lookup over two axes, which
the cost model calls once or twice per simulated step. The same IEEE double operations in the
same order (built with -ffp-contract=off, so no fused multiply-adds), hence the same floats;
tests/test_profile_validate.py holds the two to bit-equal answers."""
from cpython.mem cimport PyMem_Malloc, PyMem_Free


cdef Py_ssize_t _bisect_right(const double* grid, Py_ssize_t n, double x) noexcept nogil:
    # bisect.bisect_right: the first index whose value is greater than x
    cdef Py_ssize_t lo = 0, hi = n, mid
    while lo < hi:
        mid = (lo + hi) // 2
        if x < grid[mid]:
            hi = mid
        else:
            lo = mid + 1
    return lo


cdef class Bilinear:
    cdef double* _a
    cdef double* _b
    cdef double* _v   # row-major, len(grid_a) x len(grid_b)
    cdef Py_ssize_t _na, _nb

    def __cinit__(self):
        self._a = self._b = self._v = NULL

    def __init__(self, grid_a, grid_b, values):
        """Grids of at least two increasing floats each; ``values[i][j]`` at (grid_a[i], grid_b[j])."""
        cdef Py_ssize_t i, j
        self._na, self._nb = len(grid_a), len(grid_b)
        if self._na < 2 or self._nb < 2 or len(values) != self._na:
            raise ValueError("two axes of at least two points each, and a row of values per point of the first")
        self._a = <double*> PyMem_Malloc(self._na * sizeof(double))
        self._b = <double*> PyMem_Malloc(self._nb * sizeof(double))
        self._v = <double*> PyMem_Malloc(self._na * self._nb * sizeof(double))
        if self._a == NULL or self._b == NULL or self._v == NULL:
            raise MemoryError()
        for i in range(self._na):
            self._a[i] = grid_a[i]
        for j in range(self._nb):
            self._b[j] = grid_b[j]
        for i in range(self._na):
            row = values[i]
            if len(row) != self._nb:
                raise ValueError(f"row {i} has {len(row)} values; expected {self._nb}")
            for j in range(self._nb):
                self._v[i * self._nb + j] = row[j]

    def __dealloc__(self):
        PyMem_Free(self._a)
        PyMem_Free(self._b)
        PyMem_Free(self._v)

    def __call__(self, double x, double y):
        cdef Py_ssize_t i = _bisect_right(self._a, self._na, x) - 1
        cdef Py_ssize_t j = _bisect_right(self._b, self._nb, y) - 1
        cdef double low, wi, wj, a, b, v, v1
        cdef const double* row
        cdef const double* row1
        i = 0 if i < 0 else (self._na - 2 if i > self._na - 2 else i)
        low = self._a[i]
        wi = (x - low) / (self._a[i + 1] - low)
        if 0.0 > wi:
            wi = 0.0
        j = 0 if j < 0 else (self._nb - 2 if j > self._nb - 2 else j)
        low = self._b[j]
        wj = (y - low) / (self._b[j + 1] - low)
        if 0.0 > wj:
            wj = 0.0
        row = self._v + i * self._nb
        row1 = row + self._nb
        a, b = row[j], row[j + 1]
        v = b if (wj > 1.0 and b < a) else a + wj * (b - a)
        a, b = row1[j], row1[j + 1]
        v1 = b if (wj > 1.0 and b < a) else a + wj * (b - a)
        return v1 if (wi > 1.0 and v1 < v) else v + wi * (v1 - v)
