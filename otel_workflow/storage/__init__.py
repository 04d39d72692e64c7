"""The DuckDB file: hand-over between processes, schema, writes, liveness, and the `TraceStore` facade."""
