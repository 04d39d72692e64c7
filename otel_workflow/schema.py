"""The DuckDB schema: raw span tables, the live `running_spans` table, and the derived views.

Raw tables are the primary record. The derived relations of DESIGN.md
(`workflow_executions`, `execution_steps`, `execution_logs`) are views over
them, so they are always consistent with the raw spans and never need a
rebuild. The workflow columns of `spans` are promoted at ingest by
`conventions.recognise` from the span's own name and attributes.
"""

from __future__ import annotations

from typing import Final

import duckdb

from otel_workflow.analytics import create_analytics

SCHEMA_VERSION: Final = 1

VERSION_TABLE: Final = "otel_workflow_schema"


class SchemaVersionError(RuntimeError):
    """The database was written by a newer otel-workflow than this one."""


_TABLES: Final = """
CREATE TABLE IF NOT EXISTS spans (
    trace_id VARCHAR NOT NULL,
    span_id VARCHAR NOT NULL,
    parent_span_id VARCHAR,
    name VARCHAR NOT NULL,
    kind VARCHAR,
    start_time TIMESTAMPTZ NOT NULL,
    end_time TIMESTAMPTZ NOT NULL,
    duration_ms DOUBLE,
    status_code VARCHAR,
    status_message VARCHAR,
    service_name VARCHAR,
    resource_attributes JSON,
    scope_name VARCHAR,
    scope_version VARCHAR,
    attributes JSON,
    dropped_attributes INTEGER,
    dropped_events INTEGER,
    dropped_links INTEGER,
    workflow_role VARCHAR,
    execution_id VARCHAR,
    workflow_id VARCHAR,
    step_name VARCHAR,
    step_type VARCHAR,
    step_sequence BIGINT,
    workflow_status VARCHAR,
    error_message VARCHAR,
    trigger_type VARCHAR,
    triggered_by VARCHAR,
    config_version VARCHAR,
    capture_io BOOLEAN,
    input_data JSON,
    output_data JSON
);
CREATE TABLE IF NOT EXISTS span_events (
    trace_id VARCHAR NOT NULL,
    span_id VARCHAR NOT NULL,
    event_index INTEGER NOT NULL,
    name VARCHAR NOT NULL,
    timestamp TIMESTAMPTZ NOT NULL,
    attributes JSON
);
CREATE TABLE IF NOT EXISTS span_links (
    trace_id VARCHAR NOT NULL,
    span_id VARCHAR NOT NULL,
    link_index INTEGER NOT NULL,
    linked_trace_id VARCHAR NOT NULL,
    linked_span_id VARCHAR NOT NULL,
    attributes JSON
);
-- Execution and step spans that have started and not yet ended. A row is
-- deleted in the same transaction that stores the ended span; a clean shutdown
-- marks the rows of spans that never ended as interrupted.
CREATE TABLE IF NOT EXISTS running_spans (
    trace_id VARCHAR NOT NULL,
    span_id VARCHAR NOT NULL,
    parent_span_id VARCHAR,
    name VARCHAR NOT NULL,
    start_time TIMESTAMPTZ NOT NULL,
    service_name VARCHAR,
    workflow_role VARCHAR NOT NULL,
    execution_id VARCHAR,
    workflow_id VARCHAR,
    step_name VARCHAR,
    step_type VARCHAR,
    step_sequence BIGINT,
    trigger_type VARCHAR,
    triggered_by VARCHAR,
    config_version VARCHAR,
    capture_io BOOLEAN,
    writer_id VARCHAR NOT NULL,
    pid BIGINT,
    interrupted_at TIMESTAMPTZ
);
"""

_VIEWS: Final = """
CREATE OR REPLACE VIEW workflow_spans AS
SELECT trace_id, span_id, parent_span_id, name, start_time, end_time, duration_ms, service_name,
       workflow_role, execution_id, workflow_id, step_name, step_type, step_sequence,
       workflow_status AS status, error_message, trigger_type, triggered_by, config_version,
       capture_io, input_data, output_data
FROM spans
WHERE workflow_role IS NOT NULL
UNION ALL
SELECT trace_id, span_id, parent_span_id, name, start_time, NULL::TIMESTAMPTZ, NULL::DOUBLE, service_name,
       workflow_role, execution_id, workflow_id, step_name, step_type, step_sequence,
       CASE WHEN interrupted_at IS NULL THEN 'running' ELSE 'failed' END,
       CASE WHEN interrupted_at IS NOT NULL
            THEN 'interrupted: the process shut down before this span ended' END,
       trigger_type, triggered_by, config_version, capture_io, NULL::JSON, NULL::JSON
FROM running_spans;

CREATE OR REPLACE VIEW workflow_executions AS
SELECT e.execution_id AS id,
       e.workflow_id,
       e.trigger_type,
       e.status,
       e.triggered_by,
       e.start_time AS started_at,
       e.end_time AS completed_at,
       e.duration_ms,
       e.error_message,
       json_object('config_version', e.config_version,
                   'explicit_trace', coalesce(e.capture_io, false),
                   'capture_io', coalesce(e.capture_io, false)) AS metadata,
       e.trace_id,
       e.span_id,
       e.service_name,
       cur.step_name AS current_step,
       e.input_data AS trigger_data
FROM workflow_spans e
LEFT JOIN (
    SELECT execution_id, arg_max(step_name, step_sequence) AS step_name
    FROM running_spans
    WHERE workflow_role = 'step' AND interrupted_at IS NULL
    GROUP BY execution_id
) cur ON e.status = 'running' AND cur.execution_id = e.execution_id
WHERE e.workflow_role = 'execution';

CREATE OR REPLACE VIEW execution_steps AS
SELECT s.span_id AS id,
       s.execution_id,
       s.step_name,
       s.step_type,
       s.status,
       s.step_sequence AS sequence_num,
       p.span_id AS parent_step_id,
       s.start_time AS started_at,
       s.end_time AS completed_at,
       s.duration_ms,
       s.error_message,
       s.input_data,
       s.output_data,
       s.workflow_id,
       s.trace_id,
       s.service_name
FROM workflow_spans s
LEFT JOIN (
    SELECT trace_id, span_id, execution_id FROM workflow_spans WHERE workflow_role = 'step'
) p ON p.span_id = s.parent_span_id AND p.trace_id = s.trace_id AND p.execution_id = s.execution_id
WHERE s.workflow_role = 'step';

CREATE OR REPLACE VIEW execution_logs AS
SELECT span_id || ':start' AS id,
       workflow_id,
       execution_id,
       CASE WHEN workflow_role = 'step' THEN span_id END AS step_id,
       'info' AS level,
       CASE WHEN workflow_role = 'execution'
            THEN 'Execution started: ' || coalesce(workflow_id, name)
            ELSE 'Step started: ' || step_name END AS message,
       step_name AS module_name,
       json_object('trace_id', trace_id, 'span_id', span_id) AS fields,
       start_time AS created_at
FROM workflow_spans
WHERE execution_id IS NOT NULL
UNION ALL
SELECT span_id || ':end',
       workflow_id,
       execution_id,
       CASE WHEN workflow_role = 'step' THEN span_id END,
       CASE WHEN status = 'failed' THEN 'error' ELSE 'info' END,
       CASE WHEN workflow_role = 'execution' THEN
            CASE WHEN status = 'failed'
                 THEN 'Execution failed: ' || coalesce(workflow_id, name)
                      || coalesce(': ' || error_message, '')
                 ELSE printf('Execution completed: %s (%.1fms)', coalesce(workflow_id, name), duration_ms) END
       ELSE
            CASE status
                 WHEN 'failed' THEN 'Step failed: ' || step_name || coalesce(': ' || error_message, '')
                 WHEN 'skipped' THEN 'Step skipped: ' || step_name
                 WHEN 'compensated' THEN 'Step compensated: ' || step_name
                 ELSE printf('Step completed: %s (%.1fms)', step_name, duration_ms) END
       END,
       step_name,
       json_object('trace_id', trace_id, 'span_id', span_id, 'status', status,
                   'duration_ms', duration_ms),
       coalesce(end_time, start_time)
FROM workflow_spans
WHERE execution_id IS NOT NULL AND status <> 'running'
UNION ALL
SELECT ev.span_id || ':' || ev.event_index,
       s.workflow_id,
       s.execution_id,
       CASE WHEN s.workflow_role = 'step' THEN s.span_id END,
       CASE WHEN ev.name = 'exception' THEN 'error'
            ELSE lower(coalesce(ev.attributes ->> 'log.severity', ev.attributes ->> 'severity',
                                ev.attributes ->> 'level', 'event')) END,
       CASE WHEN ev.name = 'exception'
                 THEN coalesce(ev.attributes ->> 'exception.type', 'exception')
                      || coalesce(': ' || (ev.attributes ->> 'exception.message'), '')
            WHEN ev.name = 'workflow.step.input' THEN 'Step input recorded'
            WHEN ev.name = 'workflow.step.output' THEN 'Step output recorded'
            WHEN ev.name = 'workflow.execution.input' THEN 'Execution input recorded'
            ELSE coalesce(ev.attributes ->> 'message', ev.attributes ->> 'log.message', ev.name) END,
       s.step_name,
       -- I/O events say that a payload was recorded and how big it is, never what it holds.
       CASE WHEN json_exists(ev.attributes, '$."workflow.io.json"')
            THEN json_object('bytes', strlen(ev.attributes ->> 'workflow.io.json'))
            ELSE ev.attributes END,
       ev.timestamp
FROM span_events ev
JOIN spans s ON s.trace_id = ev.trace_id AND s.span_id = ev.span_id
WHERE s.workflow_role IS NOT NULL AND s.execution_id IS NOT NULL;
"""


def ensure_schema(connection: duckdb.DuckDBPyConnection) -> None:
    """Create the schema in an empty database, or check that an existing one is ours to write."""
    found = connection.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = ? AND schema_name = 'main'",
        [VERSION_TABLE],
    ).fetchone()
    if found is not None and found[0]:
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
        connection.execute(_VIEWS)
        create_analytics(connection)
        connection.execute(f"INSERT INTO {VERSION_TABLE} VALUES (?, now())", [SCHEMA_VERSION])
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
