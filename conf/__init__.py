"""batchlab: conf (see ../shared/DESIGN.md)."""
