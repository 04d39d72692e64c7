"""The multi-process setups of the README's guide, each with real processes and a real collector:
several client processes at once, gunicorn-style pre-fork workers, and a mix of a service writing
in-process with workers exporting OTLP to `serve`, all into one database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from collector_support import served
from reliability_support import FORK_WARNING

from otel_workflow import TraceStore
from otel_workflow.server.app import ReceiverLimits

RUNS = 8
STEPS = 4

# One module for every child process: `python clients.py MODE ENDPOINT_OR_DB OUT_DIR`.
CLIENTS = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path

    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from otel_workflow import WorkflowSpanProcessor, WorkflowTracer, configure

    RUNS, STEPS = int(os.environ["RUNS"]), int(os.environ["STEPS"])


    def otlp_provider(endpoint, service):
        # What each worker process has: WorkflowSpanProcessor without a store (it numbers the steps),
        # and the standard OTLP exporter to the collector.
        provider = TracerProvider(resource=Resource.create({"service.name": service}))
        provider.add_span_processor(WorkflowSpanProcessor())
        exporter = OTLPSpanExporter(endpoint=endpoint, timeout=30)
        provider.add_span_processor(
            BatchSpanProcessor(exporter, schedule_delay_millis=50, max_export_batch_size=16)
        )
        return provider


    def work(provider, name, out):
        wf = WorkflowTracer("jobs", tracer_provider=provider)
        ids = []
        for _ in range(RUNS):
            with wf.execution(trigger_type=name) as run:
                for number in range(STEPS):
                    with wf.step(f"step-{number}"):
                        pass
            ids.append(run.execution_id)
        provider.shutdown()  # flushes: every span is exported (or the export failed) before this returns
        Path(out, f"{name}.json").write_text(json.dumps(ids))


    def prefork(endpoint, out, workers, preload):
        # gunicorn's two ways: `preload` builds the provider in the master before forking (the SDK's
        # batch processor restarts its thread in each child); otherwise each worker builds its own
        # after the fork, as in gunicorn's post_fork hook.
        provider = otlp_provider(endpoint, "prefork") if preload else None
        children = []
        for number in range(workers):
            pid = os.fork()
            if pid == 0:
                try:
                    work(provider or otlp_provider(endpoint, "prefork"), f"worker-{number}", out)
                finally:
                    os._exit(0)
            children.append(pid)
        failed = [pid for pid in children if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0]
        sys.exit(1 if failed else 0)


    mode, target, out = sys.argv[1], sys.argv[2], sys.argv[3]
    if mode == "client":
        work(otlp_provider(target, "client"), f"client-{os.getpid()}", out)
    elif mode in ("prefork", "preload"):
        prefork(target, out, int(sys.argv[4]), preload=mode == "preload")
    elif mode == "in-process":
        # A service that writes the database itself, taking turns on the file with the collector.
        telemetry = configure(target, service_name="web")
        work(telemetry.tracer_provider, "web", out)
        telemetry.shutdown()
    """
)


@pytest.fixture
def clients(tmp_path: Path) -> Iterator[Path]:
    script = tmp_path / "clients.py"
    script.write_text(CLIENTS)
    yield script


def start(script: Path, *args: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-W", FORK_WARNING, str(script), *(str(a) for a in args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "RUNS": str(RUNS), "STEPS": str(STEPS)},
    )


def finish(processes: list[subprocess.Popen[str]]) -> None:
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, f"a client failed:\n{out}\n{err}"


def reported(out: Path) -> dict[str, list[str]]:
    """Execution ids each process says it ran, by process name."""
    return {path.stem: json.loads(path.read_text()) for path in out.glob("*.json")}


def assert_all_landed(store: TraceStore, ran: dict[str, list[str]]) -> None:
    """Every execution every process ran is stored once, complete, with its steps numbered 1..STEPS."""
    expected = sorted(i for ids in ran.values() for i in ids)
    assert store.flush(30)
    stored = sorted(row[0] for row in store.sql("SELECT id FROM workflow_executions"))
    assert stored == expected, "executions lost or duplicated"
    assert store.sql("SELECT DISTINCT status FROM workflow_executions") == [("completed",)]
    steps = store.sql(
        "SELECT execution_id, list(sequence_num ORDER BY sequence_num), count(*) "
        "FROM execution_steps GROUP BY 1"
    )
    assert len(steps) == len(expected)
    assert all(numbers == list(range(1, STEPS + 1)) for _, numbers, _ in steps), steps
    spans = store.sql("SELECT count(*), count(DISTINCT (trace_id, span_id)) FROM spans")[0]
    assert spans == (len(expected) * (STEPS + 1),) * 2, "spans lost or duplicated"
    assert store.sql("SELECT count(*) FROM running_spans WHERE interrupted_at IS NULL") == [(0,)]
    assert store.dropped_spans == 0


@pytest.mark.slow
def test_several_client_processes_at_once_lose_and_duplicate_nothing(tmp_path: Path, clients: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    # One ingest slot for four senders, and no wait for it: requests that overlap are answered 429
    # and retried by the exporters, as under real load.
    limits = ReceiverLimits(max_concurrent_ingest=1, ingest_wait_s=0)
    with served(tmp_path / "collector.duckdb", limits=limits) as server:
        processes = [start(clients, "client", server.traces_url, out) for _ in range(4)]
        finish(processes)
        ran = reported(out)
        assert len(ran) == 4
        assert_all_landed(server.store, ran)
        status = httpx.get(server.url + "/api/status").json()
        print("requests refused while busy, and retried:", status["refused"]["busy"])


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["prefork", "preload"])
def test_pre_fork_workers_export_to_the_collector(tmp_path: Path, clients: Path, mode: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with served(tmp_path / "collector.duckdb") as server:
        finish([start(clients, mode, server.traces_url, out, 3)])
        ran = reported(out)
        assert sorted(ran) == ["worker-0", "worker-1", "worker-2"]
        assert_all_landed(server.store, ran)
        services = server.store.sql("SELECT DISTINCT service_name FROM workflow_executions")
        assert services == [("prefork",)]


@pytest.mark.slow
def test_a_service_in_process_and_workers_through_the_collector_share_one_database(
    tmp_path: Path, clients: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    db = tmp_path / "shared.duckdb"
    with served(db) as server:
        processes = [
            start(clients, "in-process", db, out),
            start(clients, "prefork", server.traces_url, out, 2),
        ]
        finish(processes)
        ran = reported(out)
        assert sorted(ran) == ["web", "worker-0", "worker-1"]
        assert_all_landed(server.store, ran)
        by_service = dict(
            server.store.sql("SELECT service_name, count(*) FROM workflow_executions GROUP BY 1")
        )
        assert by_service == {"web": RUNS, "prefork": 2 * RUNS}


@pytest.mark.slow
def test_the_in_process_service_alone_is_the_single_process_setup(tmp_path: Path, clients: Path) -> None:
    # The first setup of the guide: one service, no collector; another process (this one) reads.
    out = tmp_path / "out"
    out.mkdir()
    db = tmp_path / "alone.duckdb"
    finish([start(clients, "in-process", db, out)])
    store = TraceStore(db, read_only=True)
    ran = reported(out)
    assert sorted(row[0] for row in store.sql("SELECT id FROM workflow_executions")) == sorted(ran["web"])
