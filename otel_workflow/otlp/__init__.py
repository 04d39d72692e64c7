"""OTLP messages: decoding received requests, encoding spans and responses."""
