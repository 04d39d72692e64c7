"""Issue 6, item 6: disk and file faults. A database path in a missing or read-only folder, a full disk, a
file from a future schema version, a damaged file: a clear error (StoreError) when the store is opened;
when the fault comes while the application runs, the writer counts what it could not store, logs it once
per interval, keeps going, and writes again once the fault is gone. The application never sees an
exception from us and nothing else is lost (other exporters, other databases, spans stored before).

The read-only folder (root ignores file modes) and the full disk use mounts: a read-only bind mount and
a small tmpfs. Where the machine does not allow them, those tests are skipped and say why.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from reliability_support import check_database, open_files_in, read_only_folder, set_writable, small_tmpfs
from support import wait_until

from otel_workflow import (
    DuckDBSpanExporter,
    StoreError,
    TraceStore,
    WorkflowSpanProcessor,
    WorkflowTracer,
    configure,
)
from otel_workflow.storage.schema import VERSION_TABLE

STEPS = 2

MakeApp = Callable[..., "App"]


@dataclass
class App:
    """An application traced into one store, with an in-memory exporter and a second store beside it."""

    store: TraceStore
    other: TraceStore
    memory: InMemorySpanExporter
    provider: TracerProvider
    wf: WorkflowTracer

    def work(self, count: int, *, payload: str = "") -> int:
        """Run `count` executions; the spans made. Nothing here may raise."""
        for _ in range(count):
            with self.wf.execution(trigger_type="fault"):
                for index in range(STEPS):
                    with self.wf.step(f"s{index}") as step:
                        if payload:
                            step.span.set_attribute("payload", payload)
        return count * (STEPS + 1)

    def stored(self, store: TraceStore | None = None) -> int:
        return int((store or self.store).sql("SELECT count(*) FROM spans")[0][0])

    def close(self) -> None:
        self.provider.shutdown()
        self.store.close()
        self.other.close()


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[MakeApp]:
    apps: list[App] = []

    def make(db: Path) -> App:
        store = TraceStore(db)
        other = TraceStore(tmp_path / "elsewhere" / f"other-{len(apps)}.duckdb")
        memory = InMemorySpanExporter()
        provider = TracerProvider(
            resource=Resource.create({"service.name": "faults"}), shutdown_on_exit=False
        )
        provider.add_span_processor(WorkflowSpanProcessor(store))
        for exporter in (DuckDBSpanExporter(store), DuckDBSpanExporter(other), memory):
            provider.add_span_processor(SimpleSpanProcessor(exporter))
        app = App(store, other, memory, provider, WorkflowTracer("faults", tracer_provider=provider))
        apps.append(app)
        return app

    (tmp_path / "elsewhere").mkdir()
    yield make
    for app in apps:
        app.close()


@pytest.fixture
def warnings_logged(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING, logger="otel_workflow")
    return caplog


def drop_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "otel-workflow dropped" in r.getMessage()]


def assert_nothing_else_lost(app: App, produced: int) -> None:
    assert len(app.memory.get_finished_spans()) == produced
    assert app.other.flush(30)
    assert app.stored(app.other) == produced
    assert app.other.dropped_spans == 0


# -- when the store is opened: a clear, early error --------------------------------------------------


def test_missing_folder(tmp_path: Path) -> None:
    db = tmp_path / "no" / "such" / "folder" / "traces.duckdb"
    for opener in (TraceStore, DuckDBSpanExporter, configure):
        with pytest.raises(StoreError, match=r"the folder .* does not exist"):
            opener(db)
    assert not (tmp_path / "no").exists()


def test_read_only_folder(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    TraceStore(folder / "existing.duckdb").close()
    with read_only_folder(folder):
        with pytest.raises(StoreError, match=r"not writable.*Choose a folder") as new:
            TraceStore(folder / "new.duckdb")
        assert "new.duckdb" in str(new.value)
        with pytest.raises(StoreError, match="not writable"):
            configure(folder / "existing.duckdb")
        # Reading is still possible: read_only=True, as the message says.
        with TraceStore(folder / "existing.duckdb", read_only=True) as reader:
            assert reader.sql("SELECT count(*) FROM spans") == [(0,)]
    assert not (folder / "new.duckdb").exists()


def test_future_schema_version(db_path: Path) -> None:
    TraceStore(db_path).close()
    with duckdb.connect(str(db_path)) as connection:
        connection.execute(f"INSERT INTO {VERSION_TABLE} VALUES (999, now())")
    before = db_path.read_bytes()
    for opener in (TraceStore, DuckDBSpanExporter, configure):
        with pytest.raises(StoreError, match=r"schema version 999, newer .* upgrade otel-workflow"):
            opener(db_path)
    assert db_path.read_bytes() == before


def _damaged_copies(tmp_path: Path) -> dict[str, Path]:
    good = tmp_path / "good.duckdb"
    with TraceStore(good) as store:
        store.sql("CHECKPOINT")
    with duckdb.connect(str(good)) as connection:
        connection.execute(
            "CREATE TABLE filler AS SELECT range AS i, repeat('x', 200) AS s FROM range(20000)"
        )
    size = good.stat().st_size
    damaged: dict[str, Path] = {}
    damaged["random bytes"] = tmp_path / "random.duckdb"
    damaged["random bytes"].write_bytes(os.urandom(300_000))
    damaged["text"] = tmp_path / "text.duckdb"
    damaged["text"].write_text("this is not a database\n")
    damaged["truncated"] = tmp_path / "truncated.duckdb"
    shutil.copy(good, damaged["truncated"])
    os.truncate(damaged["truncated"], size // 3)
    damaged["header overwritten"] = tmp_path / "header.duckdb"
    shutil.copy(good, damaged["header overwritten"])
    with damaged["header overwritten"].open("r+b") as file:
        file.write(os.urandom(12_288))
    return damaged


def test_damaged_file(tmp_path: Path) -> None:
    for what, path in _damaged_copies(tmp_path).items():
        before = path.read_bytes()
        for opener in (TraceStore, DuckDBSpanExporter):
            with pytest.raises(StoreError, match=r"is not a usable DuckDB database.*Move it aside") as info:
                opener(path)
            assert str(path) in str(info.value), what
        with pytest.raises(StoreError, match="not a usable DuckDB database"):
            configure(path)
        assert path.read_bytes() == before, f"{what}: the damaged file was changed"


# -- while the application runs: counted, logged once, recovered ----------------------------------------


def test_file_replaced_by_garbage_while_running(
    tmp_path: Path, make_app: MakeApp, warnings_logged: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "traces.duckdb"
    app = make_app(db)
    produced = app.work(5)
    assert app.store.flush(30)
    assert app.stored() == produced
    db.write_bytes(os.urandom(200_000))
    produced += app.work(20)
    assert app.store.flush(30)
    assert app.store.dropped_spans == 20 * (STEPS + 1)
    assert app.store.dropped_by_reason["write_failed"] == app.store.dropped_spans
    [message] = drop_messages(warnings_logged)
    assert "because the database write failed" in message
    assert "not a valid DuckDB database" in message
    assert_nothing_else_lost(app, produced)


def test_file_deleted_while_running_is_made_again(tmp_path: Path, make_app: MakeApp) -> None:
    db = tmp_path / "traces.duckdb"
    app = make_app(db)
    app.work(3)
    assert app.store.flush(30)
    db.unlink()
    produced = app.work(4)
    assert app.store.flush(30)
    assert app.store.dropped_spans == 0
    # A new file, with the schema, holding what came after.
    assert app.stored() == produced
    assert app.store.sql("SELECT count(*) FROM workflow_executions WHERE status = 'completed'") == [(4,)]


def test_folder_deleted_while_running(
    tmp_path: Path, make_app: MakeApp, warnings_logged: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    app = make_app(folder / "traces.duckdb")
    produced = app.work(3)
    assert app.store.flush(30)
    shutil.rmtree(folder)
    produced += app.work(5)
    assert app.store.flush(30)
    lost = app.store.dropped_spans
    assert lost == 5 * (STEPS + 1)
    assert len(drop_messages(warnings_logged)) == 1
    folder.mkdir()
    produced += app.work(6)
    assert app.store.flush(30)
    assert app.store.dropped_spans == lost
    assert app.stored() == 6 * (STEPS + 1)
    assert_nothing_else_lost(app, produced)


def test_folder_turns_read_only_while_running(
    tmp_path: Path, make_app: MakeApp, warnings_logged: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    with read_only_folder(folder):
        set_writable(folder, True)
        app = make_app(folder / "traces.duckdb")
        produced = app.work(3)
        assert app.store.flush(30)
        # Linux refuses to remount a folder read-only while a file in it is open for writing: wait for
        # the idle writer to let go of the database, as an administrator's remount would have to.
        wait_until(lambda: not open_files_in(folder), timeout_s=10)
        set_writable(folder, False)
        produced += app.work(5)
        assert app.store.flush(30)
        lost = app.store.dropped_spans
        assert lost == 5 * (STEPS + 1)
        assert app.store.dropped_by_reason["write_failed"] == lost
        [message] = drop_messages(warnings_logged)
        assert "Read-only file system" in message or "Permission denied" in message
        set_writable(folder, True)
        produced += app.work(4)
        assert app.store.flush(30)
        assert app.store.dropped_spans == lost
        assert app.stored() == (3 + 4) * (STEPS + 1)
        assert_nothing_else_lost(app, produced)
        app.close()
        check_database(folder / "traces.duckdb")


def test_disk_full_while_running(
    tmp_path: Path, make_app: MakeApp, warnings_logged: pytest.LogCaptureFixture
) -> None:
    with small_tmpfs(tmp_path / "small", "8m") as disk:
        app = make_app(disk / "traces.duckdb")
        produced = app.work(5)
        assert app.store.flush(30)
        # Fill the disk, all but a little.
        filler = disk / "filler"
        with filler.open("wb") as file:
            try:
                while True:
                    file.write(b"\0" * 65_536)
                    file.flush()
            except OSError:
                pass
        payload = "p" * 20_000
        produced += app.work(40, payload=payload)
        assert app.store.flush(30)
        lost = app.store.dropped_spans
        assert lost > 0
        assert app.store.dropped_by_reason["write_failed"] == lost
        [message] = drop_messages(warnings_logged)
        assert "No space left on device" in message
        # Space comes back: writing resumes, and what was stored before the disk filled is still there.
        filler.unlink()
        produced += app.work(5)
        assert app.store.flush(30)
        assert app.store.dropped_spans == lost
        assert app.stored() >= 10 * (STEPS + 1)
        # No execution lacks its steps: a failed write dropped its executions whole.
        without_steps = (
            "SELECT count(*) FROM workflow_executions e "
            "WHERE NOT EXISTS (SELECT 1 FROM execution_steps s WHERE s.execution_id = e.id)"
        )
        assert app.store.sql(without_steps) == [(0,)]
        assert_nothing_else_lost(app, produced)
        app.close()
        check_database(disk / "traces.duckdb")
