"""The `otel-workflow` command line.

Every command takes `--db` (default `otel_workflow.duckdb`, or `$OTEL_WORKFLOW_DB`)
and `--json` (machine-readable output on stdout). Commands that read open the
database read-only and hold it only per query, so they run safely beside the
application writing to it; `prune` (and `demo`) write.

Exit codes: 0 success; 1 the command could not do its work (no database,
unknown or ambiguous execution id, a database error); 2 bad arguments
(click's convention), which includes a `sql` statement that would write.
Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import csv
import sys
import time
import webbrowser
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import click
import duckdb
from rich.table import Table
from rich.text import Text

from otel_workflow.cli import render
from otel_workflow.cli.demo import run_demo
from otel_workflow.cli.errors import BadArgument, CommandError, first_line, friendly_errors
from otel_workflow.cli.params import (
    DURATION,
    F,
    db_option,
    json_option,
    memory_limit_option,
    since_option,
    timeout_option,
    until_option,
)
from otel_workflow.export.files import FORMATS, export
from otel_workflow.instrument.tracer import WorkflowTracer
from otel_workflow.model.errors import StoreError
from otel_workflow.model.jsonvalues import dumps
from otel_workflow.model.records import ExecutionFilter, LogRow
from otel_workflow.query import readonly
from otel_workflow.query.executions import EXECUTION_STATUSES
from otel_workflow.query.stats import STAT_SORTS
from otel_workflow.sdk.setup import configure
from otel_workflow.storage.store import TraceStore


def _open_reader(db_path: str, sql_limits: readonly.SqlLimits | None = None) -> TraceStore:
    try:
        return TraceStore(db_path, read_only=True, sql_limits=sql_limits)
    except StoreError as exc:
        raise CommandError(first_line(exc)) from exc


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="otel-workflow")
def main() -> None:
    """Workflow runs recorded as OpenTelemetry spans, queried from DuckDB."""


@main.command()
@db_option
@json_option
@click.option("--executions", "count", default=5, show_default=True, type=click.IntRange(1, 10_000))
@friendly_errors
def demo(db_path: str, as_json: bool, count: int) -> None:
    """Run a sample order pipeline into the database and show what it recorded."""
    console = render.console()
    try:
        telemetry = configure(db_path, service_name="otel-workflow-demo")
    except StoreError as exc:
        raise CommandError(first_line(exc)) from exc
    wf = WorkflowTracer("order-pipeline", tracer_provider=telemetry.tracer_provider, config_version="demo-v1")
    if as_json:
        execution_ids = run_demo(wf, count)
    else:
        with console.status(f"running {count} executions of order-pipeline"):
            execution_ids = run_demo(wf, count)
    telemetry.shutdown()

    store = _open_reader(db_path)
    ours = set(execution_ids)
    executions = [row for row in store.executions(limit=None) if row.id in ours]
    failed = [store.execution(row.id) for row in executions if row.status == "failed"]
    if as_json:
        render.echo_json(
            {
                "db": str(Path(db_path).absolute()),
                "executions": executions,
                "failed": [render.detail_json(detail, with_io=False) for detail in failed],
            }
        )
        return
    render.render_executions(console, executions, title=f"Executions written to {Path(db_path).absolute()}")
    for detail in failed:
        console.print()
        render.render_header(console, detail)
        console.print()
        render.render_waterfall(console, detail)
    short = failed[0].id[:8] if failed else "<id>"
    console.print(
        Text(
            "\nNext:\n"
            f"  otel-workflow executions --db {db_path} --status failed\n"
            f"  otel-workflow show {short} --db {db_path}\n"
            f"  otel-workflow logs {short} --db {db_path} --level error\n"
            f"  otel-workflow stats --db {db_path} --since 1h\n"
            f'  otel-workflow sql --db {db_path} "SELECT * FROM slowest_executions(n := 3)"\n'
            f"  otel-workflow export --db {db_path} --format jaeger-json --output traces.json\n"
            f"  otel-workflow ui --db {db_path}"
        )
    )


@main.command()
@db_option
@json_option
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(EXECUTION_STATUSES),
    help="Only executions in this state (repeatable).",
)
@click.option(
    "--workflow", "workflows", multiple=True, help="Only executions of this workflow id (repeatable)."
)
@since_option
@until_option
@click.option("--triggered-by", help="Only executions triggered by this user.")
@click.option("--error-contains", help="Only executions whose error message contains this text (any case).")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1_000_000))
@click.option("--offset", default=0, show_default=True, type=click.IntRange(0))
@friendly_errors
def executions(
    *,
    db_path: str,
    as_json: bool,
    statuses: tuple[str, ...],
    workflows: tuple[str, ...],
    since: datetime | None,
    until: datetime | None,
    triggered_by: str | None,
    error_contains: str | None,
    limit: int,
    offset: int,
) -> None:
    """List executions, newest first, with filters and paging."""
    store = _open_reader(db_path)
    where = ExecutionFilter(
        status=statuses or None,
        workflow_id=workflows or None,
        since=since,
        until=until,
        triggered_by=triggered_by,
        error_contains=error_contains,
    )
    rows = store.executions(where, limit=limit, offset=offset)
    if as_json:
        render.echo_json(rows)
        return
    console = render.console()
    render.render_executions(console, rows)
    if len(rows) == limit:
        console.print(Text(f"More may follow: --offset {offset + limit}", style="dim"))


@main.command()
@click.argument("execution_id")
@db_option
@json_option
@click.option("--io", "with_io", is_flag=True, help="Also show the captured input/output of each step.")
@friendly_errors
def show(execution_id: str, db_path: str, as_json: bool, with_io: bool) -> None:
    """One execution: header, then the waterfall of its steps and child spans.

    EXECUTION_ID may be any unique prefix of the id.
    """
    detail = _open_reader(db_path).execution(execution_id)
    if as_json:
        render.echo_json(render.detail_json(detail, with_io))
        return
    console = render.console()
    render.render_header(console, detail)
    console.print()
    render.render_waterfall(console, detail)
    if with_io:
        console.print()
        render.render_io(console, detail)


@main.command()
@click.argument("execution_id")
@db_option
@json_option
@click.option(
    "--level",
    "levels",
    multiple=True,
    help="Only rows of this level: info, error, warning, ... (repeatable).",
)
@click.option("--step", "step_name", help="Only the rows of the steps of this name (every attempt).")
@click.option("--limit", type=click.IntRange(1), help="At most this many rows.")
@click.option(
    "--follow",
    "-f",
    is_flag=True,
    help="Keep printing new rows while the execution runs (Ctrl+C stops); then exit.",
)
@friendly_errors
def logs(
    *,
    execution_id: str,
    db_path: str,
    as_json: bool,
    levels: tuple[str, ...],
    step_name: str | None,
    limit: int | None,
    follow: bool,
) -> None:
    """The log rows of one execution in time order (EXECUTION_ID may be a unique prefix): its steps'
    starts and ends, span events, and the application's log records emitted inside it."""
    store = _open_reader(db_path)
    full_id = store.resolve_execution_id(execution_id)
    rows = store.logs(full_id, level=levels or None, step_name=step_name, limit=limit)
    if follow:
        _follow_logs(store, full_id, rows, levels=levels, step_name=step_name, as_json=as_json)
        return
    if as_json:
        render.echo_json(rows)
        return
    render.render_logs(render.console(), rows, title=f"Logs of execution {full_id}")


# How often `logs --follow` reads again.
_FOLLOW_INTERVAL_S = 1.0


def _follow_logs(
    store: TraceStore,
    execution_id: str,
    rows: list[LogRow],
    *,
    levels: tuple[str, ...],
    step_name: str | None,
    as_json: bool,
) -> None:
    """Print `rows`, then the new rows every second until the execution has ended (one line each)."""
    console = render.console()
    seen: set[str] = set()

    def show(batch: list[LogRow]) -> None:
        for row in batch:
            if row.id in seen:
                continue
            seen.add(row.id)
            if as_json:
                click.echo(dumps(row).decode("utf-8"))
            else:
                render.render_log_line(console, row)

    show(rows)
    try:
        while True:
            running = store.execution(execution_id).status == "running"
            show(store.logs(execution_id, level=levels or None, step_name=step_name))
            if not running:
                return
            time.sleep(_FOLLOW_INTERVAL_S)
    except KeyboardInterrupt:
        return


@main.command()
@db_option
@json_option
@since_option
@until_option
@click.option("--workflow", "workflow_id", help="Only this workflow id.")
@click.option(
    "--sort",
    type=click.Choice(list(STAT_SORTS)),
    default="p95",
    show_default=True,
    help="Order rows by this column (numbers: largest first).",
)
@friendly_errors
def stats(
    *,
    db_path: str,
    as_json: bool,
    since: datetime | None,
    until: datetime | None,
    workflow_id: str | None,
    sort: str,
) -> None:
    """Per workflow and step: runs, failure rate, p50/p95/p99/max duration, over a time window."""
    store = _open_reader(db_path)
    workflows = store.workflow_stats(workflow_id=workflow_id, since=since, until=until, sort=sort)
    steps = store.step_stats(workflow_id=workflow_id, since=since, until=until, sort=sort)
    if as_json:
        render.echo_json(
            {
                "since": since,
                "until": until,
                "workflows": workflows,
                "steps": steps,
            }
        )
        return
    render.render_stats(render.console(), workflows, steps, render.window_text(since, until))


@main.command()
@click.argument("query")
@db_option
@json_option
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
    help="Output format (--json is the same as --format json).",
)
@timeout_option("--timeout", readonly.SqlLimits().timeout_s, "the query")
@memory_limit_option("--memory-limit", "the query")
@friendly_errors
def sql(
    *, query: str, db_path: str, as_json: bool, output_format: str, timeout_s: float, memory_limit: str
) -> None:
    """Run one read-only SQL statement (QUERY, or - to read it from stdin).

    It sees this database and nothing else: reading files or URLs (read_csv,
    read_text, glob, a path in FROM, ...), ATTACH, COPY, EXPORT, INSTALL/LOAD,
    SET/PRAGMA and every write (INSERT, UPDATE, DELETE, CREATE, DROP, ALTER)
    are refused. Ready-made macros: slowest_executions(),
    failure_rate_over_time(), critical_path('<execution id>'), step_p95_shift(...).
    """
    if query == "-":
        query = sys.stdin.read()
    store = _open_reader(db_path, readonly.SqlLimits(timeout_s=timeout_s, memory_limit=memory_limit))
    try:
        table = store.read_sql(query)
    except duckdb.Error as exc:
        # The whole message: DuckDB points at the spot in the query on its second line.
        raise CommandError(str(exc).strip()) from exc
    rows = table.to_pylist()
    if as_json or output_format == "json":
        render.echo_json(rows)
    elif output_format == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(table.column_names)
        writer.writerows([render.cell(row[name]) for name in table.column_names] for row in rows)
    else:
        out = Table(show_lines=False)
        for name in table.column_names:
            out.add_column(name, overflow="fold")
        for row in rows:
            out.add_row(
                *(
                    Text("NULL", style="dim") if row[n] is None else render.text(render.cell(row[n]))
                    for n in table.column_names
                )
            )
        console = render.console()
        console.print(out)
        console.print(Text(f"{len(rows)} row{'s' if len(rows) != 1 else ''}", style="dim"))


@main.command("export")
@db_option
@json_option
@click.option("--format", "export_format", type=click.Choice(FORMATS), required=True, help="Export format.")
@click.option(
    "--output",
    "-o",
    required=True,
    type=click.Path(),
    help="File to write (jaeger-json, otlp-json; - for stdout) or folder (parquet).",
)
@click.option("--execution", help="Only the trace(s) of this execution (id or unique prefix).")
@since_option
@until_option
@click.option(
    "--partition-by-date", is_flag=True, help="Parquet: one folder per table, partitioned by date=."
)
@friendly_errors
def export_command(
    *,
    db_path: str,
    as_json: bool,
    export_format: str,
    output: str,
    execution: str | None,
    since: datetime | None,
    until: datetime | None,
    partition_by_date: bool,
) -> None:
    """Export traces as Jaeger UI JSON, OTLP JSON, or Parquet files."""
    if partition_by_date and export_format != "parquet":
        raise BadArgument("--partition-by-date applies to --format parquet only")
    if export_format == "parquet" and output == "-":
        raise BadArgument("the Parquet export writes a folder: give --output a folder name")
    store = _open_reader(db_path)
    summary = export(
        store,
        export_format,
        output,
        execution=execution,
        since=since,
        until=until,
        partition_by_date=partition_by_date,
    )
    # With --output - the data itself is on stdout: the summary goes to stderr.
    to_stderr = output == "-"
    if as_json:
        render.echo_json(summary, err=to_stderr)
        return
    counts = ", ".join(f"{count} {table}" for table, count in summary.rows.items())
    click.echo(
        f"Exported {summary.traces} traces ({counts}) as {summary.format} to {summary.output}", err=to_stderr
    )


@main.command()
@db_option
@json_option
@click.option(
    "--older-than",
    type=DURATION,
    required=True,
    help="Remove traces in which nothing happened for this long (7d, 12h, 2w).",
)
@click.option("--dry-run", is_flag=True, help="Count what would be removed, remove nothing.")
@friendly_errors
def prune(db_path: str, as_json: bool, older_than: timedelta, dry_run: bool) -> None:
    """Delete old traces: their spans, events, links and live rows, in one transaction.

    The executions, steps and logs derived from them go with them; the counts
    of everything removed are reported.
    """
    if not Path(db_path).exists():
        raise CommandError(f"no database at {Path(db_path).absolute()}")
    store = TraceStore(db_path)
    try:
        report = store.prune(older_than, dry_run=dry_run)
    finally:
        store.close()
    if as_json:
        render.echo_json(report)
        return
    verb = "Would remove" if dry_run else "Removed"
    click.echo(
        f"{verb} {report.traces} traces older than {render.time_text(report.cutoff)}: "
        f"{report.executions} executions, {report.steps} steps, {report.logs} log rows; "
        f"{report.spans} spans, {report.span_events} span events, {report.span_links} span links, "
        f"{report.running_spans} live rows"
    )


def _server_options(default_port: int, reads: str) -> Callable[[F], F]:
    """The options `serve` and `ui` share: where to listen, the token, logging and the /api/sql limits."""
    options = [
        db_option,
        click.option(
            "--host",
            default="127.0.0.1",
            show_default=True,
            help="Address to listen on (loopback by default).",
        ),
        click.option(
            "--port",
            default=default_port,
            show_default=True,
            type=click.IntRange(0, 65535),
            help="0 picks a free port.",
        ),
        click.option(
            "--token",
            envvar="OTEL_WORKFLOW_TOKEN",
            default=None,
            help=f"Token required for {reads} (or $OTEL_WORKFLOW_TOKEN, which keeps it out of `ps`).",
        ),
        click.option(
            "--log-level",
            default="info",
            show_default=True,
            type=click.Choice(["critical", "error", "warning", "info", "debug"]),
        ),
        timeout_option("--sql-timeout", readonly.HTTP_TIMEOUT_S, "an /api/sql query"),
        memory_limit_option("--sql-memory-limit", "one /api/sql query"),
        click.option(
            "--sql-max-rows",
            default=readonly.HTTP_MAX_ROWS,
            show_default=True,
            type=click.IntRange(1, 10_000_000),
            help=(
                "The largest `limit` /api/sql takes "
                f"(without one it returns up to {readonly.HTTP_ROWS:,} rows)."
            ),
        ),
    ]

    def decorate(command: F) -> F:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def _run_server(
    *,
    db_path: str,
    host: str,
    port: int,
    token: str | None,
    log_level: str,
    sql_timeout_s: float,
    sql_memory_limit: str,
    sql_max_rows: int,
    ingest: bool,
    grpc_port: int | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    extra = "collector" if ingest else "ui"
    try:
        # Imported here: starlette and uvicorn are an optional extra that only these commands need.
        from otel_workflow.server.app import ReceiverLimits  # noqa: PLC0415
        from otel_workflow.server.app import serve as run_server  # noqa: PLC0415
    except ImportError as exc:
        raise CommandError(
            f"{first_line(exc)}: install the {extra} extra, pip install 'otel-workflow[{extra}]'"
        ) from exc
    # Checked before the server starts, so a bad value is a usage error, not a failure at the first query.
    readonly.SqlLimits(timeout_s=sql_timeout_s, memory_limit=sql_memory_limit)
    limits = ReceiverLimits(
        sql_timeout_s=sql_timeout_s,
        sql_memory_limit=sql_memory_limit,
        max_sql_rows=sql_max_rows,
    )
    try:
        run_server(
            db_path,
            host,
            port,
            token,
            grpc_port=grpc_port,
            limits=limits,
            log_level=log_level,
            on_ready=on_ready,
            ingest=ingest,
        )
    except (StoreError, ImportError) as exc:
        raise CommandError(first_line(exc)) from exc


@main.command()
@_server_options(4318, "ingest, reads and the pages")
@click.option(
    "--grpc-port",
    default=4317,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="OTLP/gRPC port on the same host; 0 turns gRPC off.",
)
@friendly_errors
def serve(grpc_port: int, **options: Any) -> None:
    """Receive OTLP spans and logs from any process or language into the database.

    OTLP/HTTP on --port (POST /v1/traces, /v1/logs) and OTLP/gRPC on --grpc-port. Also serves the
    web UI at / and the read API as JSON under /api. Needs the `collector` extra:
    pip install 'otel-workflow[collector]'.
    """
    _run_server(**options, grpc_port=grpc_port or None, ingest=True)


@main.command()
@_server_options(8766, "the pages and the API")
@click.option(
    "--open/--no-open", "open_browser", default=True, show_default=True, help="Open the page in a browser."
)
@friendly_errors
def ui(open_browser: bool, **options: Any) -> None:
    """The web UI over the database: runs live, a run's waterfall, logs and I/O, stats, SQL.

    Reads the file read-only, so the application can go on writing it. Needs the `ui` extra:
    pip install 'otel-workflow[ui]'.
    """

    def ready(url: str) -> None:
        click.echo(
            f"otel-workflow ui: {url}/  (database {Path(options['db_path']).absolute()}, read-only)",
            err=True,
        )
        if open_browser:
            webbrowser.open(url + "/")

    _run_server(**options, ingest=False, on_ready=ready)
