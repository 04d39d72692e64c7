"""Finished spans to Arrow rows, and the background writer that owns the way to DuckDB."""
