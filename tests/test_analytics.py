"""The ready-made macros: slowest executions, failure rate over time, critical path, p95 shift."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from datetime import timedelta

import duckdb
import pytest
from analytics_support import Filled, build_database
from conftest import Traced
from opentelemetry import trace

from otel_workflow import TraceStore
from otel_workflow.storage.analytics import MACROS


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Filled:
    return build_database(tmp_path_factory.mktemp("analytics") / "traces.duckdb")


@pytest.fixture
def store(filled: Filled) -> TraceStore:
    return TraceStore(filled.path, read_only=True)


def rows(store: TraceStore, query: str, params: list[object] | None = None) -> list[dict[str, object]]:
    return store.arrow(query, params).to_pylist()


def test_macros_are_in_the_database_for_any_client(filled: Filled) -> None:
    with duckdb.connect(str(filled.path), read_only=True) as connection:
        found = {
            name
            for (name,) in connection.execute(
                "SELECT function_name FROM duckdb_functions() WHERE function_type = 'table_macro'"
            ).fetchall()
        }
    assert set(MACROS) <= found


def test_slowest_executions(store: TraceStore, filled: Filled) -> None:
    top = rows(store, "SELECT * FROM slowest_executions(n := 3)")
    ended = store.executions(status=["completed", "failed"], limit=None)
    expected = sorted(ended, key=lambda row: -(row.duration_ms or 0))[:3]
    assert [row["id"] for row in top] == [row.id for row in expected]
    assert len(rows(store, "SELECT * FROM slowest_executions()")) == min(10, len(ended))
    billing = rows(store, "SELECT * FROM slowest_executions(workflow := 'billing')")
    assert [(row["id"], row["slowest_step"]) for row in billing] == [(filled.billing_id, "invoice")]
    recent = rows(store, "SELECT id FROM slowest_executions(n := 100, since := now() - INTERVAL 1 DAY)")
    assert filled.old_id not in {row["id"] for row in recent}
    assert len(recent) == len(ended) - 1
    old = rows(store, "SELECT id FROM slowest_executions(until := now() - INTERVAL 7 DAY)")
    assert old == [{"id": filled.old_id}]
    # The slowest top-level step is a direct child of the execution.
    [failed] = rows(store, "SELECT * FROM slowest_executions(n := 100) WHERE id = ?", [filled.failed_id])
    top_steps = [step for step in store.steps(filled.failed_id) if step.parent_step_id is None]
    slowest = max(top_steps, key=lambda step: step.duration_ms or 0)
    assert (failed["slowest_step"], failed["slowest_step_ms"]) == (slowest.step_name, slowest.duration_ms)


def test_failure_rate_over_time(store: TraceStore, filled: Filled) -> None:
    daily = rows(
        store, "SELECT * FROM failure_rate_over_time(bucket := INTERVAL 1 DAY, workflow := 'order-pipeline')"
    )
    assert sum(row["executions"] for row in daily) == len(filled.demo_ids) + 2
    assert sum(row["failed"] for row in daily) == 1
    for row in daily:
        assert row["failure_rate"] == pytest.approx(row["failed"] / row["executions"])
        assert row["bucket_start"].timestamp() % 86_400 == 0  # UTC midnight
    buckets = [row["bucket_start"] for row in daily]
    assert buckets == sorted(buckets)
    assert buckets[-1] - buckets[0] >= timedelta(days=9)
    hourly = rows(store, "SELECT * FROM failure_rate_over_time(since := now() - INTERVAL 1 DAY)")
    assert {row["workflow_id"] for row in hourly} == {"order-pipeline", "billing"}
    assert sum(row["executions"] for row in hourly) == len(filled.all_ids) - 1


def test_critical_path_of_a_sequential_pipeline(store: TraceStore, filled: Filled) -> None:
    for execution_id in filled.demo_ids:
        path = rows(store, "SELECT * FROM critical_path(?)", [execution_id])
        detail = store.execution(execution_id)
        # Every demo step runs after the previous one ends, so all of them are on the path.
        assert {row["span_id"] for row in path} == {line.span_id for line in detail.spans}
        assert path[0]["span_id"] == detail.span_id and path[0]["depth"] == 0
        depth = {line.span_id: line.depth for line in detail.spans}
        assert all(row["depth"] == depth[row["span_id"]] for row in path)
        total_self = sum(row["self_ms"] for row in path)
        assert total_self == pytest.approx(detail.duration_ms)
    assert rows(store, "SELECT * FROM critical_path('no-such-execution')") == []


@pytest.fixture
def parallel(traced: Traced) -> Iterator[tuple[TraceStore, str, dict[str, str]]]:
    """root 0-100 ms with children A 0-30, B 10-90 (B1 10-50, B2 50-88), C 20-40 running beside B."""
    tracer = traced.provider.get_tracer("tests.parallel")
    t0 = time.time_ns() - 3_600 * 10**9
    ms = 10**6
    ids: dict[str, str] = {}

    def span(name: str, start: int, end: int, parent: trace.Span) -> trace.Span:
        child = tracer.start_span(
            f"workflow.step.{name}",
            context=trace.set_span_in_context(parent),
            start_time=t0 + start * ms,
            attributes={"workflow.step.name": name, "workflow.execution.id": "parallel-1"},
        )
        child.end(end_time=t0 + end * ms)
        ids[name] = f"{child.get_span_context().span_id:016x}"
        return child

    root = tracer.start_span(
        "workflow.execute",
        start_time=t0,
        attributes={"workflow.id": "fan-out", "workflow.execution.id": "parallel-1"},
    )
    span("A", 0, 30, root)
    b = tracer.start_span(
        "workflow.step.B",
        context=trace.set_span_in_context(root),
        start_time=t0 + 10 * ms,
        attributes={"workflow.step.name": "B", "workflow.execution.id": "parallel-1"},
    )
    span("B1", 10, 50, b)
    span("B2", 50, 88, b)
    b.end(end_time=t0 + 90 * ms)
    ids["B"] = f"{b.get_span_context().span_id:016x}"
    span("C", 20, 40, root)
    root.end(end_time=t0 + 100 * ms)
    ids["root"] = f"{root.get_span_context().span_id:016x}"
    traced.sync()
    yield traced.store, "parallel-1", ids


def test_critical_path_with_parallel_children(parallel: tuple[TraceStore, str, dict[str, str]]) -> None:
    store, execution_id, ids = parallel
    path = rows(store, "SELECT span_id, depth, duration_ms, self_ms FROM critical_path(?)", [execution_id])
    names = {span_id: name for name, span_id in ids.items()}
    # B ends last; nothing ends before B starts; inside B, B2 ends last and B1 ends before B2 starts.
    assert [(names[row["span_id"]], row["depth"]) for row in path] == [
        ("root", 0),
        ("B", 1),
        ("B1", 2),
        ("B2", 2),
    ]
    self_ms = {names[row["span_id"]]: row["self_ms"] for row in path}
    assert self_ms["root"] == pytest.approx(100.0 - 80.0)  # B, 10-90 ms, covers 80 ms of the root's 100
    assert self_ms["B"] == pytest.approx(80.0 - 40.0 - 38.0)
    assert self_ms["B2"] == pytest.approx(38.0)


def test_step_p95_shift(store: TraceStore) -> None:
    query = (
        "SELECT * FROM step_p95_shift(now() - INTERVAL 30 DAY, now() - INTERVAL 7 DAY, "
        "now() - INTERVAL 7 DAY, now())"
    )
    [validate] = rows(store, query)
    assert (validate["workflow_id"], validate["step_name"]) == ("order-pipeline", "validate")
    current = [
        row[0]
        for row in store.sql(
            "SELECT duration_ms FROM execution_steps WHERE step_name = 'validate' "
            "AND started_at >= now() - INTERVAL 7 DAY"
        )
    ]
    assert validate["baseline_runs"] == 1 and validate["current_runs"] == len(current)
    assert validate["baseline_p95_ms"] == pytest.approx(5.0)  # the old step ran exactly 5 ms
    assert validate["current_p95_ms"] == pytest.approx(
        statistics.quantiles(current, n=20, method="inclusive")[-1]
    )
    assert validate["change_ms"] == pytest.approx(validate["current_p95_ms"] - 5.0)
    assert validate["change_ratio"] == pytest.approx((validate["current_p95_ms"] - 5.0) / 5.0)
    assert rows(store, query.replace("now())", "now(), min_runs := 2)")) == []
