"""Zero-code setup: the `workflow_duckdb` exporter entry point and the post-instrument hook, down to a
real `opentelemetry-instrument` launch that stores into DuckDB and exports OTLP to a collector."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
from collector_support import assert_same_rows, served
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult
from opentelemetry.trace import NoOpTracerProvider

from otel_workflow import TraceStore, WorkflowSpanProcessor, WorkflowTracer
from otel_workflow.sdk import autoconfig
from otel_workflow.sdk.autoconfig import WorkflowDuckDBExporter, install_processor, post_instrument

MISSING = """the entry point is not registered: pyproject.toml needs
[project.entry-points.opentelemetry_traces_exporter]
workflow_duckdb = "otel_workflow.sdk.autoconfig:WorkflowDuckDBExporter"
[project.entry-points.opentelemetry_post_instrument]
otel_workflow = "otel_workflow.sdk.autoconfig:post_instrument"
and a reinstall (pip install -e .)"""


def test_the_entry_points_are_registered() -> None:
    exporters = entry_points(group="opentelemetry_traces_exporter", name="workflow_duckdb")
    assert exporters, MISSING
    assert {ep.load() for ep in exporters} == {WorkflowDuckDBExporter}
    hooks = [ep for ep in entry_points(group="opentelemetry_post_instrument") if ep.name == "otel_workflow"]
    assert hooks, MISSING
    assert {ep.load() for ep in hooks} == {post_instrument}


def _provider() -> TracerProvider:
    return TracerProvider(resource=Resource.create({"service.name": "auto"}), shutdown_on_exit=False)


def test_the_exporter_stores_into_the_database_the_environment_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "from-env.duckdb"
    monkeypatch.setenv("OTEL_WORKFLOW_DB", str(db))
    exporter = WorkflowDuckDBExporter()  # as the SDK builds it: no arguments
    assert exporter.store.path == str(db)
    provider = _provider()
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=50))
    processor = install_processor(provider)
    assert processor is not None and processor.store is exporter.store  # live rows share the store
    assert install_processor(provider) is None  # once is enough
    wf = WorkflowTracer("auto", tracer_provider=provider)
    with wf.execution() as run:
        with wf.step("one"):
            pass
        with wf.step("two"):
            pass
    provider.shutdown()
    store = TraceStore(db, read_only=True)
    assert store.sql("SELECT id, status FROM workflow_executions") == [(run.execution_id, "completed")]
    assert store.sql("SELECT step_name, sequence_num FROM execution_steps ORDER BY 2") == [
        ("one", 1),
        ("two", 2),
    ]
    # Shut down, the exporter's store is no longer the one a new processor would share.
    assert autoconfig._exporter_store() is None


def test_an_unusable_database_is_logged_and_does_not_break_the_setup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OTEL_WORKFLOW_DB", str(tmp_path / "no such folder" / "x.duckdb"))
    with caplog.at_level(logging.ERROR, logger="otel_workflow"):
        exporter = WorkflowDuckDBExporter()
    assert "stores nothing" in caplog.text and "does not exist" in caplog.text
    assert exporter.export([]) == SpanExportResult.FAILURE
    assert exporter.force_flush()
    exporter.shutdown()
    # With no usable store of an exporter, the processor works without one (it still numbers steps).
    processor = install_processor(_provider())
    assert processor is not None and processor.store is None


def test_the_hook_adds_the_processor_to_the_global_provider_unless_told_not_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    provider = _provider()
    monkeypatch.setattr(autoconfig.trace, "get_tracer_provider", lambda: provider)

    def processors() -> list[object]:
        return list(provider._active_span_processor._span_processors)

    monkeypatch.setenv("OTEL_WORKFLOW_PROCESSOR", "false")
    post_instrument()
    assert processors() == []
    monkeypatch.delenv("OTEL_WORKFLOW_PROCESSOR")
    post_instrument()
    assert [type(p) for p in processors()] == [WorkflowSpanProcessor]
    # Nothing configured the SDK (no distro): the hook leaves the no-op provider alone.
    monkeypatch.setattr(autoconfig.trace, "get_tracer_provider", NoOpTracerProvider)
    post_instrument()


def test_the_hook_never_raises(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("broken on purpose")

    monkeypatch.setattr(autoconfig, "install_processor", broken)
    with caplog.at_level(logging.ERROR, logger="otel_workflow"):
        post_instrument()
    assert "could not add WorkflowSpanProcessor" in caplog.text


APP = textwrap.dedent(
    """
    import json, sys
    from opentelemetry import trace
    from otel_workflow import WorkflowSpanProcessor, WorkflowTracer

    # No setup code: opentelemetry-instrument configured the provider from the environment.
    processors = trace.get_tracer_provider()._active_span_processor._span_processors
    workflow = [p for p in processors if isinstance(p, WorkflowSpanProcessor)]
    exporters = [type(p.span_exporter).__name__ for p in processors if hasattr(p, "span_exporter")]

    wf = WorkflowTracer("zero-code")
    ids, live = [], None
    for number in range(3):
        with wf.execution(trigger_type="cli", triggered_by="ops@example.com") as run:
            with wf.step("extract"):
                if number == 0:
                    # While it runs, the execution and this step have live `running` rows.
                    store = workflow[0].store
                    store.flush()
                    live = store.sql("SELECT count(*) FROM running_spans")[0][0]
            with wf.step("load") as step:
                step.span.add_event("rows.loaded", {"count": number})
        ids.append(run.execution_id)
    try:
        with wf.execution(trigger_type="cli"), wf.step("explode"):
            raise RuntimeError("zero-code failure")
    except RuntimeError:
        pass
    report = {"workflow_processors": len(workflow), "exporters": exporters, "ids": ids, "live": live}
    print(json.dumps(report))
    """
)


def _launcher() -> str:
    # Beside the interpreter running the tests: the README's test command does not put the venv on PATH.
    found = shutil.which("opentelemetry-instrument", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("opentelemetry-instrument is not installed: pip install opentelemetry-distro")
    return found


def _run_instrumented(folder: Path, app: str, env: Mapping[str, str]) -> tuple[dict[str, Any], str]:
    """Run `app` (Python source, saved in `folder`) under `opentelemetry-instrument`; its report and stderr.

    The environment is this process's with `env` over it (metrics off, spans exported every 100 ms
    unless `env` says otherwise). The app must exit 0 and print its report, JSON, as its last line.
    """
    script = folder / "app.py"
    script.write_text(app)
    done = subprocess.run(
        [_launcher(), sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OTEL_METRICS_EXPORTER": "none", "OTEL_BSP_SCHEDULE_DELAY": "100", **env},
        cwd=folder,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


@pytest.mark.slow
def test_opentelemetry_instrument_with_the_entry_point_stores_and_exports_without_code(
    tmp_path: Path,
) -> None:
    assert entry_points(group="opentelemetry_traces_exporter", name="workflow_duckdb"), MISSING
    direct = tmp_path / "direct.duckdb"
    with served(tmp_path / "collector.duckdb") as collector:
        env = {
            "OTEL_TRACES_EXPORTER": "workflow_duckdb,otlp",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": collector.traces_url,
            "OTEL_LOGS_EXPORTER": "none",
            "OTEL_SERVICE_NAME": "zero-code-app",
            "OTEL_WORKFLOW_DB": str(direct),
        }
        report, stderr = _run_instrumented(tmp_path, APP, env)
        assert report["workflow_processors"] == 1, stderr
        assert sorted(report["exporters"]) == ["OTLPSpanExporter", "WorkflowDuckDBExporter"]
        assert report["live"] >= 2  # the hook's processor shares the exporter's store
        assert collector.store.flush(30)

        stored = TraceStore(direct, read_only=True)
        executions = stored.sql(
            "SELECT id, status, service_name FROM workflow_executions WHERE status = 'completed'"
        )
        assert sorted(executions) == sorted((i, "completed", "zero-code-app") for i in report["ids"])
        assert stored.sql("SELECT count(*) FROM workflow_executions WHERE status = 'failed'") == [(1,)]
        assert stored.sql(
            "SELECT DISTINCT step_name, sequence_num FROM execution_steps "
            "WHERE step_name <> 'explode' ORDER BY 2"
        ) == [("extract", 1), ("load", 2)]
        assert stored.sql("SELECT count(*) FROM running_spans") == [(0,)]
        # The same spans went to the collector over OTLP: the same rows there.
        assert_same_rows(stored, collector.store, may_be_empty=["span_links"])


LOGGING_APP = textwrap.dedent(
    """
    import json, logging
    from opentelemetry import _logs
    from otel_workflow import WorkflowTracer

    # No setup code: opentelemetry-instrument made the logger provider and, through
    # opentelemetry-instrumentation-logging, put its handler on the root logger.
    wf = WorkflowTracer("zero-code-logs")
    with wf.execution(trigger_type="cli") as run, wf.step("load"):
        logging.getLogger("app").warning("loaded %d rows", 3, extra={"password": "hunter2"})
    logging.getLogger("app").warning("outside any run")
    _logs.get_logger_provider().force_flush()
    print(json.dumps({"id": run.execution_id}))
    """
)


@pytest.mark.slow
def test_opentelemetry_instrument_stores_log_records_through_the_logs_entry_point(tmp_path: Path) -> None:
    assert entry_points(group="opentelemetry_logs_exporter", name="workflow_duckdb"), MISSING
    database = tmp_path / "logs.duckdb"
    env = {
        "OTEL_TRACES_EXPORTER": "workflow_duckdb",
        "OTEL_LOGS_EXPORTER": "workflow_duckdb",
        "OTEL_SERVICE_NAME": "zero-code-logs",
        "OTEL_WORKFLOW_DB": str(database),
        "OTEL_BLRP_SCHEDULE_DELAY": "100",
    }
    report, stderr = _run_instrumented(tmp_path, LOGGING_APP, env)
    execution_id = report["id"]
    stored = TraceStore(database, read_only=True)
    # One store for both signals in the process: the log exporter shared the span exporter's.
    rows = stored.sql(
        "SELECT message, module_name, fields ->> 'password' FROM execution_logs "
        "WHERE execution_id = ? AND id LIKE 'log:%'",
        [execution_id],
    )
    assert rows == [("loaded 3 rows", "load", "[REDACTED]")], stderr
    assert stored.sql("SELECT count(*), count(trace_id), min(service_name) FROM log_records") == [
        (2, 1, "zero-code-logs")
    ]
