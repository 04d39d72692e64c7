"""How many spans per second does `otel-workflow serve` store from other processes, over OTLP/HTTP and gRPC?

Run from the repository root:

    . .venv/bin/activate
    python benchmarks/collector.py                  # 1, 2, 4 clients, both transports and modes; ~4 min
    python benchmarks/collector.py --quick          # tiny sizes, 1 and 2 clients: every path in ~13 s
    python benchmarks/collector.py --transports grpc --modes preencoded --clients 1 --spans 100000

One `otel-workflow serve` per scenario (a fresh database in a temp folder, free ports, `--log-level
warning`), and N client processes (1, 2, 4; `multiprocessing`, spawn) sending into it with the real
OTLP exporters of the Python SDK, `export()` once per 512-span batch, as fast as the exporter
returns. Every client makes its spans first (`ingest.make_spans`: the benchmark's standard spans, 10
attributes and 1 event, execution/step mix; random ids, so no two clients share one), then waits at
a start line. Two modes:
- `exporter`: `OTLPSpanExporter.export(batch)` (HTTP protobuf, or gRPC with `insecure=True`), the
  encoding included: what an application's BatchSpanProcessor pays. On 2 cores the clients' protobuf
  encoding competes with the collector for the CPU, so this measures the machine more than the
  collector;
- `preencoded`: each client encodes its requests before the start line and sends the bytes through
  the same exporter's transport and retry logic (HTTP: the exporter's `_client.export(bytes)`; gRPC:
  the exporter's `_export` with a stub whose `Export` takes bytes,
  `channel.unary_unary(".../TraceService/Export", request_serializer=None)`). The collector is the
  bottleneck: this is its capacity figure.

Per scenario:
- stored spans/s: the spans in the database (counted with a read-only `TraceStore` after the server
  exited on SIGTERM) over the wall time from the start line until `/api/status` showed every span
  accepted and nothing queued (polled every 20 ms);
- the collector's CPU seconds per 100,000 spans (`/proc/<pid>/stat` utime + stime over the same
  interval), and the clients' own, for comparison;
- the export latency each client saw per call (p50, p99, max over every call of the scenario);
- export failures, the collector's refusals (`refused` of `/api/status`: busy slots, a saturated
  queue, which the exporters retry after `Retry-After`) and its dropped spans.
Stored must equal sent: every scenario stays below the collector's advertised limits (at most 4
clients = `max_concurrent_ingest`, 512-span requests), so a span lost or an export that failed
makes the script exit 1.

Baselines, in the same run, over the same kind of spans (made in this process) and their protobuf
bytes, single-threaded here:
- `parse-only`: `ExportTraceServiceRequest.FromString(bytes)` of `opentelemetry-proto` (upb), the
  floor of any Python receiver that parses the request;
- `decode`: `otel_workflow.otlp.decode.decode_protobuf(bytes)`, the collector's own decode step
  (bytes to SDK span objects), which explains most of the result;
- `in-process`: `DuckDBSpanExporter(TraceStore(file)).export(batch)` per batch, then `force_flush()`
  (`ingest.py`'s `ours`): what the same store ingests without the wire.
Targets (the collector issue): stores >= 100,000 spans/s on one core, >= the parse-only rate, and
nothing lost below its limits (drops above them counted). Every figure is the median of `--repeat`.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import http.client
import json
import logging
import math
import multiprocessing
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from ingest import BATCH, batches, make_spans, new_store, run_ours
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

TRANSPORTS = ("http", "grpc")
MODES = ("exporter", "preencoded")
TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
POLL_S = 0.02
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------------------
# Client processes


class _WarningCounter(logging.Handler):
    """Counts the exporters' warnings and errors (retries, failures) instead of printing each one."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.first = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if not self.first:
            self.first = record.getMessage()[:200]


class _RawTraceStub:
    """A TraceService stub whose `Export` takes the request's bytes (no serializer) and returns bytes."""

    def __init__(self, channel: Any) -> None:
        self.Export = channel.unary_unary(TRACE_EXPORT, request_serializer=None, response_deserializer=None)


def _sender(transport: str, mode: str, endpoint: str) -> tuple[Callable[[Any], bool], Callable[[], None]]:
    """(send one batch or request's bytes -> success, close) with the real exporter of `transport`."""
    if transport == "http":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter as HttpExporter,
        )

        http_exporter = HttpExporter(endpoint=endpoint)
        if mode == "exporter":
            return lambda batch: http_exporter.export(batch).name == "SUCCESS", http_exporter.shutdown
        # The exporter's own client: the same session, retries and Retry-After handling as export().
        client = getattr(http_exporter, "_client", None)
        if client is None:
            raise SystemExit(
                "preencoded HTTP sends through the exporter's `_client.export(bytes)` "
                "(opentelemetry-exporter-otlp-proto-http 1.45); this version has none"
            )
        return lambda data: client.export(data).success, http_exporter.shutdown

    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # noqa: PLC0415
        OTLPSpanExporter as GrpcExporter,
    )

    if mode == "exporter":
        grpc_exporter = GrpcExporter(endpoint=endpoint, insecure=True)
        return lambda batch: grpc_exporter.export(batch).name == "SUCCESS", grpc_exporter.shutdown

    class PreEncoded(GrpcExporter):
        """The gRPC exporter's `_export` (deadline, retries, RetryInfo, reconnect) over bytes."""

        def _translate_data(self, data: Any) -> Any:
            return data

        def _count_data(self, data: Any) -> int:
            return 0

    raw = PreEncoded(endpoint=endpoint, insecure=True)
    raw._stub = _RawTraceStub  # what a reconnect after UNAVAILABLE builds, too
    raw._client = _RawTraceStub(raw._channel)
    return lambda data: raw._export(data).name == "SUCCESS", raw.shutdown


def client_main(spans: int, connection: Connection, go: Any) -> None:
    """One client process: make spans and requests, then run the scenarios the parent sends."""
    counter = _WarningCounter()
    exporter_logger = logging.getLogger("opentelemetry.exporter")
    exporter_logger.addHandler(counter)
    exporter_logger.propagate = False
    work = batches(make_spans(spans))
    encoded = [encode_spans(batch).SerializeToString() for batch in work]
    gc.collect()
    gc.freeze()  # the spans live for the whole run, as in ingest.py
    connection.send(("made", len(encoded)))
    while (command := connection.recv()) is not None:
        transport, mode, endpoint, count = command
        items: Sequence[Any] = work if mode == "exporter" else encoded
        items = items[:count]
        send, close = _sender(transport, mode, endpoint)
        # An empty request opens the connection (and warms the server's path) before the start line.
        warmed = send([] if mode == "exporter" else b"")
        counter.count, counter.first = 0, ""
        connection.send(("ready", warmed, sum(len(batch) for batch in work[: len(items)])))
        go.wait()
        latencies: list[float] = []
        ok_spans = failures = 0
        cpu = time.process_time()
        start = time.perf_counter()
        for item, batch in zip(items, work, strict=False):
            began = time.perf_counter()
            success = send(item)
            latencies.append(time.perf_counter() - began)
            if success:
                ok_spans += len(batch)
            else:
                failures += 1
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu
        close()
        connection.send(("done", ok_spans, failures, latencies, cpu, elapsed, counter.count, counter.first))


@dataclass
class Client:
    process: Any
    connection: Connection
    batches: int


def start_clients(count: int, spans: int, go: Any) -> list[Client]:
    context = multiprocessing.get_context("spawn")
    pipes = [context.Pipe() for _ in range(count)]
    processes = [
        context.Process(target=client_main, args=(spans, child, go), daemon=True) for _, child in pipes
    ]
    for process in processes:
        process.start()
    clients = []
    for process, (parent, _) in zip(processes, pipes, strict=True):
        kind, made = receive(parent, process, 600)
        assert kind == "made"
        clients.append(Client(process, parent, made))
    return clients


def receive(connection: Connection, process: Any, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while not connection.poll(0.1):
        if not process.is_alive():
            raise SystemExit(f"a client process exited with code {process.exitcode}")
        if time.monotonic() > deadline:
            raise SystemExit(f"a client process did not answer within {timeout_s:.0f} s")
    return connection.recv()


def stop_clients(clients: list[Client]) -> None:
    for client in clients:
        with contextlib.suppress(OSError):
            client.connection.send(None)
    for client in clients:
        client.process.join(10)
        if client.process.is_alive():
            client.process.kill()
            client.process.join()


# ---------------------------------------------------------------------------------------------------
# The collector


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_command() -> list[str]:
    script = Path(sys.executable).with_name("otel-workflow")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from otel_workflow.cli.commands import main; sys.exit(main())"]


class Collector:
    """`otel-workflow serve` in a subprocess, on free ports, its stderr in a file."""

    def __init__(self, folder: Path, name: str) -> None:
        self.db = folder / f"{name}.duckdb"
        self.http_port, self.grpc_port = free_port(), free_port()
        self.log_path = folder / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                *serve_command(),
                "serve",
                "--db",
                str(self.db),
                "--port",
                str(self.http_port),
                "--grpc-port",
                str(self.grpc_port),
                "--log-level",
                "warning",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._http: http.client.HTTPConnection | None = None

    def endpoint(self, transport: str) -> str:
        if transport == "http":
            return f"http://127.0.0.1:{self.http_port}/v1/traces"
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-3000:]

    def get(self, path: str) -> Any:
        if self._http is None:
            self._http = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=30)
        try:
            self._http.request("GET", path)
            response = self._http.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException):
            self._http.close()
            self._http = None
            raise
        if response.status != 200:
            raise SystemExit(f"GET {path}: {response.status} {body[:200]!r}")
        return json.loads(body)

    def wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise SystemExit(f"serve exited with {self.process.returncode}:\n{self.log()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                self.get("/healthz")
                return
            if time.monotonic() > deadline:
                raise SystemExit(f"serve did not answer /healthz within {timeout_s:.0f} s:\n{self.log()}")
            time.sleep(0.05)

    def cpu_seconds(self) -> float:
        # utime and stime are fields 14 and 15; the command name (field 2) may hold spaces.
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def stop(self) -> int:
        """SIGTERM, and the exit code once it has written everything queued."""
        if self._http is not None:
            self._http.close()
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(120)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise SystemExit(f"serve did not exit within 120 s of SIGTERM:\n{self.log()}") from None

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()

    def stored(self) -> int:
        from otel_workflow import TraceStore  # noqa: PLC0415

        store = TraceStore(self.db, read_only=True)
        try:
            return int(store.sql("SELECT count(*) FROM spans")[0][0])
        finally:
            store.close()


# ---------------------------------------------------------------------------------------------------
# Scenarios


@dataclass(frozen=True)
class Scenario:
    transport: str
    mode: str
    clients: int

    @property
    def name(self) -> str:
        return f"{self.transport}-{self.mode}-{self.clients}"


@dataclass
class Outcome:
    sent: int
    stored: int
    seconds: float
    collector_cpu: float
    client_cpu: float
    latencies: list[float]
    failures: int
    refused: int
    dropped: int
    rejected: int
    warnings: int
    first_warning: str
    exit_code: int
    send_seconds: float

    @property
    def rate(self) -> float:
        return self.stored / self.seconds

    def per_100k(self, cpu: float) -> float:
        return cpu / max(self.stored, 1) * 100_000


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def run_scenario(
    scenario: Scenario, clients: list[Client], go: Any, folder: Path, batch_count: int
) -> Outcome:
    name = f"{scenario.name}-{time.monotonic_ns()}"
    collector = Collector(folder, name)
    try:
        collector.wait_ready()
        active = clients[: scenario.clients]
        endpoint = collector.endpoint(scenario.transport)
        go.clear()
        for client in active:
            client.connection.send((scenario.transport, scenario.mode, endpoint, batch_count))
        sent = 0
        for client in active:
            kind, warmed, spans = receive(client.connection, client.process, 120)
            assert kind == "ready"
            if not warmed:
                raise SystemExit(f"{scenario.name}: the warm-up export failed:\n{collector.log()}")
            sent += spans
        results: dict[int, tuple[Any, ...]] = {}
        timeout_s = 120 + sent / 2_000
        cpu = collector.cpu_seconds()
        start = time.perf_counter()
        go.set()
        while True:
            time.sleep(POLL_S)
            for index, client in enumerate(active):
                if index not in results and client.connection.poll():
                    results[index] = client.connection.recv()
                elif index not in results and not client.process.is_alive():
                    raise SystemExit(f"{scenario.name}: client {index} exited with {client.process.exitcode}")
            status = collector.get("/api/status")
            if status["queued"] == 0 and status["accepted_spans"] >= sent:
                break
            if len(results) == len(active):
                acknowledged = sum(result[1] for result in results.values())
                if status["queued"] == 0 and status["accepted_spans"] >= acknowledged:
                    break  # some exports failed: what was accepted is written
            if time.perf_counter() - start > timeout_s:
                raise SystemExit(f"{scenario.name}: not drained within {timeout_s:.0f} s: {status}")
        seconds = time.perf_counter() - start
        collector_cpu = collector.cpu_seconds() - cpu
        for index, client in enumerate(active):
            if index not in results:
                results[index] = receive(client.connection, client.process, 120)
        status = collector.get("/api/status")
        exit_code = collector.stop()
        stored = collector.stored()
    finally:
        collector.close()
    done = list(results.values())
    refused = status["refused"]
    return Outcome(
        sent=sent,
        stored=stored,
        seconds=seconds,
        collector_cpu=collector_cpu,
        client_cpu=sum(result[4] for result in done),
        latencies=[latency for result in done for latency in result[3]],
        failures=sum(result[2] for result in done),
        refused=int(refused["busy"]) + int(refused["saturated"]) + int(refused["invalid"]),
        dropped=int(status["dropped_spans"]),
        rejected=int(status["rejected_spans"]),
        warnings=sum(result[6] for result in done),
        first_warning=next((result[7] for result in done if result[7]), ""),
        exit_code=exit_code,
        send_seconds=max(result[5] for result in done),
    )


# ---------------------------------------------------------------------------------------------------
# Baselines


@dataclass
class Baselines:
    parse_only: list[float] = field(default_factory=list)
    decode: list[float] = field(default_factory=list)
    in_process: list[float] = field(default_factory=list)

    def median(self, name: str) -> float:
        return statistics.median(getattr(self, name))


def run_baselines(work: list[Sequence[Any]], encoded: list[bytes], folder: Path, into: Baselines) -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (  # noqa: PLC0415
        ExportTraceServiceRequest,
    )

    from otel_workflow.otlp.decode import decode_protobuf  # noqa: PLC0415

    spans = sum(len(batch) for batch in work)
    start = time.perf_counter()
    parsed = sum(len(ExportTraceServiceRequest.FromString(data).resource_spans) for data in encoded)
    into.parse_only.append(spans / (time.perf_counter() - start))
    assert parsed >= len(encoded)
    start = time.perf_counter()
    decoded = sum(len(decode_protobuf(data).spans) for data in encoded)
    into.decode.append(spans / (time.perf_counter() - start))
    assert decoded == spans, (decoded, spans)
    start = time.perf_counter()
    run_ours(work, new_store(folder))
    into.in_process.append(spans / (time.perf_counter() - start))


# ---------------------------------------------------------------------------------------------------
# Report


def machine_line() -> str:
    from google.protobuf.internal import api_implementation  # noqa: PLC0415

    packages = (
        "opentelemetry-sdk",
        "opentelemetry-exporter-otlp-proto-http",
        "opentelemetry-exporter-otlp-proto-grpc",
        "protobuf",
        "grpcio",
        "uvicorn",
        "duckdb",
    )
    versions = ", ".join(f"{name} {version(name)}" for name in packages)
    return (
        f"python {platform.python_version()} on {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs; {versions} (protobuf backend {api_implementation.Type()})"
    )


def report(outcomes: dict[Scenario, list[Outcome]], baselines: Baselines, args: argparse.Namespace) -> bool:
    """Print the tables and the targets; whether nothing was lost."""
    parse_only = baselines.median("parse_only")
    decode = baselines.median("decode")
    in_process = baselines.median("in_process")
    print(f"\nbaselines ({args.spans:,} spans in batches of {BATCH}, this process, median of {args.repeat}):")
    print(f"  parse-only (ExportTraceServiceRequest.FromString)  {parse_only:>12,.0f} spans/s")
    print(f"  decode (otlp.decode.decode_protobuf)               {decode:>12,.0f} spans/s")
    print(f"  in-process (DuckDBSpanExporter.export + flush)     {in_process:>12,.0f} spans/s")

    header = (
        f"{'transport':<10}{'mode':<12}{'clients':>7}{'sent':>9}{'stored/s':>11}{'vs in-proc':>11}"
        f"{'vs parse':>10}{'coll CPU':>10}{'client CPU':>11}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}"
        f"{'fail':>6}{'refused':>8}{'dropped':>8}{'stored/sent':>12}"
    )
    print(f"\nscenarios (median of {args.repeat}; CPU in seconds per 100k stored spans):")
    print(header)
    lossless = True
    notes: list[str] = []
    for scenario, runs in outcomes.items():
        rate = statistics.median(run.rate for run in runs)
        sent = runs[0].sent
        whole = "ok" if all(run.stored == run.sent for run in runs) else "LOST"
        failures = sum(run.failures for run in runs)
        refused = sum(run.refused for run in runs)
        dropped = sum(run.dropped for run in runs)
        line = (
            f"{scenario.transport:<10}{scenario.mode:<12}{scenario.clients:>7}{sent:>9,}{rate:>11,.0f}"
            f"{rate / in_process:>10.2f}x{rate / parse_only:>9.3f}x"
            f"{statistics.median(run.per_100k(run.collector_cpu) for run in runs):>10.2f}"
            f"{statistics.median(run.per_100k(run.client_cpu) for run in runs):>11.2f}"
            f"{statistics.median(percentile(run.latencies, 0.5) for run in runs) * 1e3:>8.1f}"
            f"{statistics.median(percentile(run.latencies, 0.99) for run in runs) * 1e3:>8.1f}"
            f"{max(max(run.latencies) for run in runs) * 1e3:>8.0f}"
            f"{failures:>6}{refused:>8}{dropped:>8}{whole:>12}"
        )
        print(line)
        for index, run in enumerate(runs):
            if run.stored != run.sent or run.failures or run.exit_code or run.rejected:
                lossless = False
                notes.append(
                    f"{scenario.name} run {index + 1}: sent {run.sent:,}, stored {run.stored:,}, "
                    f"{run.failures} failed exports, {run.dropped:,} dropped, {run.rejected} rejected, "
                    f"serve exit code {run.exit_code}"
                )
            if run.warnings:
                notes.append(
                    f"{scenario.name} run {index + 1}: {run.warnings} exporter warnings "
                    f"(first: {run.first_warning})"
                )
    if notes:
        print("\nnotes:")
        for note in notes:
            print(f"  {note}")

    capacity = {s: statistics.median(r.rate for r in runs) for s, runs in outcomes.items()}
    preencoded = {s: rate for s, rate in capacity.items() if s.mode == "preencoded"} or capacity
    best = max(preencoded, key=preencoded.__getitem__)
    best_rate = preencoded[best]
    efficiency = {
        s: 100_000 / statistics.median(r.per_100k(r.collector_cpu) for r in runs)
        for s, runs in outcomes.items()
        if s in preencoded
    }
    best_efficiency = max(efficiency.values())

    def verdict(met: bool) -> str:
        return "met" if met else "NOT MET"

    print(f"\ntargets (the collector's capacity: best `{best.mode}` scenario, {best.name}):")
    print(
        f"  stores >= 100,000 spans/s              {best_rate:>12,.0f} spans/s   {verdict(best_rate >= 1e5)}"
    )
    print(
        f"  spans per collector CPU-second >= 100k {best_efficiency:>12,.0f}           "
        f"{verdict(best_efficiency >= 1e5)}  (one core's worth)"
    )
    print(
        f"  >= parse-only rate (opentelemetry-proto) {best_rate / parse_only:>9.3f}x          "
        f"{verdict(best_rate >= parse_only)}"
    )
    print(
        f"  nothing lost below the limits          {'every span stored' if lossless else 'LOSS'}"
        f"          {verdict(lossless)}"
    )
    return lossless


# ---------------------------------------------------------------------------------------------------


def csv(value: str, allowed: tuple[str, ...] | None = None) -> list[str]:
    items = [item.strip() for item in value.split(",") if item.strip()]
    if allowed is not None:
        for item in items:
            if item not in allowed:
                raise argparse.ArgumentTypeError(f"{item!r} is not one of {', '.join(allowed)}")
    return items


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spans", type=int, default=50_000, help="spans per client, preencoded (50,000)")
    parser.add_argument(
        "--exporter-spans", type=int, default=20_000, help="spans per client, exporter mode (20,000)"
    )
    parser.add_argument("--clients", type=lambda v: [int(c) for c in csv(v)], default=[1, 2, 4])
    parser.add_argument("--transports", type=lambda v: csv(v, TRANSPORTS), default=list(TRANSPORTS))
    parser.add_argument("--modes", type=lambda v: csv(v, MODES), default=list(MODES))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--quick", action="store_true", help="1,500/1,000 spans, 1 and 2 clients, one repetition (CI)"
    )
    args = parser.parse_args()
    if args.quick:
        args.spans, args.exporter_spans, args.clients, args.repeat = 1_500, 1_000, [1, 2], 1
    print(machine_line())
    per_client = max(args.spans, args.exporter_spans)
    print(
        f"{per_client:,} spans made per client process ({args.spans:,} sent per client preencoded, "
        f"{args.exporter_spans:,} with export()); clients {args.clients}, median of {args.repeat}"
    )
    scenarios = [
        Scenario(transport, mode, clients)
        for mode in args.modes
        for transport in args.transports
        for clients in args.clients
    ]
    folder = Path(tempfile.mkdtemp(prefix="otel-workflow-collector-bench-"))
    go = multiprocessing.get_context("spawn").Event()
    clients: list[Client] = []
    try:
        clients = start_clients(max(args.clients), per_client, go)
        work = batches(make_spans(args.spans))
        encoded = [encode_spans(batch).SerializeToString() for batch in work]
        gc.collect()
        gc.freeze()
        baselines = Baselines()
        outcomes: dict[Scenario, list[Outcome]] = {scenario: [] for scenario in scenarios}
        for rep in range(args.repeat):
            run_baselines(work, encoded, folder, baselines)
            order = scenarios[rep % len(scenarios) :] + scenarios[: rep % len(scenarios)]
            for scenario in order:
                spans = args.spans if scenario.mode == "preencoded" else args.exporter_spans
                outcome = run_scenario(scenario, clients, go, folder, math.ceil(spans / BATCH))
                outcomes[scenario].append(outcome)
                print(
                    f"  {scenario.name:<24} run {rep + 1}: {outcome.stored:>9,} of {outcome.sent:,} stored, "
                    f"{outcome.rate:>9,.0f} spans/s (sent in {outcome.send_seconds:.2f} s, stored in "
                    f"{outcome.seconds:.2f} s), p99 {percentile(outcome.latencies, 0.99) * 1e3:.1f} ms, "
                    f"{outcome.refused} refused",
                    flush=True,
                )
        return 0 if report(outcomes, baselines, args) else 1
    finally:
        stop_clients(clients)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
