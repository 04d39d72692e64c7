"""The DuckDB schema: raw span tables, the live `running_spans` table, and the derived relations.

Raw tables (`spans`, `span_events`, `span_links`) are the primary record; they and
`running_spans` are made from one column table (`ingest.columns`). The workflow
columns of `spans` are promoted at ingest by `conventions.recognise` from the
span's own name and attributes. The derived relations of DESIGN.md are
views: `workflow_executions` over the small `executions` table (one row per ended
execution, written in the same transaction as its span, rebuildable from `spans` by
`rebuild_derived`) and the live `running_spans`; `execution_steps` over the `steps`
view of the step spans and `running_spans`; `execution_logs` over those and `span_events`.
"""

from __future__ import annotations

from typing import Final

import duckdb

from otel_workflow.ingest.columns import LOG_RECORDS, RUNNING_SPANS, SPAN_EVENTS, SPAN_LINKS, SPANS
from otel_workflow.query.logs import execution_logs_select
from otel_workflow.storage.analytics import create_analytics

# 2: `log_records`, and `execution_logs` with its rows (a version 1 file gets both when a writer opens it).
# 3: `steps` is a view of the step spans instead of a table written beside them.
SCHEMA_VERSION: Final = 3

VERSION_TABLE: Final = "otel_workflow_schema"


class SchemaVersionError(RuntimeError):
    """The database was written by a newer otel-workflow than this one."""


# The raw tables and the live one, made from the column table. `running_spans` holds the execution and
# step spans that have started and not yet ended: a row is deleted in the same transaction that stores
# the ended span; a clean shutdown marks the rows of spans that never ended as interrupted.
_TABLES: Final = ";\n".join(
    table.ddl() for table in (SPANS, SPAN_EVENTS, SPAN_LINKS, RUNNING_SPANS, LOG_RECORDS)
)

# The derived table of executions, filled at ingest from the same batch (in the same transaction) and
# rebuildable from `spans` alone by `rebuild_derived`. Measured at 10M spans (benchmarks/queries.py),
# views that filtered `spans` for executions took 0.2-1.7 s per question; this small table answers in
# milliseconds. Steps are most of the spans, so a table of them cost as much as a view saves: see `steps`.
_DERIVED_TABLES: Final = """
CREATE TABLE IF NOT EXISTS executions (
    id VARCHAR NOT NULL,
    workflow_id VARCHAR,
    trigger_type VARCHAR,
    status VARCHAR NOT NULL,
    triggered_by VARCHAR,
    started_at TIMESTAMPTZ NOT NULL,
    completed_at TIMESTAMPTZ,
    duration_ms DOUBLE,
    error_message VARCHAR,
    config_version VARCHAR,
    capture_io BOOLEAN,
    trigger_data JSON,
    trace_id VARCHAR NOT NULL,
    span_id VARCHAR NOT NULL,
    service_name VARCHAR
);
-- Looking an execution up by its id is the start of `show`, `logs` and the read API: an ART index makes it
-- a point lookup instead of a scan of every id.
CREATE INDEX IF NOT EXISTS executions_id ON executions (id);
"""

_DERIVE_EXECUTIONS: Final = """
INSERT INTO executions
SELECT execution_id, workflow_id, trigger_type, workflow_status, triggered_by, start_time, end_time,
       duration_ms, error_message, config_version, capture_io, input_data, trace_id, span_id, service_name
FROM {source}
WHERE workflow_role = 'execution' AND execution_id IS NOT NULL
"""

_INTERRUPTED: Final = "'interrupted: the process shut down before this span ended'"


_VIEWS: Final = f"""
-- The ended steps: the step spans themselves. A table of them, written beside the spans at ingest, cost
-- the writer 1.5 us per span (16% of its DuckDB time) and 26 of 94 bytes per span on disk; at 10M spans
-- (benchmarks/queries.py) the view answers about as fast: step quantiles 224 ms (the table: 183), a
-- waterfall 4.8 ms (4.4). Either way they read a few columns of the step rows, pruned by start time.
CREATE OR REPLACE VIEW steps AS
SELECT span_id AS id, execution_id, step_name, step_type, workflow_status AS status,
       step_sequence AS sequence_num, parent_step_id, start_time AS started_at, end_time AS completed_at,
       duration_ms, error_message, input_data, output_data, workflow_id, trace_id, service_name
FROM spans
WHERE workflow_role = 'step';

-- `workflow_executions` is the union of the two halves below. A "newest N" query over the union cannot use
-- DuckDB's late materialisation and read every column of every matching row (60 ms for the newest 50
-- failed of 830k executions); over each half it reads the sort key only (5 ms), so the read API asks each
-- half for its newest N and merges them (queries.list_executions).
CREATE OR REPLACE VIEW ended_executions AS
SELECT id, workflow_id, trigger_type, status, triggered_by, started_at, completed_at, duration_ms,
       error_message,
       json_object('config_version', config_version,
                   'explicit_trace', coalesce(capture_io, false),
                   'capture_io', coalesce(capture_io, false)) AS metadata,
       trace_id, span_id, service_name, NULL::VARCHAR AS current_step, trigger_data
FROM executions;

CREATE OR REPLACE VIEW running_executions AS
SELECT r.execution_id AS id,
       r.workflow_id,
       r.trigger_type,
       CASE WHEN r.interrupted_at IS NULL THEN 'running' ELSE 'failed' END AS status,
       r.triggered_by,
       r.start_time AS started_at,
       NULL::TIMESTAMPTZ AS completed_at,
       NULL::DOUBLE AS duration_ms,
       CASE WHEN r.interrupted_at IS NOT NULL THEN {_INTERRUPTED} END AS error_message,
       json_object('config_version', r.config_version,
                   'explicit_trace', coalesce(r.capture_io, false),
                   'capture_io', coalesce(r.capture_io, false)) AS metadata,
       r.trace_id, r.span_id, r.service_name, cur.step_name AS current_step, NULL::JSON AS trigger_data
FROM running_spans r
LEFT JOIN (
    -- The step a running execution is on: its latest-started step that is still running.
    SELECT execution_id, arg_max(step_name, step_sequence) AS step_name
    FROM running_spans
    WHERE workflow_role = 'step' AND interrupted_at IS NULL
    GROUP BY execution_id
) cur ON r.interrupted_at IS NULL AND cur.execution_id = r.execution_id
WHERE r.workflow_role = 'execution';

CREATE OR REPLACE VIEW workflow_executions AS
SELECT * FROM ended_executions
UNION ALL
SELECT * FROM running_executions;

CREATE OR REPLACE VIEW execution_steps AS
SELECT id, execution_id, step_name, step_type, status, sequence_num, parent_step_id, started_at,
       completed_at, duration_ms, error_message, input_data, output_data, workflow_id, trace_id, service_name
FROM steps
UNION ALL
SELECT span_id, execution_id, step_name, step_type,
       CASE WHEN interrupted_at IS NULL THEN 'running' ELSE 'failed' END,
       step_sequence, parent_step_id, start_time, NULL::TIMESTAMPTZ, NULL::DOUBLE,
       CASE WHEN interrupted_at IS NOT NULL THEN {_INTERRUPTED} END,
       NULL::JSON, NULL::JSON, workflow_id, trace_id, service_name
FROM running_spans
WHERE workflow_role = 'step';

-- Executions and steps as one relation, for the start and end rows of `execution_logs`.
CREATE OR REPLACE VIEW workflow_spans AS
SELECT span_id, trace_id, 'execution' AS workflow_role, id AS execution_id, workflow_id,
       NULL::VARCHAR AS step_name, status, error_message, started_at, completed_at, duration_ms
FROM workflow_executions
UNION ALL
SELECT id, trace_id, 'step', execution_id, workflow_id, step_name, status, error_message, started_at,
       completed_at, duration_ms
FROM execution_steps;

CREATE OR REPLACE VIEW execution_logs AS
{execution_logs_select("spans")};
"""


def derive_statements(source: str) -> list[str]:
    """The statements that add the execution rows of the spans in relation `source` (new spans only)."""
    return [_DERIVE_EXECUTIONS.format(source=source)]


def rebuild_derived(connection: duckdb.DuckDBPyConnection) -> None:
    """Recompute `executions` from the raw `spans` (in the caller's transaction)."""
    connection.execute("DELETE FROM executions")
    for statement in derive_statements("spans"):
        connection.execute(statement)


def _is_table(connection: duckdb.DuckDBPyConnection, name: str) -> bool:
    found = connection.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = ? AND schema_name = 'main'", [name]
    ).fetchone()
    return found is not None and found[0] > 0


def ensure_schema(connection: duckdb.DuckDBPyConnection) -> None:
    """Create the schema in an empty database, or check that an existing one is ours to write.

    A file of an older version is brought up to this one in one transaction: the tables it lacks are
    made (`IF NOT EXISTS` leaves the others as they are) and the views and macros made anew; version 1 to
    2 adds `log_records`, 2 to 3 drops the `steps` table for the view of that name. A file of a newer
    version is refused (`SchemaVersionError`)."""
    if _is_table(connection, VERSION_TABLE):
        row = connection.execute(f"SELECT max(version) FROM {VERSION_TABLE}").fetchone()
        version = row[0] if row is not None else None
        if version is not None and version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"the database has schema version {version}, newer than this otel-workflow "
                f"understands ({SCHEMA_VERSION}); upgrade otel-workflow or use another database file"
            )
        if version == SCHEMA_VERSION:
            return
    connection.execute("BEGIN TRANSACTION")
    try:
        connection.execute(
            f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} "
            "(version INTEGER NOT NULL, applied_at TIMESTAMPTZ NOT NULL)"
        )
        connection.execute(_TABLES)
        connection.execute(_DERIVED_TABLES)
        if _is_table(connection, "steps"):  # version 2 and older: its rows are those of the view
            connection.execute("DROP TABLE steps")
        connection.execute(_VIEWS)
        create_analytics(connection)
        connection.execute(f"INSERT INTO {VERSION_TABLE} VALUES (?, now())", [SCHEMA_VERSION])
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
