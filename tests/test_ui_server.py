"""The web UI's server side, over real HTTP: pages, static files, the headers every answer carries,
the token (bearer, cookie, `?token=` link, login form), the routes the pages read, and
`otel-workflow ui` as a user starts it. The pages themselves run in a real browser in
test_ui_browser.py."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from support import otel_workflow_command
from ui_support import ui_server, write_runs_in_process_of_its_own

from otel_workflow import TraceStore, WorkflowSpanProcessor, WorkflowTracer
from otel_workflow.cli.demo import run_demo
from otel_workflow.sdk.exporter import DuckDBSpanExporter
from otel_workflow.server.app import Collector
from otel_workflow.server.security import CONTENT_SECURITY_POLICY, TOKEN_COOKIE

PAGES = ("/", "/executions/abc", "/traces/0123", "/stats", "/sql")
TOKEN = "s3cret-token"


def _fill(store: TraceStore, runs: int = 3) -> list[str]:
    provider = TracerProvider(resource=Resource.create({"service.name": "ui-tests"}), shutdown_on_exit=False)
    provider.add_span_processor(WorkflowSpanProcessor(store=store))
    provider.add_span_processor(SimpleSpanProcessor(DuckDBSpanExporter(store)))
    ids = run_demo(WorkflowTracer("order-pipeline", tracer_provider=provider), runs)
    provider.force_flush()
    assert store.flush()
    return ids


@pytest.fixture
def store(tmp_path: Path) -> Iterator[TraceStore]:
    with TraceStore(tmp_path / "ui.duckdb") as opened:
        yield opened


@pytest.fixture
def server(store: TraceStore) -> Iterator[Collector]:
    with Collector(store, port=0) as running:
        yield running


@pytest.fixture
def guarded(store: TraceStore) -> Iterator[Collector]:
    with Collector(store, port=0, token=TOKEN) as running:
        yield running


def _get(server: Collector, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.get(server.url + path, timeout=30, **kwargs)


# -- pages and static files ------------------------------------------------------------------------


def test_every_page_is_the_same_document_and_its_scripts_are_served_with_their_types(
    server: Collector,
) -> None:
    index = _get(server, "/")
    assert index.status_code == 200
    assert index.headers["content-type"] == "text/html; charset=utf-8"
    assert '<script type="module" src="/static/app.js">' in index.text
    for path in PAGES:
        answer = _get(server, path)
        assert answer.status_code == 200, path
        assert answer.content == index.content, path
    script = _get(server, "/static/app.js")
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
    assert "import" in script.text
    assert _get(server, "/static/app.css").headers["content-type"] == "text/css; charset=utf-8"


def test_static_files_revalidate_with_their_etag(server: Collector) -> None:
    first = _get(server, "/static/run.js")
    assert first.headers["cache-control"] == "no-cache"
    again = _get(server, "/static/run.js", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    changed = _get(server, "/static/run.js", headers={"If-None-Match": '"other"'})
    assert changed.status_code == 200 and changed.content == first.content


@pytest.mark.parametrize(
    "path",
    [
        "/static/nothing.js",
        "/static/../pages.py",
        "/static/..%2fpages.py",
        "/static/%2e%2e/%2e%2e/__init__.py",
        "/static/..%5c..%5cpages.py",
        "/static//etc/passwd",
        "/static/ui",
    ],
)
def test_a_static_name_outside_the_packaged_files_is_not_found(server: Collector, path: str) -> None:
    answer = _get(server, path)
    assert answer.status_code == 404
    assert "import" not in answer.text and "root:" not in answer.text


# -- headers every answer carries ------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/", "/sql", "/static/app.js", "/api/executions", "/api/nothing", "/healthz", "/nowhere"]
)
def test_every_answer_carries_the_policy_and_no_cors(server: Collector, path: str) -> None:
    answer = _get(server, path, headers={"Origin": "http://evil.example"})
    assert answer.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "unsafe-inline" not in CONTENT_SECURITY_POLICY and "unsafe-eval" not in CONTENT_SECURITY_POLICY
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["x-frame-options"] == "DENY"
    assert answer.headers["referrer-policy"] == "no-referrer"
    assert not [name for name in answer.headers if name.lower().startswith("access-control-")]


def test_a_cors_preflight_is_not_granted(server: Collector) -> None:
    answer = httpx.options(
        server.url + "/api/sql",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
        timeout=30,
    )
    assert answer.status_code in (404, 405)
    assert not [name for name in answer.headers if name.lower().startswith("access-control-")]


def test_api_answers_are_not_cached(server: Collector) -> None:
    assert _get(server, "/api/executions").headers["cache-control"] == "no-store"


def test_on_loopback_a_page_for_a_foreign_host_is_refused(server: Collector) -> None:
    for path in ("/", "/static/app.js", "/api/executions"):
        answer = _get(server, path, headers={"Host": "rebound.example:8766"})
        assert answer.status_code == 400, path
        assert "loopback" in answer.text
    assert _get(server, "/", headers={"Host": "localhost:1234"}).status_code == 200


# -- the token -------------------------------------------------------------------------------------


def test_with_a_token_pages_answer_the_login_form_and_the_api_refuses(guarded: Collector) -> None:
    page = _get(guarded, "/executions/abc")
    assert page.status_code == 401
    assert page.headers["content-type"].startswith("text/html")
    assert 'action="/login"' in page.text and TOKEN not in page.text
    api = _get(guarded, "/api/executions")
    assert api.status_code == 401 and "token" in api.json()["error"]
    assert _get(guarded, "/healthz").status_code == 200
    assert _get(guarded, "/static/login.js").status_code == 200  # the form needs its script and style
    assert _get(guarded, "/login").status_code == 200


def test_the_bearer_token_or_the_cookie_lets_requests_in(guarded: Collector) -> None:
    assert _get(guarded, "/api/executions", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert _get(guarded, "/api/executions", cookies={TOKEN_COOKIE: TOKEN}).status_code == 200
    assert _get(guarded, "/", cookies={TOKEN_COOKIE: TOKEN}).status_code == 200
    assert _get(guarded, "/", cookies={TOKEN_COOKIE: "wrong"}).status_code == 401
    assert _get(guarded, "/api/executions", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_a_token_link_sets_a_strict_http_only_cookie_and_drops_the_token_from_the_address(
    guarded: Collector,
) -> None:
    answer = _get(guarded, f"/stats?since=7d&token={TOKEN}")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/stats?since=7d"
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"{TOKEN_COOKIE}={TOKEN};")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    wrong = _get(guarded, "/stats?token=wrong")
    assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
    # The API takes the token as a header only: a token in an API address would end up in logs.
    assert _get(guarded, f"/api/executions?token={TOKEN}").status_code == 401


def test_the_login_form_sets_the_cookie_and_goes_back_only_to_this_server(guarded: Collector) -> None:
    def login(token: str, target: str) -> httpx.Response:
        return httpx.post(
            guarded.url + "/login", data={"token": token, "next": target}, timeout=30, follow_redirects=False
        )

    good = login(TOKEN, "/executions/abc?span=1")
    assert good.status_code == 303 and good.headers["location"] == "/executions/abc?span=1"
    assert "HttpOnly" in good.headers["set-cookie"]
    for target in ("//evil.example/", "https://evil.example/", "/\\evil.example", "javascript:alert(1)"):
        assert login(TOKEN, target).headers["location"] == "/", target
    bad = login("wrong", "/sql")
    assert bad.status_code == 303 and "set-cookie" not in bad.headers
    assert bad.headers["location"] == "/login?next=%2Fsql&failed=1"
    too_long = httpx.post(guarded.url + "/login", content=b"token=" + b"x" * 20_000, timeout=30)
    assert too_long.status_code == 413


# -- the routes the pages read ---------------------------------------------------------------------


def test_the_change_cursor_moves_when_a_run_is_stored_and_not_otherwise(
    store: TraceStore, server: Collector
) -> None:
    first = _get(server, "/api/changes").json()["cursor"]
    assert _get(server, "/api/changes").json()["cursor"] == first
    _fill(store, 1)
    assert _get(server, "/api/changes").json()["cursor"] != first


def test_a_trace_and_one_of_its_spans_as_the_pages_read_them(store: TraceStore, server: Collector) -> None:
    run_id = _fill(store, 3)[2]  # the third demo order fails
    detail = _get(server, f"/api/executions/{run_id}").json()
    trace = _get(server, f"/api/traces/{detail['trace_id'].upper()}").json()
    assert trace["trace_id"] == detail["trace_id"]
    assert [line["span_id"] for line in trace["spans"]] == [line["span_id"] for line in detail["spans"]]
    failed = next(line for line in detail["spans"] if line["role"] == "step" and line["status"] == "failed")
    span = _get(server, f"/api/traces/{detail['trace_id']}/spans/{failed['span_id']}").json()
    assert span["span_id"] == failed["span_id"] and span["running"] is False
    assert [event["name"] for event in span["events"]] == ["exception"]
    assert "OutOfStock" in span["events"][0]["attributes"]["exception.stacktrace"]
    assert span["resource_attributes"]["service.name"] == "ui-tests"
    assert _get(server, "/api/traces/" + "0" * 32).status_code == 404
    assert _get(server, "/api/traces/not-a-trace").status_code == 400
    assert _get(server, f"/api/traces/{detail['trace_id']}/spans/{'0' * 16}").status_code == 404


def test_the_logs_of_one_step(store: TraceStore, server: Collector) -> None:
    run_id = _fill(store, 3)[2]
    steps = _get(server, f"/api/executions/{run_id}").json()["steps"]
    step = next(step for step in steps if step["status"] == "failed")
    logs = _get(server, f"/api/executions/{run_id}/logs", params={"step_id": step["id"]}).json()["logs"]
    assert logs and {row["step_id"] for row in logs} == {step["id"]}
    everything = _get(server, f"/api/executions/{run_id}/logs").json()["logs"]
    assert len(everything) > len(logs)


def test_stats_over_time_and_the_tables(store: TraceStore, server: Collector) -> None:
    _fill(store, 3)
    answer = _get(server, "/api/stats/series", params={"since": "1h", "buckets": "12"}).json()
    assert answer["bucket_s"] == 300
    counted = sum(bucket["count"] for bucket in answer["series"])
    steps = store.sql("SELECT count(*) FROM execution_steps WHERE status <> 'running'")[0][0]
    assert counted == steps
    one = _get(server, "/api/stats/series", params={"since": "1h", "step_name": "reserve-stock"}).json()
    assert sum(bucket["failed"] for bucket in one["series"]) == 1
    assert _get(server, "/api/stats/series", params={"buckets": "0"}).status_code == 400
    tables = {table["name"]: table for table in _get(server, "/api/tables").json()["tables"]}
    assert {"workflow_executions", "execution_steps", "execution_logs", "spans"} <= set(tables)
    assert {"name": "status", "type": "VARCHAR"} in tables["workflow_executions"]["columns"]


def test_a_run_downloads_as_jaeger_and_otlp_json(store: TraceStore, server: Collector) -> None:
    run_id = _fill(store, 2)[0]
    detail = _get(server, f"/api/executions/{run_id}").json()
    jaeger = _get(server, f"/api/executions/{run_id[:8]}/export", params={"format": "jaeger-json"})
    assert jaeger.status_code == 200
    assert (
        jaeger.headers["content-disposition"] == f'attachment; filename="execution-{run_id[:8]}.jaeger.json"'
    )
    traces = json.loads(jaeger.content)["data"]
    assert [trace["traceID"] for trace in traces] == [detail["trace_id"]]
    assert len(traces[0]["spans"]) == len(detail["spans"])
    otlp = json.loads(
        _get(server, f"/api/executions/{run_id}/export", params={"format": "otlp-json"}).content
    )
    names = {span["name"] for rs in otlp["resourceSpans"] for ss in rs["scopeSpans"] for span in ss["spans"]}
    assert {line["name"] for line in detail["spans"]} <= names
    assert _get(server, f"/api/executions/{run_id}/export", params={"format": "zip"}).status_code == 400
    assert _get(server, "/api/executions/nothing-like-it/export").status_code == 404


# -- `otel-workflow ui` ----------------------------------------------------------------------------


def test_the_ui_command_reads_beside_a_writer_and_does_not_ingest(tmp_path: Path) -> None:
    db = tmp_path / "app.duckdb"
    first = write_runs_in_process_of_its_own(db, "one")
    with ui_server(db) as served:
        assert [
            row["id"] for row in httpx.get(served.url + "/api/executions", timeout=30).json()["executions"]
        ] == first
        # The application goes on writing the file the UI reads.
        more = write_runs_in_process_of_its_own(db, "one")
        listed = {
            row["id"] for row in httpx.get(served.url + "/api/executions", timeout=30).json()["executions"]
        }
        assert listed == {*first, *more}
        refused = httpx.post(served.url + "/v1/traces", content=b"", timeout=30)
        assert refused.status_code in (404, 405)
        status = httpx.get(served.url + "/api/status", timeout=30).json()
        assert status == {"database": str(db), "read_only": True, "ingest": False}
        assert httpx.get(served.url + "/", timeout=30).status_code == 200


def test_the_ui_command_without_a_database_says_so(tmp_path: Path) -> None:
    done = subprocess.run(
        [*otel_workflow_command(), "ui", "--db", str(tmp_path / "none.duckdb"), "--port", "0", "--no-open"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "none.duckdb" in done.stderr and "Traceback" not in done.stderr
