"""Data and servers for the web UI tests: runs written by a real SDK in a separate process, and
`otel-workflow ui` started as a user starts it.

Run as a script, it writes runs into a database file from its own process (the UI tests' "other
application"): `python tests/ui_support.py PATH demo|hostile|io|one|big`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).parent

# What an attacker puts in span text: each would run script if the page inserted it as HTML.
HOSTILE = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=1</script>'
HOSTILE_WORKFLOW = f"wf{HOSTILE}"
BIG_SPANS = 5_000


def write_runs(path: Path, kind: str) -> list[str]:
    """Write runs of `kind` into `path` with `configure()`; returns their execution ids."""
    from otel_workflow import WorkflowTracer, capture_io, configure  # noqa: PLC0415
    from otel_workflow.cli.demo import run_demo  # noqa: PLC0415

    service = HOSTILE if kind == "hostile" else "ui-test"
    telemetry = configure(str(path), service_name=service)
    provider = telemetry.tracer_provider
    ids: list[str] = []
    try:
        if kind == "demo":
            ids = run_demo(WorkflowTracer("order-pipeline", tracer_provider=provider), 5)
        elif kind == "one":
            ids = run_demo(WorkflowTracer("late-pipeline", tracer_provider=provider), 1)
        elif kind == "hostile":
            wf = WorkflowTracer(HOSTILE_WORKFLOW, tracer_provider=provider)
            try:
                with wf.execution(trigger_type=HOSTILE, triggered_by=HOSTILE) as run:
                    with wf.step(HOSTILE, step_type=HOSTILE) as step:
                        step.span.set_attribute(HOSTILE, HOSTILE)
                        step.span.add_event(HOSTILE, {"message": HOSTILE, "level": "warning"})
                    with wf.step("boom"):
                        raise RuntimeError(HOSTILE)
            except RuntimeError:
                pass
            ids = [run.execution_id]
        elif kind == "io":
            wf = WorkflowTracer("io-pipeline", tracer_provider=provider)
            with capture_io(), wf.execution(trigger_type="POST /orders") as run, wf.step("price") as step:
                step.record_input({"sku": "SKU-42", "quantity": 3, "note": HOSTILE})
                step.record_output({"total": {"amount": 59.97, "currency": "EUR"}})
            ids = [run.execution_id]
        elif kind == "big":
            wf = WorkflowTracer("big-pipeline", tracer_provider=provider)
            with wf.execution(trigger_type="batch") as run:
                for chunk in range(BIG_SPANS // 50):
                    with wf.step(f"chunk-{chunk}"):
                        for item in range(49):
                            with wf.otel_tracer.start_as_current_span(f"item-{item}"):
                                pass
            ids = [run.execution_id]
        else:
            raise ValueError(f"unknown kind {kind!r}")
    finally:
        telemetry.shutdown()
    return ids


def write_runs_in_process_of_its_own(path: Path, kind: str) -> list[str]:
    """`write_runs` in a separate Python process, as another application would write."""
    done = subprocess.run(
        [sys.executable, str(HERE / "ui_support.py"), str(path), kind],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
        },
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class UiServer:
    url: str
    process: subprocess.Popen[str]
    db: Path


@contextmanager
def ui_server(db: Path, *extra: str) -> Iterator[UiServer]:
    """`otel-workflow ui --db db --no-open` on a free port, until the block ends (then SIGTERM)."""
    from support import otel_workflow_command  # noqa: PLC0415

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "OTEL_WORKFLOW_TOKEN"}
    process = subprocess.Popen(
        [*otel_workflow_command(), "ui", "--db", str(db), "--port", str(port), "--no-open", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.communicate()
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=1) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield UiServer(url, process, db)
    finally:
        process.terminate()
        try:
            process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


if __name__ == "__main__":
    print("\n".join(write_runs(Path(sys.argv[1]), sys.argv[2])))
