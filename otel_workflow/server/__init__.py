"""`otel-workflow serve`: the OTLP receivers (HTTP and gRPC), the JSON API, its security layers, the app.

Every module here needs Starlette and uvicorn (the `collector` and `ui` extras); importing any of them
without says which extra to install. `grpc_receiver` also needs grpcio (the `collector` extra).
"""

try:
    import starlette  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as _exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "the collector (otel-workflow serve) needs Starlette and uvicorn: "
        "pip install 'otel-workflow[collector]'"
    ) from _exc
