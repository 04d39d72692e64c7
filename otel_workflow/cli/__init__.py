"""The `otel-workflow` command line."""
