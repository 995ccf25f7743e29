"""batchlab: traces (see ../shared/DESIGN.md)."""
