"""The tables and views a query can read, with their columns: what the SQL console lists."""

from __future__ import annotations

from typing import Final

import duckdb

from otel_workflow.model.records import ColumnInfo, TableInfo

__all__ = ["list_tables"]

# The relations of the main schema, tables and views alike, in the order of their columns.
_COLUMNS: Final = """
SELECT c.table_name, CASE WHEN v.view_name IS NULL THEN 'table' ELSE 'view' END, c.column_name, c.data_type
FROM duckdb_columns() c
LEFT JOIN duckdb_views() v
       ON v.database_name = c.database_name AND v.schema_name = c.schema_name AND v.view_name = c.table_name
WHERE c.database_name = current_database() AND c.schema_name = 'main' AND NOT c.internal
ORDER BY c.table_name, c.column_index
"""


def list_tables(connection: duckdb.DuckDBPyConnection) -> list[TableInfo]:
    """Every table and view of the database, by name, each with its columns and their DuckDB types."""
    tables: dict[str, TableInfo] = {}
    for table, kind, column, data_type in connection.execute(_COLUMNS).fetchall():
        info = tables.get(table)
        if info is None:
            info = tables[table] = TableInfo(table, kind, [])
        info.columns.append(ColumnInfo(column, data_type))
    return list(tables.values())
