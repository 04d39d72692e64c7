"""Stored spans to files: Jaeger JSON, OTLP JSON, Parquet."""
