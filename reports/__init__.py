"""batchlab: reports (see ../shared/DESIGN.md)."""
