"""Shared fixtures: a real TracerProvider wired to a real DuckDB file in tmp_path."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from otel_workflow import DuckDBSpanExporter, TraceStore, WorkflowSpanProcessor, WorkflowTracer
from otel_workflow.instrument.capture.flag import capture_limiter

SERVICE_NAME = "orders-svc"
WORKFLOW_ID = "orders"
CONFIG_VERSION = "sha256:0123abcd"


@pytest.fixture(autouse=True)
def _fresh_capture_budget() -> Iterator[None]:
    """The capture rate limit is per process; each test starts with a full budget."""
    capture_limiter().reset()
    yield
    capture_limiter().reset()


@dataclass
class Traced:
    """A store, a provider with WorkflowSpanProcessor + BatchSpanProcessor(DuckDBSpanExporter), a tracer."""

    path: Path
    store: TraceStore
    provider: TracerProvider
    processor: WorkflowSpanProcessor
    exporter: DuckDBSpanExporter
    wf: WorkflowTracer

    def __iter__(self) -> Iterator[Any]:
        # `store, provider, wf = traced`
        return iter((self.store, self.provider, self.wf))

    def sync(self) -> None:
        """Export everything ended so far and wait until the store has written it (provider stays up)."""
        assert self.provider.force_flush()
        assert self.store.flush(30)

    def finish(self) -> None:
        """Shut the provider down: flushes, and the exporter closes the store's writer. Idempotent."""
        self.provider.shutdown()

    def rows(self, query: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        return self.store.sql(query, params)

    def scalar(self, query: str, params: list[Any] | None = None) -> Any:
        rows = self.store.sql(query, params)
        assert len(rows) == 1, rows
        return rows[0][0]


def make_traced(path: Path, *, workflow_id: str = WORKFLOW_ID) -> Traced:
    store = TraceStore(path)
    provider = TracerProvider(
        resource=Resource.create({"service.name": SERVICE_NAME}), shutdown_on_exit=False
    )
    processor = WorkflowSpanProcessor(store)
    exporter = DuckDBSpanExporter(store)
    provider.add_span_processor(processor)
    provider.add_span_processor(
        BatchSpanProcessor(
            exporter, schedule_delay_millis=50, max_queue_size=50_000, max_export_batch_size=2_048
        )
    )
    wf = WorkflowTracer(workflow_id, tracer_provider=provider, config_version=CONFIG_VERSION)
    return Traced(path, store, provider, processor, exporter, wf)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "traces.duckdb"


@pytest.fixture
def traced(db_path: Path) -> Iterator[Traced]:
    setup = make_traced(db_path)
    try:
        yield setup
    finally:
        setup.provider.shutdown()
        setup.store.close()
