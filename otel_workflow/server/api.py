"""The read API: `/api/*` and `/healthz`, JSON over the store, and the JSON answers they give.

`GET /api/executions`, `/api/executions/{id}`, `/api/executions/{id}/logs`,
`/api/executions/{id}/export` (a download: Jaeger or OTLP JSON), `/api/logs`,
`/api/traces/{trace_id}`, `/api/traces/{trace_id}/spans/{span_id}`, `/api/stats`,
`/api/stats/series`, `/api/changes` (the cursor pages poll), `/api/tables`,
`/api/status` and `GET|POST /api/sql` (the SQL sandbox of `readonly`, time- and
row-limited) serve the read side as JSON; `GET /healthz` says it is up. The
README lists every route with its parameters. GETs never change anything.
Answers are JSON in the one encoding of `model.jsonvalues`; errors are
`{"error": message, ...}` with the HTTP status and fields `model.problems.problem_of`
gives the error (`api_error`).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import re
from collections.abc import Callable
from typing import Any, Final

import anyio.to_thread
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from otel_workflow.export.files import export_jaeger_json, export_otlp_json
from otel_workflow.model.jsonvalues import dumps
from otel_workflow.model.problems import problem_of
from otel_workflow.model.records import ExecutionFilter
from otel_workflow.server.limits import ReceiverLimits
from otel_workflow.server.receiver import JSON, content_kind
from otel_workflow.storage.store import TraceStore

__all__ = ["BadRequest", "ReadApi", "api_error", "bad_request", "json_response"]

_MAX_SQL_BODY: Final = 256 * 1024

#: `?format=` of `/api/executions/{id}/export`: the writer and the file name's ending.
_EXPORTS: Final = {
    "jaeger-json": (export_jaeger_json, "jaeger.json"),
    "otlp-json": (export_otlp_json, "otlp.json"),
}

_SERIES_BUCKETS: Final = 60


# -- JSON answers ----------------------------------------------------------------------------------


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """`data` as a JSON answer, in the encoding of `model.jsonvalues` (DuckDB's values included)."""
    return Response(dumps(data), status, headers, media_type="application/json")


def api_error(status: int, message: str, **extra: Any) -> Response:
    """An error answer of the API: `{"error": message, **extra}`."""
    return json_response({"error": message, **extra}, status)


# -- routes ----------------------------------------------------------------------------------------


class ReadApi:
    """The read routes, around one store; `status` gives `/api/status` its document (the receiver's figures
    when the server ingests). DuckDB runs in worker threads."""

    def __init__(
        self, store: TraceStore, limits: ReceiverLimits, status: Callable[[], dict[str, Any]]
    ) -> None:
        self.store = store
        self.limits = limits
        self._status = status

    def routes(self) -> list[Route]:
        """`/healthz` and the routes under `/api`."""
        return [
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/api/status", self.status, methods=["GET"]),
            Route("/api/executions", self.executions, methods=["GET"]),
            Route("/api/executions/{execution_id}", self.execution, methods=["GET"]),
            Route("/api/executions/{execution_id}/logs", self.logs, methods=["GET"]),
            Route("/api/executions/{execution_id}/export", self.export, methods=["GET"]),
            Route("/api/logs", self.logs, methods=["GET"]),
            Route("/api/traces/{trace_id}", self.trace, methods=["GET"]),
            Route("/api/traces/{trace_id}/spans/{span_id}", self.span, methods=["GET"]),
            Route("/api/stats", self.stats, methods=["GET"]),
            Route("/api/stats/series", self.series, methods=["GET"]),
            Route("/api/changes", self.changes, methods=["GET"]),
            Route("/api/tables", self.tables, methods=["GET"]),
            Route("/api/sql", self.sql, methods=["GET", "POST"]),
        ]

    async def healthz(self, request: Request) -> Response:
        return json_response({"status": "ok"})

    async def status(self, request: Request) -> Response:
        return json_response(self._status())

    async def executions(self, request: Request) -> Response:
        params = request.query_params
        call = functools.partial(
            self.store.executions,
            _execution_filter(params),
            limit=self._limit(params.get("limit"), 50),
            offset=self._int(params.get("offset"), 0, "offset"),
        )
        return await self._read(call, "executions")

    async def execution(self, request: Request) -> Response:
        return await self._read(functools.partial(self.store.execution, request.path_params["execution_id"]))

    async def logs(self, request: Request) -> Response:
        params = request.query_params
        execution_id = request.path_params.get("execution_id") or params.get("execution_id")
        call = functools.partial(
            self.store.logs,
            execution_id,
            level=params.getlist("level") or None,
            step_id=params.get("step_id") or None,
            since=params.get("since"),
            until=params.get("until"),
            limit=self._limit(params.get("limit"), None),
        )
        return await self._read(call, "logs")

    async def stats(self, request: Request) -> Response:
        params = request.query_params
        options: dict[str, Any] = {
            "workflow_id": params.get("workflow_id"),
            "since": params.get("since"),
            "until": params.get("until"),
            "sort": params.get("sort", "p95"),
        }

        def both() -> dict[str, Any]:
            return {
                "steps": self.store.step_stats(**options),
                "workflows": self.store.workflow_stats(**options),
            }

        return await self._read(both)

    async def series(self, request: Request) -> Response:
        params = request.query_params
        call = functools.partial(
            self.store.step_series,
            since=params.get("since") or None,
            until=params.get("until") or None,
            workflow_id=params.get("workflow_id") or None,
            step_name=params.get("step_name") or None,
            buckets=self._int(params.get("buckets"), _SERIES_BUCKETS, "buckets"),
        )
        return await self._read(call)

    async def trace(self, request: Request) -> Response:
        trace_id = request.path_params["trace_id"]
        return await self._read(functools.partial(_trace, self.store, trace_id))

    async def span(self, request: Request) -> Response:
        path = request.path_params
        return await self._read(functools.partial(self.store.span, path["trace_id"], path["span_id"]))

    async def changes(self, request: Request) -> Response:
        return await self._read(lambda: {"cursor": self.store.change_cursor()})

    async def tables(self, request: Request) -> Response:
        return await self._read(self.store.tables, "tables")

    async def export(self, request: Request) -> Response:
        """The execution's traces as a download: `?format=jaeger-json` (the default) or `otlp-json`."""
        name = request.query_params.get("format", "jaeger-json")
        if name not in _EXPORTS:
            raise BadRequest(f"format must be one of {', '.join(_EXPORTS)}, not {name!r}")
        writer, ending = _EXPORTS[name]
        execution_id = request.path_params["execution_id"]

        def run() -> bytes:
            found = self.store.resolve_execution_id(execution_id)
            output = io.StringIO()
            writer(self.store, output, execution=found)
            return output.getvalue().encode("utf-8")

        try:
            body = await anyio.to_thread.run_sync(run)
        except Exception as exc:
            return _problem_answer(exc)
        filename = f"execution-{_file_safe(execution_id)}.{ending}"
        return Response(
            body,
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
            media_type="application/json",
        )

    async def sql(self, request: Request) -> Response:
        limit_text = request.query_params.get("limit")
        if request.method == "GET":
            query = request.query_params.get("q") or request.query_params.get("query")
        else:
            raw = bytearray()
            async for chunk in request.stream():
                raw += chunk
                if len(raw) > _MAX_SQL_BODY:
                    return api_error(413, f"the query is longer than {_MAX_SQL_BODY} bytes")
            query = bytes(raw).decode("utf-8", "replace")
            if content_kind(request.headers.get("content-type")) == JSON:
                try:
                    document = json.loads(query)
                except ValueError:
                    return api_error(400, 'the body is not JSON: send {"query": "SELECT ...", "limit": 100}')
                if not isinstance(document, dict):
                    return api_error(400, 'send {"query": "SELECT ...", "limit": 100}')
                query = document.get("query")
                if document.get("limit") is not None:
                    limit_text = str(document["limit"])
        if not isinstance(query, str) or not query.strip():
            return api_error(400, "give the query: GET /api/sql?q=SELECT... or POST it")
        default = min(self.limits.sql_rows, self.limits.max_sql_rows)
        limit = self._limit(limit_text, default, cap=self.limits.max_sql_rows)
        assert limit is not None
        return await self._read(functools.partial(_run_sql, self.store, query, limit, self.limits))

    def _limit(self, text: str | None, default: int | None, cap: int | None = None) -> int | None:
        if text is None or text == "":
            return default
        value = self._int(text, 0, "limit")
        top = self.limits.max_page if cap is None else cap
        if not 0 <= value <= top:
            raise BadRequest(f"limit must be between 0 and {top}")
        return value

    @staticmethod
    def _int(text: str | None, default: int, name: str) -> int:
        if text is None or text == "":
            return default
        try:
            value = int(text)
        except ValueError:
            raise BadRequest(f"{name} must be a whole number, not {text!r}") from None
        if value < 0:
            raise BadRequest(f"{name} must not be negative")
        return value

    async def _read(self, call: Callable[[], Any], key: str | None = None) -> Response:
        try:
            result = await anyio.to_thread.run_sync(call)
        except Exception as exc:
            return _problem_answer(exc)
        return json_response(result if key is None else {key: result})


def _problem_answer(exc: Exception) -> Response:
    """The answer to an error of the read side; anything else is a bug, re-raised (Starlette answers 500)."""
    problem = problem_of(exc)
    if problem is None:
        raise exc
    return api_error(problem.http_status, problem.message, **problem.fields)


def _trace(store: TraceStore, trace_id: str) -> dict[str, Any]:
    spans = store.trace(trace_id)
    return {"trace_id": trace_id.strip().lower(), "spans": spans}


def _file_safe(text: str) -> str:
    """`text` cut to what a file name may hold anywhere (an id comes from span data: never trust it)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:64].strip(".") or "run"


def _execution_filter(params: QueryParams) -> ExecutionFilter:
    """The `ExecutionFilter` of the query parameters named as its fields (those of `MANY` repeatable)."""
    conditions: dict[str, Any] = {
        field.name: params.get(field.name) for field in dataclasses.fields(ExecutionFilter)
    }
    for name in ExecutionFilter.MANY:
        conditions[name] = params.getlist(name) or None
    return ExecutionFilter(**conditions)


class BadRequest(Exception):
    """A query parameter is invalid (HTTP 400)."""


async def bad_request(request: Request, exc: Exception) -> Response:
    """The answer to `BadRequest` (an exception handler of the app)."""
    return api_error(400, str(exc))


def _run_sql(store: TraceStore, query: str, limit: int, limits: ReceiverLimits) -> dict[str, Any]:
    """One statement in the SQL sandbox; at most `limit` rows, `truncated` says whether there were more."""
    page = store.read_sql_page(
        query, max_rows=limit, max_bytes=limits.max_sql_bytes, timeout_s=limits.sql_timeout_s
    )
    table = page.table
    columns = [table.column(i).to_pylist() for i in range(table.num_columns)]
    return {
        "columns": table.column_names,
        "types": [str(field.type) for field in table.schema],
        "rows": [list(row) for row in zip(*columns, strict=True)],
        "row_count": table.num_rows,
        "truncated": page.truncated,
        "limit": limit,
    }
