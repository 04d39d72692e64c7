"""Collector mode: the OTLP/HTTP receiver and the read API in one ASGI app, and the process serving it.

DuckDB lets one process write a file at a time. The OpenTelemetry answer to
many processes (gunicorn or Celery workers, services in other languages) is a
collector: every process exports OTLP, one process stores. `serve()` is that
process for DuckDB. The parts, each in its module:

- `intake`: from an OTLP body to queued rows (decoding, bounds, the queue check and submit,
  counters), for both receivers, and the ingest slots they share;
- `receiver`: `POST /v1/traces` and `/v1/logs` (OTLP/HTTP, port 4318): headers, body limits,
  decompression and HTTP's back-pressure answers;
- `grpc_receiver`: `TraceService/Export` and `LogsService/Export` (OTLP/gRPC, port 4317);
- `api`: `/api/*` and `/healthz`, the read side as JSON;
- `ui.pages`: the web UI's pages, static files and login form;
- `security`: the token, the loopback Host check and the headers every answer carries;
- `limits`: `ReceiverLimits`, the bounds all of them read.

This module puts them together (`create_app`) and runs them (`otel-workflow ui` is the same app
without the receiver, over a read-only store): `Collector` on a
background thread (tests, embedding), `serve()` in the foreground until SIGINT
or SIGTERM. The server accepts at most `max_connections` at a time and binds to
127.0.0.1 unless told otherwise.

The HTTP layer is Starlette on uvicorn (the `collector` extra): well kept and
widely deployed, uvicorn bounds concurrent connections (`limit_concurrency`)
and shuts down gracefully, and Starlette streams request bodies, which the
body limits need. OTLP/gRPC runs on grpcio's own server, on its own threads, beside it: most SDKs
export over gRPC by default.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final

import uvicorn
from starlette.applications import Starlette

from otel_workflow.query import readonly
from otel_workflow.sdk.setup import default_db_path
from otel_workflow.server.api import BadRequest, ReadApi, bad_request
from otel_workflow.server.intake import Intake
from otel_workflow.server.limits import ReceiverLimits
from otel_workflow.server.receiver import Receiver
from otel_workflow.server.security import (
    TOKEN_ENV,
    ASGIApp,
    LoopbackHosts,
    SecurityHeaders,
    TokenAuth,
    check_exposure,
    is_loopback,
)
from otel_workflow.server.ui.pages import UiPages
from otel_workflow.storage.store import TraceStore

if TYPE_CHECKING:
    from otel_workflow.server.grpc_receiver import GrpcReceiver

__all__ = [
    "DEFAULT_GRPC_PORT",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "TOKEN_ENV",
    "Collector",
    "ReceiverLimits",
    "create_app",
    "serve",
]

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 4318  # the OTLP/HTTP port
DEFAULT_GRPC_PORT: Final = 4317  # the OTLP/gRPC port


def create_app(
    store: TraceStore,
    *,
    token: str | None = None,
    limits: ReceiverLimits | None = None,
    loopback_only: bool = False,
    ingest: bool | Intake = True,
    ui: bool = True,
) -> ASGIApp:
    """The ASGI application: OTLP/HTTP ingest into `store`, the read API and the web UI over it.

    `ingest=False` leaves the receiver out (`otel-workflow ui`, over a read-only store); an `Intake`
    for `ingest` is the one a gRPC receiver shares (its counters and slots); `ui=False` the pages.
    With `token`, every route but `/healthz`, `/login` and `/static/` needs it (see
    `security.TokenAuth`). With `loopback_only` (what `serve()` and `Collector` set when bound to a
    loopback address), requests must be addressed to a loopback name, which keeps web pages from
    reading it through DNS rebinding. Every answer carries the headers of `security.SecurityHeaders`.
    The caller owns the store (and closes it). Serve the app with `Collector`
    (a background thread) or `serve()`; any ASGI server runs it, but only
    uvicorn's `limit_concurrency` bounds connections as `serve()` does.
    """
    limits = limits or ReceiverLimits()
    routes = []
    status: Callable[[], dict[str, Any]] = functools.partial(_reader_status, store)
    if ingest:
        intake = ingest if isinstance(ingest, Intake) else Intake(store, limits)
        routes += Receiver(intake).routes()
        status = intake.status
    routes += ReadApi(store, limits, status).routes()
    pages = UiPages(token) if ui else None
    if pages is not None:
        routes += pages.routes()
    app: ASGIApp = Starlette(routes=routes, exception_handlers={BadRequest: bad_request})
    if token:
        app = TokenAuth(app, token, pages.login_answer if pages is not None else None)
    if loopback_only:
        app = LoopbackHosts(app)
    return SecurityHeaders(app)


def _reader_status(store: TraceStore) -> dict[str, Any]:
    """`/api/status` of a server that does not ingest."""
    return {"database": store.path, "read_only": store.read_only, "ingest": False}


def _grpc_receiver(intake: Intake, host: str, port: int, token: str | None) -> GrpcReceiver:
    # Imported here: grpcio is in the `collector` extra, and `otel-workflow ui` (the `ui` extra) runs
    # this module without it.
    try:
        from otel_workflow.server.grpc_receiver import GrpcReceiver  # noqa: PLC0415
    except ImportError as exc:
        raise ImportError(
            f"OTLP/gRPC needs grpcio ({exc}): pip install 'otel-workflow[collector]', or turn gRPC off "
            "(--grpc-port 0)"
        ) from exc
    return GrpcReceiver(intake, host=host, port=port, token=token)


# -- running ---------------------------------------------------------------------------------------


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket; bound here (not by uvicorn) so that port 0 gives its real port at once."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _uvicorn_config(app: ASGIApp, limits: ReceiverLimits, log_level: str, console: bool) -> uvicorn.Config:
    kwargs: dict[str, Any] = {}
    if not console:
        kwargs["log_config"] = None  # embedded: leave the host application's logging alone
    return uvicorn.Config(
        app,
        lifespan="off",
        ws="none",
        log_level=log_level,
        access_log=False,
        limit_concurrency=limits.max_connections,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=10,
        server_header=False,
        proxy_headers=False,
        **kwargs,
    )


class Collector:
    """The receiver and read API serving `store` from a background thread (tests, embedding).

    `Collector(store, port=0).start()` binds a free port (see `.url`); with `grpc_port` (0: a free one)
    OTLP/gRPC is served too (see `.grpc.address`); `ingest=False` serves the read API and the pages
    only (what `otel-workflow ui` serves, over a read-only store); `stop()` shuts the server down
    gracefully. The store stays open: its owner closes it.
    Use as a context manager to start and stop.
    """

    def __init__(
        self,
        store: TraceStore,
        *,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        grpc_port: int | None = None,
        token: str | None = None,
        limits: ReceiverLimits | None = None,
        log_level: str = "warning",
        ingest: bool = True,
    ) -> None:
        self.store = store
        self.limits = limits or ReceiverLimits()
        check_exposure(host, token)
        intake = Intake(store, self.limits) if ingest else None
        self.app = create_app(
            store,
            token=token,
            limits=self.limits,
            loopback_only=is_loopback(host),
            ingest=intake if intake is not None else False,
        )
        self._socket = _bind(host, port)
        self.url = _url(self._socket)
        self.port: int = self._socket.getsockname()[1]
        self._server = uvicorn.Server(_uvicorn_config(self.app, self.limits, log_level, console=False))
        self._thread: threading.Thread | None = None
        self.grpc: GrpcReceiver | None = None
        if intake is not None and grpc_port is not None:
            try:
                self.grpc = _grpc_receiver(intake, host, grpc_port, token)
            except BaseException:
                self._socket.close()
                raise

    def start(self, timeout_s: float = 10.0) -> Collector:
        """Start serving; returns once the server accepts requests."""
        if self.grpc is not None:
            self.grpc.start()
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._socket]},
            name="otel-workflow-collector",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the collector did not start on {self.url}")
            time.sleep(0.01)
        return self

    def stop(self, timeout_s: float = 15.0) -> None:
        """Finish the requests in progress (bounded) and stop. Idempotent."""
        if self.grpc is not None:
            self.grpc.stop(self.limits.body_timeout_s)
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._socket.close()

    def __enter__(self) -> Collector:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def serve(
    db_path: str | None = None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    token: str | None = None,
    *,
    grpc_port: int | None = DEFAULT_GRPC_PORT,
    limits: ReceiverLimits | None = None,
    log_level: str = "info",
    on_ready: Callable[[str], None] | None = None,
    ingest: bool = True,
) -> None:
    """Run the server until SIGINT or SIGTERM: OTLP into DuckDB at `db_path`, read API and UI over it.

    `db_path` defaults to `$OTEL_WORKFLOW_DB` or `otel_workflow.duckdb`. Binds
    `host:port` for HTTP (127.0.0.1:4318; port 0 picks a free one) and `host:grpc_port` for OTLP/gRPC
    (4317; 0 picks a free one, None serves no gRPC); `on_ready(url)` is
    called once the ports listen (by default a line on stderr says where).
    With `ingest=False` (`otel-workflow ui`) there is no receiver and the database is opened
    read-only, beside the application writing it. On exit, the calls in progress finish, what is
    queued is written and the database released.
    """
    limits = limits or ReceiverLimits()
    sql_limits = readonly.SqlLimits(timeout_s=limits.sql_timeout_s, memory_limit=limits.sql_memory_limit)
    path = db_path or default_db_path()
    store = (
        TraceStore(path, max_queued_spans=limits.max_queued_spans, sql_limits=sql_limits)
        if ingest
        else TraceStore(path, read_only=True, sql_limits=sql_limits)
    )
    grpc: GrpcReceiver | None = None
    try:
        check_exposure(host, token)
        intake = Intake(store, limits) if ingest else None
        sock = _bind(host, port)
        with contextlib.closing(sock), _sigterm_as_exit():
            if intake is not None and grpc_port is not None:
                grpc = _grpc_receiver(intake, host, grpc_port, token).start()
            app = create_app(
                store,
                token=token,
                limits=limits,
                loopback_only=is_loopback(host),
                ingest=intake if intake is not None else False,
            )
            server = uvicorn.Server(_uvicorn_config(app, limits, log_level, console=True))
            url = _url(sock)
            if on_ready is not None:
                on_ready(url)
            elif ingest:
                grpc_line = f"OTLP/gRPC at {grpc.address}, " if grpc is not None else ""
                print(
                    f"otel-workflow collector: OTLP/HTTP at {url}/v1/traces, {grpc_line}web UI at {url}/, "
                    f"read API at {url}/api, database {store.path}",
                    file=sys.stderr,
                    flush=True,
                )
            else:
                print(
                    f"otel-workflow ui: {url}/ (database {store.path}, read-only)",
                    file=sys.stderr,
                    flush=True,
                )
            with contextlib.suppress(KeyboardInterrupt, _Exit):
                server.run(sockets=[sock])
    finally:
        try:
            if grpc is not None:
                # Before the store closes: the calls in progress finish and their spans are queued.
                grpc.stop(limits.body_timeout_s)
        finally:
            store.close()


class _Exit(BaseException):
    """SIGTERM arrived: leave `serve()` through its `finally`, which writes what is queued."""


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    # uvicorn handles SIGTERM while it runs, then re-raises it with the previous handler in place. The
    # default handler would end the process there, before the queued spans are written.
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise _Exit

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
