"""The SQL sandbox: SQL from outside (CLI, `/api/sql`, a read-only store) sees this database and nothing else.

Two layers, DuckDB's own first:

1. The connection that runs such SQL is a DuckDB instance of its own, opened read-only with
   `enable_external_access = false` (no file or URL is read or written: `read_csv`, `read_text`,
   `glob`, a path in FROM, `COPY`, `EXPORT`, `ATTACH` of a file, extensions from disk),
   extension autoload/autoinstall and community extensions off, a memory limit and a cap on
   spilled temporary files, and `lock_configuration = true` so that no `SET`/`RESET`/`PRAGMA`
   can undo any of it. Read-only mode refuses every write to the database. These refusals come
   from DuckDB, whatever the SQL text looks like.
2. `check_read_only` classifies the statement with DuckDB's parser and lets only reading
   statements through. It covers what no setting does: `CREATE TEMP TABLE`/`TEMP MACRO` and
   `ATTACH ':memory:'` (in-memory writes a read-only database still allows), `SET VARIABLE`,
   transactions, `LOAD` of a built-in extension, `CALL`, and several statements at once.

Each query runs under a time limit: past it, `interrupt()` stops it and `QueryLimitExceeded`
says so. The store's own work (the writer, export, prune) never uses this connection.
"""

from __future__ import annotations

import contextlib
import math
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, NamedTuple, TypeAlias

import duckdb
import pyarrow as pa

from otel_workflow.model.errors import QueryLimitExceeded, ReadOnlyViolation, SandboxRefusal

__all__ = [
    "HTTP_MAX_ROWS",
    "HTTP_ROWS",
    "HTTP_TIMEOUT_S",
    "DuckDBConfig",
    "SqlLimits",
    "SqlPage",
    "check_read_only",
    "read_page",
    "sandbox_config",
    "time_limited",
]


# What `duckdb.connect(config=...)` takes.
DuckDBConfig: TypeAlias = dict[str, str | bool | int | float | list[str]]


# Over HTTP (`/api/sql`): a shorter time limit than the CLI's; the rows of an answer by default and at most.
HTTP_TIMEOUT_S: Final = 10.0
HTTP_ROWS: Final = 10_000
HTTP_MAX_ROWS: Final = 100_000

_SIZE: Final = re.compile(r"^\s*\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KIB|MIB|GIB|TIB)\s*$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class SqlLimits:
    """The bounds of one sandboxed query.

    - `timeout_s`: wall-clock seconds before the query is interrupted.
    - `memory_limit`: DuckDB's `memory_limit` for the query's instance (`"1GB"`, `"512MB"`).
    - `max_temp_directory_size`: how much it may spill to the temporary folder beside the
      database file (DuckDB's `max_temp_directory_size`) before it fails.
    """

    timeout_s: float = 30.0
    memory_limit: str = "1GB"
    max_temp_directory_size: str = "4GB"

    def __post_init__(self) -> None:
        timeout = self.timeout_s
        if not (isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"the SQL time limit must be a positive number of seconds, not {timeout!r}")
        for name in ("memory_limit", "max_temp_directory_size"):
            value = getattr(self, name)
            if not isinstance(value, str) or not _SIZE.match(value):
                raise ValueError(f"{name} must be a size such as '1GB' or '512MB', not {value!r}")

    def with_timeout(self, timeout_s: float | None) -> SqlLimits:
        """These limits with another time limit (None keeps this one)."""
        if timeout_s is None:
            return self
        return SqlLimits(timeout_s, self.memory_limit, self.max_temp_directory_size)


def sandbox_config(limits: SqlLimits) -> DuckDBConfig:
    """DuckDB settings of a connection that runs SQL from outside; pass to `duckdb.connect(config=...)`."""
    return {
        "enable_external_access": False,
        "autoload_known_extensions": False,
        "autoinstall_known_extensions": False,
        "allow_community_extensions": False,
        "allow_unsigned_extensions": False,
        "memory_limit": limits.memory_limit,
        "max_temp_directory_size": limits.max_temp_directory_size,
        # Last: from here on no statement can change a setting, these ones included.
        "lock_configuration": True,
    }


# -- the statement ---------------------------------------------------------------------------------

_READ_TYPES: Final = frozenset({duckdb.StatementType.SELECT})
_EXPLAIN: Final = re.compile(r"^\s*EXPLAIN(?:\s+ANALY[SZ]E)?\s+(.*)$", re.IGNORECASE | re.DOTALL)


def check_read_only(query: str) -> str:
    """Return the one statement in `query` if it only reads (SELECT, FROM, WITH, SHOW, DESCRIBE, EXPLAIN).

    Raises `ReadOnlyViolation` for anything else: writes (INSERT, UPDATE,
    DELETE, COPY, CREATE, DROP, ALTER, EXPORT, IMPORT), ATTACH / DETACH,
    INSTALL / LOAD, SET / PRAGMA / CALL, transactions, and several statements
    at once. DuckDB's own parser classifies the statement, so comments and
    case tricks do not get a write through. Raises `duckdb.ParserException`
    when the text does not parse. This is the second layer: the sandboxed
    connection refuses files, settings and writes by itself.
    """
    statements = duckdb.extract_statements(query)
    if not statements:
        raise ReadOnlyViolation("the query is empty: give one SELECT statement")
    if len(statements) > 1:
        raise ReadOnlyViolation(f"refused: give one statement at a time (found {len(statements)})")
    [statement] = statements
    kind = statement.type
    if kind == duckdb.StatementType.EXPLAIN:
        inner = _EXPLAIN.match(statement.query)
        inner_statements = duckdb.extract_statements(inner.group(1)) if inner else []
        if len(inner_statements) == 1 and inner_statements[0].type in _READ_TYPES:
            return statement.query
    elif kind in _READ_TYPES:
        return statement.query
    names = {
        duckdb.StatementType.LOAD: "INSTALL/LOAD",
        duckdb.StatementType.EXPLAIN: "EXPLAIN of a statement that is not a SELECT",
        duckdb.StatementType.CREATE_FUNC: "CREATE FUNCTION/MACRO",
        duckdb.StatementType.VARIABLE_SET: "SET VARIABLE",
        # DuckDB runs a PIVOT without an explicit IN list as several statements, one of which creates a type.
        duckdb.StatementType.MULTI: "a PIVOT without an IN list (give the values: PIVOT t ON c IN (...))",
    }
    keyword = names.get(kind, kind.name.replace("_", " "))
    raise ReadOnlyViolation(
        f"refused: only reading queries (SELECT) run here, and this is {keyword}; "
        "the database is never changed from here (use `otel-workflow prune` for retention)"
    )


# -- running it ------------------------------------------------------------------------------------

# DuckDB's messages for what the sandbox settings refuse (beside PermissionException, which is all
# file, network and extension access).
_LOCKED: Final = "the configuration has been locked"
_READ_ONLY: Final = "attached in read-only mode"


@contextlib.contextmanager
def time_limited(connection: duckdb.DuckDBPyConnection, limits: SqlLimits) -> Iterator[None]:
    """Run the block's query (and the fetching of its rows) under `limits`, with DuckDB's refusals typed.

    A timer interrupts the connection once `limits.timeout_s` have passed; the caller closes the
    connection after the block, which lets the database file go.
    """
    done = threading.Event()

    def interrupt() -> None:
        if not done.is_set():
            with contextlib.suppress(duckdb.Error):
                connection.interrupt()

    timer = threading.Timer(limits.timeout_s, interrupt)
    timer.daemon = True
    timer.start()
    try:
        yield
    except duckdb.InterruptException:
        raise QueryLimitExceeded(
            f"query interrupted after {limits.timeout_s:g} s (its time limit); narrow it down, "
            "or give it more time (--timeout, timeout_s=)"
        ) from None
    except duckdb.OutOfMemoryException as exc:
        raise QueryLimitExceeded(
            f"query stopped: it needs more memory than its limit of {limits.memory_limit} "
            f"(and {limits.max_temp_directory_size} of temporary files): {_first_line(exc)}"
        ) from None
    except duckdb.PermissionException as exc:
        raise SandboxRefusal(
            f"refused: this SQL can read the trace database only, not files, URLs or extensions "
            f"({_first_line(exc)})"
        ) from None
    except duckdb.InvalidInputException as exc:
        text = _first_line(exc)
        if _LOCKED in text:
            raise SandboxRefusal(f"refused: this SQL cannot change settings ({text})") from None
        if _READ_ONLY in text:
            raise SandboxRefusal(f"refused: this SQL cannot change the database ({text})") from None
        raise
    finally:
        done.set()
        timer.cancel()


class SqlPage(NamedTuple):
    """The first rows of a result, and whether rows were left out (`max_rows` or `max_bytes` reached)."""

    table: pa.Table
    truncated: bool


def read_page(relation: duckdb.DuckDBPyRelation, max_rows: int, max_bytes: int) -> SqlPage:
    """At most `max_rows` rows and about `max_bytes` of Arrow data of `relation`, streamed.

    DuckDB produces the rows in batches as they are read, so `SELECT * FROM range(1e12)` costs
    what the page holds, not the whole result.
    """
    batches: list[pa.RecordBatch] = []
    rows = size = 0
    truncated = False
    reader = relation.to_arrow_reader(min(max(max_rows, 1) + 1, 2048))
    schema = reader.schema
    try:
        for batch in reader:
            if rows + batch.num_rows > max_rows or size + batch.nbytes > max_bytes:
                room = max_rows - rows
                if size + batch.nbytes > max_bytes and batch.num_rows:
                    room = min(room, int((max_bytes - size) / (batch.nbytes / batch.num_rows)))
                batches.append(batch.slice(0, max(room, 0)))
                truncated = True
                break
            batches.append(batch)
            rows += batch.num_rows
            size += batch.nbytes
    finally:
        reader.close()
    return SqlPage(pa.Table.from_batches(batches, schema=schema), truncated)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
