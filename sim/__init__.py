"""batchlab: sim (see ../shared/DESIGN.md)."""
