"""`otel-workflow serve`: the OTLP/HTTP receiver, the JSON API, its security layers, the app."""
