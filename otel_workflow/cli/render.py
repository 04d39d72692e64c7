"""What the commands print: rich tables and the waterfall for people, JSON (`model.jsonvalues`) for scripts.

All span text is printed as `Text`, never as markup: user data such as "[REDACTED]" prints as it is.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any

import click
from rich.console import Console
from rich.json import JSON
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from otel_workflow.model.jsonvalues import dumps
from otel_workflow.model.records import (
    ExecutionDetail,
    ExecutionRow,
    LogRow,
    SpanLine,
    StepRow,
    StepStats,
    WorkflowStats,
)

_STATUS_STYLE = {
    "completed": "green",
    "failed": "bold red",
    "running": "yellow",
    "skipped": "dim",
    "compensated": "magenta",
}
_LEVEL_STYLE = {"error": "bold red", "warning": "yellow", "warn": "yellow", "debug": "dim", "event": "cyan"}


def echo_json(data: Any, *, err: bool = False) -> None:
    """`data` as indented JSON on stdout (stderr with `err`)."""
    click.echo(dumps(data, indent=True).decode("utf-8"), err=err)


def parse_json_text(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def console() -> Console:
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


def time_text(value: datetime | None) -> str:
    if value is None:
        return "-"
    local = value.astimezone()
    if local.date() == datetime.now().astimezone().date():
        return local.strftime("%H:%M:%S.%f")[:-3]
    return local.strftime("%Y-%m-%d %H:%M:%S")


def text(value: str | None, style: str = "") -> Text:
    # Text, not markup: user data such as "[REDACTED]" must print as it is.
    return Text(value or "", style=style)


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
        cells: list[Text | str] = [text(row.id[:8])]
        if show_workflow:
            cells.append(text(row.workflow_id or "-"))
        cells.append(_styled(row.status))
        if show_current:
            cells.append(text(row.current_step))
        cells += [
            text(row.trigger_type or "-"),
            text(row.triggered_by or "-"),
            time_text(row.started_at),
            _duration(row.duration_ms),
        ]
        if show_error:
            cells.append(text(row.error_message, "red"))
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
            text("  " * level + row.step_name),
            text(row.step_type),
            _styled(row.status),
            _duration(row.duration_ms),
            text(row.error_message, "red"),
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
        grid.add_row("Current step", text(detail.current_step, "yellow"))
    grid.add_row("Trigger", text(detail.trigger_type or "-"))
    grid.add_row("User", text(detail.triggered_by or "-"))
    started = detail.started_at.astimezone().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    grid.add_row("Started", started)
    running = " so far" if detail.duration_ms is None else ""
    grid.add_row("Duration", _duration(detail.elapsed_ms) + running)
    grid.add_row("Config version", text(detail.config_version or "-"))
    grid.add_row("Service", text(detail.service_name or "-"))
    grid.add_row("Trace", text(detail.trace_id))
    grid.add_row("I/O capture", "on" if detail.capture_io else "off")
    if detail.error_message:
        grid.add_row("Error", text(detail.error_message, "red"))
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
            text(line.error_message, "red"),
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


def detail_json(detail: ExecutionDetail, with_io: bool) -> dict[str, Any]:
    data = dataclasses.asdict(detail)
    if with_io:
        data["trigger_data"] = parse_json_text(detail.trigger_data)
        for step in data["steps"]:
            step["input_data"] = parse_json_text(step["input_data"])
            step["output_data"] = parse_json_text(step["output_data"])
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
            time_text(row.created_at),
            Text(row.level, style=_LEVEL_STYLE.get(row.level.lower(), "")),
            text(row.module_name or "-"),
            text(row.message),
        )
    console.print(table)


def render_log_line(console: Console, row: LogRow) -> None:
    """One log row on one line (what `logs --follow` prints as rows come): time, level, step, message."""
    line = Text(f"{time_text(row.created_at)}  ")
    line.append(f"{row.level:<8}", style=_LEVEL_STYLE.get(row.level.lower(), ""))
    line.append(f" {row.module_name or '-'}  ")
    line.append_text(text(row.message))
    console.print(line, soft_wrap=True)


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
            text(w.workflow_id or "-"),
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
            text(s.workflow_id or "-"),
            text(s.step_name),
            str(s.count),
            str(s.failed),
            str(s.skipped),
            _rate(s.failure_rate),
            *(_duration(v) for v in (s.p50_ms, s.p95_ms, s.p99_ms, s.max_ms)),
        )
    console.print(table)


def window_text(since: datetime | None, until: datetime | None) -> str:
    if since is None and until is None:
        return "(all time)"
    start = "the beginning" if since is None else time_text(since)
    end = "now" if until is None else time_text(until)
    return f"(from {start} to {end})"


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, dict | list):
        return dumps(value).decode("utf-8")
    return str(value)
