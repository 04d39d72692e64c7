"""The web UI in a real browser: headless Chromium (Debian's) driven by Playwright, against
`otel-workflow ui` started as a user starts it, over a file that other processes write.

Without /usr/bin/chromium these tests skip, unless OTEL_WORKFLOW_REQUIRE_BROWSER is set (`.ci/run`
sets it and installs Chromium): then they fail.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from ui_support import HOSTILE, HOSTILE_WORKFLOW, UiServer, ui_server, write_runs_in_process_of_its_own

CHROMIUM = Path("/usr/bin/chromium")

if not CHROMIUM.exists() or os.environ.get("OTEL_WORKFLOW_NO_BROWSER"):
    if os.environ.get("OTEL_WORKFLOW_REQUIRE_BROWSER"):
        raise RuntimeError(f"{CHROMIUM} is missing and OTEL_WORKFLOW_REQUIRE_BROWSER is set")
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect

# Flags that keep Chromium from reaching for the network this machine does not have.
_CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
_WAIT_MS = 15_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=_CHROMIUM_ARGS
        )
        yield launched
        launched.close()


class PageProblems:
    """What a page must never do: log an error (CSP violations among them), throw, or open a dialog."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.messages: list[str] = []
        # The browser logs every answer >= 400 as a console error; a test names the ones it asks for.
        self.expected_statuses = {401}
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.messages.append(f"page error: {error}"))
        page.on("dialog", self._dialog)

    def _console(self, message: Any) -> None:
        if message.type != "error":
            return
        status = re.search(r"status of (\d{3})", message.text)
        if status is None or int(status.group(1)) not in self.expected_statuses:
            self.messages.append(f"console error: {message.text}")

    def _dialog(self, dialog: Any) -> None:
        self.messages.append(f"dialog opened: {dialog.message}")
        dialog.dismiss()


@pytest.fixture
def page_problems(browser: Any) -> Iterator[PageProblems]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    opened = context.new_page()
    opened.set_default_timeout(_WAIT_MS)
    problems = PageProblems(opened)
    yield problems
    context.close()
    assert problems.messages == []


@pytest.fixture
def page(page_problems: PageProblems) -> Any:
    return page_problems.page


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("ui") / "runs.duckdb"
    for kind in ("demo", "io", "hostile"):
        write_runs_in_process_of_its_own(db, kind)
    return db


@pytest.fixture(scope="module")
def served(demo_db: Path) -> Iterator[UiServer]:
    with ui_server(demo_db) as server:
        yield server


def _api(served: UiServer, path: str) -> Any:
    answer = httpx.get(served.url + path, timeout=30)
    answer.raise_for_status()
    return answer.json()


def _execution_id(served: UiServer, **filters: str) -> str:
    rows = _api(served, f"/api/executions?{urlencode(filters)}")["executions"]
    assert rows, filters
    return str(rows[0]["id"])


def _run_rows(page: Any) -> Any:
    return page.get_by_test_id("run-row")


# -- runs list -------------------------------------------------------------------------------------


def test_the_list_shows_runs_newest_first_with_filters_kept_in_the_url(page: Any, served: UiServer) -> None:
    listed = _api(served, "/api/executions")["executions"]
    page.goto(served.url + "/")
    rows = _run_rows(page)
    expect(rows).to_have_count(len(listed))
    assert [rows.nth(i).get_attribute("data-id") for i in range(len(listed))] == [row["id"] for row in listed]

    page.goto(served.url + "/?status=failed")
    failed = [row["id"] for row in listed if row["status"] == "failed"]
    expect(rows).to_have_count(len(failed))
    assert {rows.nth(i).get_attribute("data-id") for i in range(len(failed))} == set(failed)
    # The form shows the filter the URL holds, and changing the form changes the URL.
    page.goto(served.url + "/")
    expect(rows).to_have_count(len(listed))
    form = page.get_by_test_id("filter-form")
    form.locator("input[name=workflow_id], select[name=workflow_id]").first.fill("io-pipeline")
    form.locator("input[name=workflow_id], select[name=workflow_id]").first.press("Enter")
    expect(rows).to_have_count(1)
    assert "workflow_id=io-pipeline" in page.url
    page.reload()
    expect(rows).to_have_count(1)


def test_a_run_written_by_another_process_appears_without_a_reload(page: Any, tmp_path: Path) -> None:
    db = tmp_path / "live.duckdb"
    write_runs_in_process_of_its_own(db, "one")
    with ui_server(db) as server:
        page.goto(server.url + "/")
        rows = _run_rows(page)
        expect(rows).to_have_count(1)
        expect(page.get_by_test_id("live-indicator")).to_be_visible()
        new_id = write_runs_in_process_of_its_own(db, "one")[0]
        expect(rows).to_have_count(2)
        assert rows.first.get_attribute("data-id") == new_id


def test_keyboard_slash_focuses_the_filter_and_j_enter_open_a_run(page: Any, served: UiServer) -> None:
    page.goto(served.url + "/")
    expect(_run_rows(page).first).to_be_visible()
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.closest('[data-testid=filter-form]') !== null")
    page.evaluate("document.activeElement.blur()")
    rows = _run_rows(page)
    page.keyboard.press("j")  # the first row
    page.keyboard.press("j")  # the second
    expect(rows.nth(1)).to_have_attribute("aria-selected", "true")
    page.keyboard.press("k")  # back to the first
    expect(rows.nth(0)).to_have_attribute("aria-selected", "true")
    expect(page.locator("[data-testid=run-row][aria-selected=true]")).to_have_count(1)
    chosen = rows.nth(0).get_attribute("data-id")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/executions/"))
    assert chosen and chosen in page.url


# -- one run ---------------------------------------------------------------------------------------


def test_a_run_page_shows_the_waterfall_with_nesting_statuses_attempts_and_the_critical_path(
    page: Any, served: UiServer
) -> None:
    # The failed demo run: a skipped coupon, a failed reservation, a compensating refund.
    failed_id = _execution_id(served, status="failed", workflow_id="order-pipeline")
    detail = _api(served, f"/api/executions/{failed_id}")
    page.goto(served.url + "/")
    page.locator(f"[data-testid=run-row][data-id='{failed_id}'] a").first.click()
    page.wait_for_url(f"**/executions/{failed_id}")
    rows = page.get_by_test_id("span-row")
    expect(rows).to_have_count(len(detail["spans"]))
    statuses = {rows.nth(i).get_attribute("data-status") for i in range(len(detail["spans"]))}
    assert {"failed", "skipped", "compensated", "completed"} <= statuses
    # Status in words too, not colour alone.
    skipped = page.locator("[data-testid=span-row][data-status=skipped]").first
    expect(skipped).to_contain_text("skipped")
    # The HTTP client span under fetch-customer is nested deeper than the step.
    depths = {line["label"]: line["depth"] for line in detail["spans"]}
    assert depths["GET /customers/{id}"] > depths["fetch-customer"] > 0
    expect(page.locator("[data-testid=span-row][data-critical=true]").first).to_be_visible()

    # A run of an even order retried charge-payment: its second attempt is shown as one.
    retried = next(
        row["id"]
        for row in _api(served, "/api/executions?workflow_id=order-pipeline&limit=50")["executions"]
        if sum(
            step["step_name"] == "charge-payment"
            for step in _api(served, f"/api/executions/{row['id']}")["steps"]
        )
        == 2
    )
    page.goto(f"{served.url}/executions/{retried}")
    expect(page.locator("[data-testid=span-row][data-attempt='2']")).to_have_count(1)
    expect(page.locator("[data-testid=span-row][data-attempt='2']")).to_contain_text("attempt 2")


def test_clicking_a_span_shows_its_attributes_events_and_resource_and_esc_closes(
    page: Any, served: UiServer
) -> None:
    run_id = _execution_id(served, workflow_id="order-pipeline")
    detail = _api(served, f"/api/executions/{run_id}")
    inventory = next(line for line in detail["spans"] if line["label"] == "fetch-inventory")
    page.goto(f"{served.url}/executions/{run_id}")
    page.locator(f"[data-testid=span-row][data-span-id='{inventory['span_id']}']").click()
    panel = page.get_by_test_id("span-panel")
    expect(panel).to_be_visible()
    expect(panel).to_contain_text("cache miss")  # the event
    expect(panel).to_contain_text("workflow.step.name")  # an attribute
    expect(panel).to_contain_text("service.name")  # the resource
    page.keyboard.press("Escape")
    expect(panel).to_be_hidden()


def test_a_failed_step_shows_its_exception_stack_trace_as_text(page: Any, served: UiServer) -> None:
    run_id = _execution_id(served, workflow_id=HOSTILE_WORKFLOW)
    detail = _api(served, f"/api/executions/{run_id}")
    boom = next(line for line in detail["spans"] if line["label"] == "boom")
    page.goto(f"{served.url}/executions/{run_id}")
    page.locator(f"[data-testid=span-row][data-span-id='{boom['span_id']}']").click()
    stack = page.get_by_test_id("span-panel").locator("pre").filter(has_text="Traceback")
    expect(stack.first).to_be_visible()
    expect(stack.first).to_contain_text("RuntimeError")


def test_the_run_logs_filter_by_level_and_step(page: Any, served: UiServer) -> None:
    run_id = _execution_id(served, status="failed", workflow_id="order-pipeline")
    logs = _api(served, f"/api/executions/{run_id}/logs")["logs"]
    page.goto(f"{served.url}/executions/{run_id}")
    section = page.get_by_test_id("logs")
    log_rows = section.get_by_test_id("log-row")
    expect(log_rows).to_have_count(len(logs))
    errors = [row for row in logs if row["level"] == "error"]
    assert errors
    section.locator("select[name=level]").select_option("error")
    expect(log_rows).to_have_count(len(errors))
    section.locator("select[name=level]").select_option("")
    expect(log_rows).to_have_count(len(logs))
    step = next(row for row in logs if row["step_id"] and row["module_name"] == "reserve-stock")
    section.locator("select[name=step]").select_option(step["step_id"])
    expect(log_rows).to_have_count(sum(row["step_id"] == step["step_id"] for row in logs))
    # The application's own log line (Python `logging` inside the step) is among that step's rows.
    expect(section).to_contain_text("none left in any warehouse")


def test_captured_input_and_output_show_as_formatted_json(page: Any, served: UiServer) -> None:
    run_id = _execution_id(served, workflow_id="io-pipeline")
    page.goto(f"{served.url}/executions/{run_id}")
    io = page.get_by_test_id("io")
    expect(io).to_contain_text("SKU-42")
    expect(io).to_contain_text("currency")
    expect(io).to_contain_text("EUR")
    expect(io).to_contain_text(HOSTILE)  # the note, as text


def test_the_downloads_are_jaeger_and_otlp_json_of_the_run(page: Any, served: UiServer) -> None:
    run_id = _execution_id(served, status="failed", workflow_id="order-pipeline")
    detail = _api(served, f"/api/executions/{run_id}")
    page.goto(f"{served.url}/executions/{run_id}")
    with page.expect_download() as jaeger_download:
        page.get_by_test_id("download-jaeger").click()
    jaeger = json.loads(Path(jaeger_download.value.path()).read_text())
    assert [trace["traceID"] for trace in jaeger["data"]] == [detail["trace_id"]]
    assert len(jaeger["data"][0]["spans"]) >= len(detail["spans"])
    with page.expect_download() as otlp_download:
        page.get_by_test_id("download-otlp").click()
    otlp = json.loads(Path(otlp_download.value.path()).read_text())
    spans = [span for rs in otlp["resourceSpans"] for ss in rs["scopeSpans"] for span in ss["spans"]]
    assert {span["traceId"] for span in spans} == {detail["trace_id"]}


def test_any_trace_has_a_page_of_its_own(page: Any, served: UiServer) -> None:
    run_id = _execution_id(served, workflow_id="order-pipeline")
    trace_id = _api(served, f"/api/executions/{run_id}")["trace_id"]
    spans = _api(served, f"/api/traces/{trace_id}")["spans"]
    page.goto(f"{served.url}/traces/{trace_id}")
    expect(page.get_by_test_id("span-row")).to_have_count(len(spans))


# -- stats and SQL ---------------------------------------------------------------------------------


def test_stats_show_the_step_table_and_draw_both_charts(page: Any, served: UiServer) -> None:
    steps = _api(served, "/api/stats?since=30d")["steps"]
    page.goto(served.url + "/stats?since=30d")
    table = page.get_by_test_id("stats-table")
    expect(table).to_contain_text("charge-payment")
    expect(table.locator("tbody tr")).to_have_count(len(steps))
    for chart in ("chart-percentiles", "chart-failures"):
        drawn = page.get_by_test_id(chart).locator("svg path, svg polyline, svg rect, svg circle")
        expect(drawn.first).to_be_attached()


def test_the_sql_console_shows_results_and_refusals(page_problems: PageProblems, served: UiServer) -> None:
    page = page_problems.page
    page_problems.expected_statuses.add(403)  # the refusal's answer
    page.goto(served.url + "/sql")
    expect(page.get_by_test_id("tables")).to_contain_text("workflow_executions")
    page.get_by_test_id("sql-input").fill("SELECT count(*) AS runs FROM workflow_executions")
    page.get_by_test_id("sql-run").click()
    result = page.get_by_test_id("sql-result")
    expect(result).to_contain_text("runs")
    count = _api(served, "/api/sql?q=SELECT%20count(*)%20FROM%20workflow_executions")
    expect(result).to_contain_text(str(count["rows"][0][0]))

    page.get_by_test_id("sql-input").fill("SELECT * FROM read_text('/etc/passwd')")
    page.keyboard.press("Control+Enter")
    error = page.get_by_test_id("sql-error")
    expect(error).to_be_visible()
    assert "root:" not in page.content()


# -- hostile data, security ------------------------------------------------------------------------


def test_html_and_script_in_span_text_show_as_text_and_never_run(page: Any, served: UiServer) -> None:
    run_id = _execution_id(served, workflow_id=HOSTILE_WORKFLOW)
    page.goto(served.url + "/")
    expect(page.get_by_test_id("runs-table")).to_contain_text(HOSTILE)
    page.goto(f"{served.url}/executions/{run_id}")
    expect(page.get_by_test_id("waterfall")).to_contain_text(HOSTILE)
    page.locator("[data-testid=span-row]").filter(has_text=HOSTILE).nth(1).click()
    expect(page.get_by_test_id("span-panel")).to_contain_text(HOSTILE)
    expect(page.get_by_test_id("logs")).to_contain_text(HOSTILE)
    assert page.locator("img[src=x]").count() == 0
    assert page.evaluate("window.__pwned === undefined")


def test_pages_send_a_strict_content_security_policy_and_nosniff(served: UiServer) -> None:
    for path in ("/", "/stats", "/sql", "/static/app.js", "/api/executions"):
        answer = httpx.get(served.url + path, headers={"Origin": "http://evil.example"}, timeout=30)
        assert answer.status_code == 200, path
        policy = answer.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "unsafe-inline" not in policy, path
        assert answer.headers["x-content-type-options"] == "nosniff", path
        assert not [name for name in answer.headers if name.lower().startswith("access-control-")], path


def test_on_loopback_pages_refuse_a_foreign_host_header(served: UiServer) -> None:
    assert httpx.get(served.url + "/", headers={"Host": "evil.example"}, timeout=30).status_code == 400


def test_a_token_guards_the_pages_and_a_token_link_logs_in_with_a_strict_cookie(
    page: Any, demo_db: Path
) -> None:
    with ui_server(demo_db, "--token", "s3cret-token") as server:
        assert httpx.get(server.url + "/api/executions", timeout=30).status_code == 401
        answer = httpx.get(server.url + "/", timeout=30)
        assert answer.status_code == 401
        assert "s3cret" not in answer.text

        page.goto(server.url + "/?token=s3cret-token")
        expect(_run_rows(page).first).to_be_visible()
        assert "token=" not in page.url
        cookie = next(c for c in page.context.cookies() if c["name"] == "otel_workflow_token")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

        wrong = httpx.get(server.url + "/", cookies={"otel_workflow_token": "wrong"}, timeout=30)
        assert wrong.status_code == 401


# -- layout and size -------------------------------------------------------------------------------


def test_pages_fit_a_390_pixel_wide_window(browser: Any, served: UiServer) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844})
    narrow = context.new_page()
    narrow.set_default_timeout(_WAIT_MS)
    problems = PageProblems(narrow)
    run_id = _execution_id(served, status="failed", workflow_id="order-pipeline")
    for path in ("/", f"/executions/{run_id}", "/stats", "/sql"):
        narrow.goto(served.url + path)
        narrow.wait_for_load_state("networkidle")
        width = narrow.evaluate("document.documentElement.scrollWidth")
        assert width <= 390 + 1, (path, width)
    context.close()
    assert problems.messages == []


@pytest.mark.slow
def test_the_waterfall_of_a_5000_span_run_renders(page: Any, tmp_path: Path, capsys: Any) -> None:
    db = tmp_path / "big.duckdb"
    run_id = write_runs_in_process_of_its_own(db, "big")[0]
    with ui_server(db) as server:
        count = len(_api(server, f"/api/executions/{run_id}")["spans"])
        assert count >= 5_000
        started = time.perf_counter()
        page.goto(f"{server.url}/executions/{run_id}")
        expect(page.get_by_test_id("span-row")).to_have_count(count, timeout=60_000)
        elapsed = time.perf_counter() - started
        rendered = page.evaluate("performance.getEntriesByType('measure').map(m => [m.name, m.duration])")
    with capsys.disabled():
        # Reported, not asserted: this machine is shared.
        print(
            f"\n5,000-span waterfall: {count} rows in the page after {elapsed * 1000:.0f} ms "
            f"(navigation to last row); page measures: {rendered}"
        )
