"""The command line's parameter types and the options several commands share."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import click

from otel_workflow.query import readonly, timeparse
from otel_workflow.sdk.setup import DB_ENV
from otel_workflow.storage.store import DEFAULT_DB_PATH

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


F = TypeVar("F", bound=Callable[..., Any])

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


def memory_limit_option(name: str, what: str) -> Callable[[F], F]:
    """`name` (`--memory-limit`, `--sql-memory-limit`): the most memory `what` may use."""
    return click.option(
        name,
        default=readonly.SqlLimits().memory_limit,
        show_default=True,
        help=f"Most memory {what} may use (DuckDB's memory_limit: 512MB, 4GB).",
    )


def timeout_option(name: str, default: float, what: str) -> Callable[[F], F]:
    """`name` (`--timeout`, `--sql-timeout`): seconds before `what` is interrupted."""
    return click.option(
        name,
        "timeout_s" if name == "--timeout" else "sql_timeout_s",
        default=default,
        show_default=True,
        type=click.FloatRange(min=0, min_open=True),
        help=f"Seconds before {what} is interrupted.",
    )
