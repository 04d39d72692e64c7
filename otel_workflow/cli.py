"""The `otel-workflow` command line.

Exit codes: 0 success, 1 the command could not do its work (no database,
unknown execution), 2 bad arguments (click's convention).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from otel_workflow.config import DB_ENV, configure
from otel_workflow.demo import run_demo
from otel_workflow.store import DEFAULT_DB_PATH, ExecutionRow, StepRow, StoreError, TraceStore
from otel_workflow.tracer import WorkflowTracer

_STATUS_STYLE = {
    "completed": "green",
    "failed": "bold red",
    "running": "yellow",
    "skipped": "dim",
    "compensated": "magenta",
}

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


def _open_reader(db_path: str) -> TraceStore:
    try:
        return TraceStore(db_path, read_only=True)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot encode {type(value).__name__}")


def _print_json(rows: Sequence[ExecutionRow] | Sequence[StepRow] | dict[str, Any]) -> None:
    data = rows if isinstance(rows, dict) else [dataclasses.asdict(row) for row in rows]
    click.echo(json.dumps(data, default=_json_default, indent=2))


def _styled(status: str) -> str:
    style = _STATUS_STYLE.get(status, "")
    return f"[{style}]{status}[/]" if style else status


def _duration(ms: float | None) -> str:
    if ms is None:
        return "-"
    return f"{ms:.1f} ms" if ms < 1000 else f"{ms / 1000:.2f} s"


def _time(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone().strftime("%H:%M:%S.%f")[:-3]


def render_executions(console: Console, rows: Sequence[ExecutionRow], title: str = "Executions") -> None:
    show_workflow = len({row.workflow_id for row in rows}) > 1
    table = Table(title=title, title_justify="left")
    table.add_column("execution", no_wrap=True)
    if show_workflow:
        table.add_column("workflow")
    for column in ("status", "current step", "trigger", "user", "started", "duration"):
        table.add_column(column, no_wrap=column in ("status", "started", "duration"))
    table.add_column("error", overflow="fold", ratio=1)
    for row in rows:
        cells = [
            row.id,
            *([row.workflow_id or "-"] if show_workflow else []),
            _styled(row.status),
            row.current_step or "",
            row.trigger_type or "-",
            row.triggered_by or "-",
            _time(row.started_at),
            _duration(row.duration_ms),
            row.error_message or "",
        ]
        table.add_row(*cells)
    console.print(table)


def render_steps(console: Console, rows: Sequence[StepRow], title: str) -> None:
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
            "  " * level + row.step_name,
            row.step_type or "",
            _styled(row.status),
            _duration(row.duration_ms),
            row.error_message or "",
        )
    console.print(table)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="otel-workflow")
def main() -> None:
    """Workflow runs recorded as OpenTelemetry spans, queried from DuckDB."""


@main.command()
@db_option
@click.option("--executions", "count", default=5, show_default=True, type=click.IntRange(1, 10_000))
def demo(db_path: str, count: int) -> None:
    """Run a sample order pipeline into the database and show what it recorded."""
    console = Console()
    try:
        telemetry = configure(db_path, service_name="otel-workflow-demo")
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    wf = WorkflowTracer("order-pipeline", tracer_provider=telemetry.tracer_provider, config_version="demo-v1")
    with console.status(f"running {count} executions of order-pipeline"):
        execution_ids = run_demo(wf, count)
    telemetry.shutdown()

    store = _open_reader(db_path)
    ours = set(execution_ids)
    executions = [row for row in store.executions(limit=len(execution_ids) + 50) if row.id in ours]
    render_executions(console, executions, title=f"Executions written to {Path(db_path).absolute()}")
    for row in executions:
        if row.status == "failed":
            render_steps(console, store.steps(row.id), title=f"Steps of failed execution {row.id}")
    console.print(
        "\nNext:\n"
        f"  otel-workflow executions --db {db_path} --status failed\n"
        f'  python -c "from otel_workflow import TraceStore; '
        f"print(TraceStore('{db_path}', read_only=True)"
        f".sql('SELECT step_name, status FROM execution_steps'))\""
    )


@main.command()
@db_option
@json_option
@click.option(
    "--status", type=click.Choice(["running", "completed", "failed"]), help="Only executions in this state."
)
@click.option("--workflow", "workflow_id", help="Only executions of this workflow id.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100_000))
def executions(db_path: str, as_json: bool, status: str | None, workflow_id: str | None, limit: int) -> None:
    """List executions, newest first."""
    store = _open_reader(db_path)
    rows = store.executions(status=status, workflow_id=workflow_id, limit=limit)
    if as_json:
        _print_json(rows)
    else:
        render_executions(Console(), rows)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
