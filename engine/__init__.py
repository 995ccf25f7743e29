"""batchlab: engine (see ../shared/DESIGN.md)."""
