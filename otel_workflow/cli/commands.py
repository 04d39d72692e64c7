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
import dataclasses
import functools
import json
import math
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar
from uuid import UUID

import click
import duckdb
from rich.console import Console
from rich.json import JSON
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from otel_workflow.cli.demo import run_demo
from otel_workflow.export.files import FORMATS, export
from otel_workflow.instrument.tracer import WorkflowTracer
from otel_workflow.model.errors import ExecutionLookupError, QueryLimitExceeded, StoreError
from otel_workflow.model.records import (
    ExecutionDetail,
    ExecutionRow,
    LogRow,
    SpanLine,
    StepRow,
    StepStats,
    WorkflowStats,
)
from otel_workflow.query import executions as queries
from otel_workflow.query import readonly, timeparse
from otel_workflow.query.stats import STAT_SORTS
from otel_workflow.sdk.setup import DB_ENV, configure
from otel_workflow.storage.store import DEFAULT_DB_PATH, TraceStore

P = ParamSpec("P")
R = TypeVar("R")

_STATUS_STYLE = {
    "completed": "green",
    "failed": "bold red",
    "running": "yellow",
    "skipped": "dim",
    "compensated": "magenta",
}
_LEVEL_STYLE = {"error": "bold red", "warning": "yellow", "warn": "yellow", "debug": "dim", "event": "cyan"}


# -- errors --------------------------------------------------------------------------------------------


class BadArgument(click.ClickException):
    """A bad argument found after parsing (a refused SQL statement, an empty window): exit code 2."""

    exit_code = 2


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def friendly_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn the errors a command can meet into one line on stderr and a meaningful exit code."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except click.ClickException:
            raise
        except BrokenPipeError:
            # The reader went away (`| head`): stop quietly, and keep Python from complaining at exit.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            sys.exit(1)
        except ExecutionLookupError as exc:
            raise click.ClickException(_first_line(exc)) from exc
        except (StoreError, QueryLimitExceeded) as exc:
            raise click.ClickException(_first_line(exc)) from exc
        except duckdb.Error as exc:
            raise click.ClickException(f"database error: {_first_line(exc)}") from exc
        except (ValueError, NotADirectoryError, IsADirectoryError) as exc:
            raise BadArgument(_first_line(exc)) from exc
        except OSError as exc:
            raise click.ClickException(_first_line(exc)) from exc

    return run


# -- parameters ----------------------------------------------------------------------------------------


if TYPE_CHECKING:
    _TimeBase = click.ParamType[datetime, Any]
    _DurationBase = click.ParamType[timedelta, Any]
else:
    # Only recent click releases make ParamType generic; at run time the plain class works with all of them.
    _TimeBase = _DurationBase = click.ParamType


class TimeParam(_TimeBase):
    """A point in time: a duration back from now (`30m`, `1h`, `7d`) or an ISO 8601 timestamp."""

    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            moment = timeparse.parse_time(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        assert moment is not None
        return moment


class DurationParam(_DurationBase):
    """A duration: `90s`, `15m`, `1h30m`, `7d`, `2w`."""

    name = "DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> timedelta:
        if isinstance(value, timedelta):
            return value
        try:
            duration = timeparse.parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        if duration <= timedelta(0):
            self.fail("the duration must be longer than zero", param, ctx)
        return duration


TIME = TimeParam()
DURATION = DurationParam()

db_option = click.option(
    "--db",
    "db_path",
    envvar=DB_ENV,
    default=DEFAULT_DB_PATH,
    show_default=True,
    type=click.Path(dir_okay=False),
    help=f"DuckDB database file (or ${DB_ENV}).",
)
json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON for scripts instead of tables."
)
since_option = click.option(
    "--since", type=TIME, help="Only from this time on: a duration ago (1h, 7d) or an ISO timestamp."
)
until_option = click.option(
    "--until", type=TIME, help="Only before this time: a duration ago (1h, 7d) or an ISO timestamp."
)


def _open_reader(db_path: str, sql_limits: readonly.SqlLimits | None = None) -> TraceStore:
    try:
        return TraceStore(db_path, read_only=True, sql_limits=sql_limits)
    except StoreError as exc:
        raise click.ClickException(_first_line(exc)) from exc


# -- output helpers ------------------------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return str(value)


def _safe_float(value: Any) -> Any:
    # JSON has no NaN or infinity; scripts get null rather than invalid JSON.
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return _safe_float(value)
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(_clean(data), default=_json_default, indent=2, ensure_ascii=False, allow_nan=False))


def _rows_json(rows: Iterable[Any]) -> list[dict[str, Any]]:
    return [dataclasses.asdict(row) for row in rows]


def _parse_json_text(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def _console() -> Console:
    # Created per command so that it writes to the stdout of the moment (CliRunner, redirections).
    return Console(highlight=False)


def _styled(status: str) -> Text:
    return Text(status, style=_STATUS_STYLE.get(status, ""))


def _duration(ms: float | None) -> str:
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms:.1f} ms"
    if ms < 120_000:
        return f"{ms / 1000:.2f} s"
    return f"{ms / 60_000:.1f} min"


def _time(value: datetime | None) -> str:
    if value is None:
        return "-"
    local = value.astimezone()
    if local.date() == datetime.now().astimezone().date():
        return local.strftime("%H:%M:%S.%f")[:-3]
    return local.strftime("%Y-%m-%d %H:%M:%S")


def _text(value: str | None, style: str = "") -> Text:
    # Text, not markup: user data such as "[REDACTED]" must print as it is.
    return Text(value or "", style=style)


# -- renderers -----------------------------------------------------------------------------------------


def render_executions(console: Console, rows: Sequence[ExecutionRow], title: str = "Executions") -> None:
    """The executions as a table. Ids are shortened to 8 characters, like git's: any unique prefix works
    for `show` and `logs` (`--json` has them whole). Columns no row fills are left out, so the table fits
    a narrow terminal."""
    show_workflow = len({row.workflow_id for row in rows}) > 1
    show_current = any(row.current_step for row in rows)
    show_error = any(row.error_message for row in rows)
    table = Table(title=title, title_justify="left")
    table.add_column("id", no_wrap=True)
    if show_workflow:
        table.add_column("workflow")
    table.add_column("status", no_wrap=True)
    if show_current:
        table.add_column("current step")
    for column in ("trigger", "user", "started", "duration"):
        table.add_column(column, no_wrap=column in ("started", "duration"))
    if show_error:
        table.add_column("error", overflow="fold", ratio=1)
    for row in rows:
        cells: list[Text | str] = [_text(row.id[:8])]
        if show_workflow:
            cells.append(_text(row.workflow_id or "-"))
        cells.append(_styled(row.status))
        if show_current:
            cells.append(_text(row.current_step))
        cells += [
            _text(row.trigger_type or "-"),
            _text(row.triggered_by or "-"),
            _time(row.started_at),
            _duration(row.duration_ms),
        ]
        if show_error:
            cells.append(_text(row.error_message, "red"))
        table.add_row(*cells)
    console.print(table)


def render_steps(console: Console, rows: Sequence[StepRow], title: str) -> None:
    """The steps of one execution as a table, nested steps indented."""
    depth: dict[str, int] = {}
    table = Table(title=title, title_justify="left")
    for column in ("#", "step", "type", "status", "duration"):
        table.add_column(column, no_wrap=True)
    table.add_column("error", overflow="fold", ratio=1)
    for row in rows:
        level = depth.get(row.parent_step_id, -1) + 1 if row.parent_step_id else 0
        depth[row.id] = level
        table.add_row(
            "" if row.sequence_num is None else str(row.sequence_num),
            _text("  " * level + row.step_name),
            _text(row.step_type),
            _styled(row.status),
            _duration(row.duration_ms),
            _text(row.error_message, "red"),
        )
    console.print(table)


def render_header(console: Console, detail: ExecutionDetail) -> None:
    """Status, trigger, user, duration and config version of one execution."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    title = Text(detail.id, style="bold")
    if detail.workflow_id:
        title.append(f"  {detail.workflow_id}", style="cyan")
    grid.add_row("Execution", title)
    grid.add_row("Status", _styled(detail.status))
    if detail.status == "running" and detail.current_step:
        grid.add_row("Current step", _text(detail.current_step, "yellow"))
    grid.add_row("Trigger", _text(detail.trigger_type or "-"))
    grid.add_row("User", _text(detail.triggered_by or "-"))
    started = detail.started_at.astimezone().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    grid.add_row("Started", started)
    running = " so far" if detail.duration_ms is None else ""
    grid.add_row("Duration", _duration(detail.elapsed_ms) + running)
    grid.add_row("Config version", _text(detail.config_version or "-"))
    grid.add_row("Service", _text(detail.service_name or "-"))
    grid.add_row("Trace", _text(detail.trace_id))
    grid.add_row("I/O capture", "on" if detail.capture_io else "off")
    if detail.error_message:
        grid.add_row("Error", _text(detail.error_message, "red"))
    console.print(grid)


def _bar(line: SpanLine, total_ms: float, width: int, now_ms: float) -> Text:
    end_ms = line.offset_ms + (line.duration_ms if line.duration_ms is not None else now_ms - line.offset_ms)
    start_col = min(width - 1, max(0, int(line.offset_ms / total_ms * width)))
    end_col = min(width, max(start_col + 1, round(end_ms / total_ms * width)))
    style = (
        _STATUS_STYLE.get(line.status, "") if line.role else ("red" if line.status == "failed" else "cyan")
    )
    glyph = "▒" if line.end_time is None else "█"
    bar = Text(" " * start_col)
    bar.append(glyph * (end_col - start_col), style=style)
    bar.append(" " * (width - end_col))
    return bar


def render_waterfall(console: Console, detail: ExecutionDetail) -> None:
    """One line per step and child span, indented by nesting, with a bar on the execution's time scale."""
    if not detail.spans:
        console.print(Text("No spans of this execution are stored yet.", style="dim"))
        return
    now_ms = (datetime.now(UTC) - detail.started_at).total_seconds() * 1000
    ends = [
        line.offset_ms + (line.duration_ms if line.duration_ms is not None else now_ms)
        for line in detail.spans
    ]
    total_ms = max(*ends, detail.elapsed_ms, 0.001)
    width = max(16, min(48, console.width - 80))
    table = Table(box=None, pad_edge=False, padding=(0, 1), title="Waterfall", title_justify="left")
    table.add_column("#", justify="right", no_wrap=True, style="dim")
    table.add_column("span", no_wrap=True)
    table.add_column(Text(f"0 … {_duration(total_ms)}"), no_wrap=True)
    table.add_column("duration", justify="right", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("error", overflow="fold", ratio=1)
    for line in detail.spans:
        label = Text("  " * line.depth)
        if line.role == "execution":
            label.append(line.label if line.depth else (detail.workflow_id or line.label), style="bold")
        elif line.role == "step":
            label.append(line.label)
        else:
            label.append(line.label, style="cyan")
            if line.service_name and line.service_name != detail.service_name:
                label.append(f" ({line.service_name})", style="dim")
        table.add_row(
            "" if line.sequence_num is None else str(line.sequence_num),
            label,
            _bar(line, total_ms, width, now_ms),
            _duration(line.duration_ms),
            _styled(line.status),
            _text(line.error_message, "red"),
        )
    console.print(table)


def _payload(text: str | None) -> JSON | Text:
    if text is None:
        return Text("not captured", style="dim")
    try:
        return JSON(text)
    except ValueError:
        return Text(text)


def render_io(console: Console, detail: ExecutionDetail) -> None:
    """The captured trigger data and step input/output of one execution, as JSON."""
    captured = [step for step in detail.steps if step.input_data is not None or step.output_data is not None]
    if detail.trigger_data is None and not captured:
        console.print(
            Text(
                "No input/output was captured for this execution. Capture is off unless the request asked "
                "for it (header X-Workflow-Trace: true, or otel_workflow.capture_io()).",
                style="dim",
            )
        )
        return
    console.print(Text("Captured input/output", style="bold"))
    if detail.trigger_data is not None:
        console.print(Text("trigger data", style="bold cyan"))
        console.print(Padding(_payload(detail.trigger_data), (0, 0, 0, 4), expand=False))
    for step in captured:
        number = "" if step.sequence_num is None else f"#{step.sequence_num} "
        console.print(Text(f"{number}{step.step_name}", style="bold cyan"))
        for label, payload in (("input", step.input_data), ("output", step.output_data)):
            console.print(Padding(Text(label, style="dim"), (0, 0, 0, 2), expand=False))
            console.print(Padding(_payload(payload), (0, 0, 0, 4), expand=False))


def _detail_json(detail: ExecutionDetail, with_io: bool) -> dict[str, Any]:
    data = dataclasses.asdict(detail)
    if with_io:
        data["trigger_data"] = _parse_json_text(detail.trigger_data)
        for step in data["steps"]:
            step["input_data"] = _parse_json_text(step["input_data"])
            step["output_data"] = _parse_json_text(step["output_data"])
    else:
        # Payloads only on request, as in the terminal view: they may be large and personal.
        data.pop("trigger_data")
        for step in data["steps"]:
            step.pop("input_data")
            step.pop("output_data")
    return data


def render_logs(console: Console, rows: Sequence[LogRow], title: str) -> None:
    """Log rows as a table: time, level, step, message."""
    table = Table(title=title, title_justify="left")
    table.add_column("time", no_wrap=True)
    table.add_column("level", no_wrap=True)
    table.add_column("step", no_wrap=True)
    table.add_column("message", overflow="fold", ratio=1)
    for row in rows:
        table.add_row(
            _time(row.created_at),
            Text(row.level, style=_LEVEL_STYLE.get(row.level.lower(), "")),
            _text(row.module_name or "-"),
            _text(row.message),
        )
    console.print(table)


def _rate(value: float) -> Text:
    return Text(f"{value:.1%}", style="red" if value > 0 else "")


def render_stats(
    console: Console, workflows: Sequence[WorkflowStats], steps: Sequence[StepStats], window: str
) -> None:
    """Per-workflow and per-step count, failure rate and duration percentiles."""
    table = Table(title=f"Workflows {window}", title_justify="left")
    for column in ("workflow", "runs", "running", "failed", "failure rate", "p50", "p95", "p99", "max"):
        table.add_column(column, justify="left" if column == "workflow" else "right", no_wrap=True)
    for w in workflows:
        table.add_row(
            _text(w.workflow_id or "-"),
            str(w.count),
            str(w.running),
            str(w.failed),
            _rate(w.failure_rate),
            *(_duration(v) for v in (w.p50_ms, w.p95_ms, w.p99_ms, w.max_ms)),
        )
    console.print(table)
    table = Table(title=f"Steps {window}", title_justify="left")
    columns = ("workflow", "step", "runs", "failed", "skipped", "failure rate", "p50", "p95", "p99", "max")
    for column in columns:
        table.add_column(column, justify="left" if column in ("workflow", "step") else "right", no_wrap=True)
    for s in steps:
        table.add_row(
            _text(s.workflow_id or "-"),
            _text(s.step_name),
            str(s.count),
            str(s.failed),
            str(s.skipped),
            _rate(s.failure_rate),
            *(_duration(v) for v in (s.p50_ms, s.p95_ms, s.p99_ms, s.max_ms)),
        )
    console.print(table)


def _window_text(since: datetime | None, until: datetime | None) -> str:
    if since is None and until is None:
        return "(all time)"
    start = "the beginning" if since is None else _time(since)
    end = "now" if until is None else _time(until)
    return f"(from {start} to {end})"


# -- commands ------------------------------------------------------------------------------------------


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
    console = _console()
    try:
        telemetry = configure(db_path, service_name="otel-workflow-demo")
    except StoreError as exc:
        raise click.ClickException(_first_line(exc)) from exc
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
        _echo_json(
            {
                "db": str(Path(db_path).absolute()),
                "executions": _rows_json(executions),
                "failed": [_detail_json(detail, with_io=False) for detail in failed],
            }
        )
        return
    render_executions(console, executions, title=f"Executions written to {Path(db_path).absolute()}")
    for detail in failed:
        console.print()
        render_header(console, detail)
        console.print()
        render_waterfall(console, detail)
    short = failed[0].id[:8] if failed else "<id>"
    console.print(
        Text(
            "\nNext:\n"
            f"  otel-workflow executions --db {db_path} --status failed\n"
            f"  otel-workflow show {short} --db {db_path}\n"
            f"  otel-workflow logs {short} --db {db_path} --level error\n"
            f"  otel-workflow stats --db {db_path} --since 1h\n"
            f'  otel-workflow sql --db {db_path} "SELECT * FROM slowest_executions(n := 3)"\n'
            f"  otel-workflow export --db {db_path} --format jaeger-json --output traces.json"
        )
    )


@main.command()
@db_option
@json_option
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(queries.EXECUTION_STATUSES),
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
    rows = store.executions(
        status=statuses or None,
        workflow_id=workflows or None,
        since=since,
        until=until,
        triggered_by=triggered_by,
        error_contains=error_contains,
        limit=limit,
        offset=offset,
    )
    if as_json:
        _echo_json(_rows_json(rows))
        return
    console = _console()
    render_executions(console, rows)
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
        _echo_json(_detail_json(detail, with_io))
        return
    console = _console()
    render_header(console, detail)
    console.print()
    render_waterfall(console, detail)
    if with_io:
        console.print()
        render_io(console, detail)


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
@click.option("--limit", type=click.IntRange(1), help="At most this many rows.")
@friendly_errors
def logs(execution_id: str, db_path: str, as_json: bool, levels: tuple[str, ...], limit: int | None) -> None:
    """The log rows of one execution in time order (EXECUTION_ID may be a unique prefix)."""
    store = _open_reader(db_path)
    full_id = store.resolve_execution_id(execution_id)
    rows = store.logs(full_id, level=levels or None, limit=limit)
    if as_json:
        _echo_json(_rows_json(rows))
        return
    render_logs(_console(), rows, title=f"Logs of execution {full_id}")


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
        _echo_json(
            {
                "since": since,
                "until": until,
                "workflows": _rows_json(workflows),
                "steps": _rows_json(steps),
            }
        )
        return
    render_stats(_console(), workflows, steps, _window_text(since, until))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, dict | list):
        return json.dumps(_clean(value), default=_json_default, ensure_ascii=False)
    return str(value)


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
@click.option(
    "--timeout",
    "timeout_s",
    default=readonly.SqlLimits().timeout_s,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds before the query is interrupted.",
)
@click.option(
    "--memory-limit",
    default=readonly.SqlLimits().memory_limit,
    show_default=True,
    help="Most memory the query may use (DuckDB's memory_limit: 512MB, 4GB).",
)
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
        raise click.ClickException(str(exc).strip()) from exc
    rows = table.to_pylist()
    if as_json or output_format == "json":
        _echo_json(rows)
    elif output_format == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(table.column_names)
        writer.writerows([_cell(row[name]) for name in table.column_names] for row in rows)
    else:
        out = Table(show_lines=False)
        for name in table.column_names:
            out.add_column(name, overflow="fold")
        for row in rows:
            out.add_row(
                *(
                    Text("NULL", style="dim") if row[n] is None else _text(_cell(row[n]))
                    for n in table.column_names
                )
            )
        console = _console()
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
        click.echo(json.dumps(dataclasses.asdict(summary), indent=2), err=to_stderr)
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
        raise click.ClickException(f"no database at {Path(db_path).absolute()}")
    store = TraceStore(db_path)
    try:
        report = store.prune(older_than, dry_run=dry_run)
    finally:
        store.close()
    if as_json:
        _echo_json(dataclasses.asdict(report))
        return
    verb = "Would remove" if dry_run else "Removed"
    click.echo(
        f"{verb} {report.traces} traces older than {_time(report.cutoff)}: "
        f"{report.executions} executions, {report.steps} steps, {report.logs} log rows; "
        f"{report.spans} spans, {report.span_events} span events, {report.span_links} span links, "
        f"{report.running_spans} live rows"
    )


@main.command()
@db_option
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback by default)."
)
@click.option(
    "--port", default=4318, show_default=True, type=click.IntRange(0, 65535), help="0 picks a free port."
)
@click.option(
    "--token",
    envvar="OTEL_WORKFLOW_TOKEN",
    default=None,
    help="Bearer token required for ingest and reads (or $OTEL_WORKFLOW_TOKEN, which keeps it out of `ps`).",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
)
@click.option(
    "--sql-timeout",
    "sql_timeout_s",
    default=readonly.HTTP_TIMEOUT_S,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds before an /api/sql query is interrupted.",
)
@click.option(
    "--sql-memory-limit",
    default=readonly.SqlLimits().memory_limit,
    show_default=True,
    help="Most memory one /api/sql query may use (512MB, 4GB).",
)
@click.option(
    "--sql-max-rows",
    default=readonly.HTTP_MAX_ROWS,
    show_default=True,
    type=click.IntRange(1, 10_000_000),
    help=f"The largest `limit` /api/sql takes (without one it returns up to {readonly.HTTP_ROWS:,} rows).",
)
@friendly_errors
def serve(
    *,
    db_path: str,
    host: str,
    port: int,
    token: str | None,
    log_level: str,
    sql_timeout_s: float,
    sql_memory_limit: str,
    sql_max_rows: int,
) -> None:
    """Receive OTLP/HTTP spans from any process or language into the database (POST /v1/traces).

    Also serves the read API as JSON under /api. Needs the `collector` extra:
    pip install 'otel-workflow[collector]'.
    """
    try:
        # Imported here: starlette and uvicorn are an optional extra that only this command needs.
        from otel_workflow.server.app import ReceiverLimits  # noqa: PLC0415
        from otel_workflow.server.app import serve as run_collector  # noqa: PLC0415
    except ImportError as exc:
        raise click.ClickException(
            f"{_first_line(exc)}: install the collector extra, pip install 'otel-workflow[collector]'"
        ) from exc
    # Checked before the collector starts, so a bad value is a usage error, not a failure at the first query.
    readonly.SqlLimits(timeout_s=sql_timeout_s, memory_limit=sql_memory_limit)
    limits = ReceiverLimits(
        sql_timeout_s=sql_timeout_s,
        sql_memory_limit=sql_memory_limit,
        max_sql_rows=sql_max_rows,
    )
    run_collector(db_path, host, port, token, limits=limits, log_level=log_level)
