"""batchlab: kernels (see ../shared/DESIGN.md)."""
