"""The SQL sandbox: SQL from outside sees the trace database and nothing else, within a time limit.

Every entry point is tried (TraceStore, the CLI, `/api/sql`) with real files beside the database
that each refused query would read, each holding a marker: a refusal must not come from the file
being absent, and the marker must never appear in what the user sees.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from analytics_support import Filled, build_database
from click.testing import CliRunner
from collector_support import served
from conftest import Traced

from otel_workflow import QueryLimitExceeded, ReadOnlyViolation, SandboxRefusal, SqlLimits, TraceStore
from otel_workflow.cli.commands import main
from otel_workflow.model.errors import StoreError
from otel_workflow.query.readonly import check_read_only, sandbox_config
from otel_workflow.server.app import ReceiverLimits

MARKER = "SECRET-MARKER-4b1d"
LONG_QUERY = "SELECT count(*) FROM range(1000000000000)"


@dataclass(frozen=True)
class Bait:
    """Real files a refused query would read or write, and the database under test."""

    folder: Path
    db: Path
    filled: Filled

    def fill(self, template: str) -> str:
        return template.format(
            csv=self.folder / "secret.csv",
            json=self.folder / "secret.json",
            txt=self.folder / "secret.txt",
            parquet=self.folder / "secret.parquet",
            other=self.folder / "other.duckdb",
            folder=self.folder,
            out=self.folder / "out",
        )


@pytest.fixture(scope="module")
def bait(tmp_path_factory: pytest.TempPathFactory) -> Bait:
    folder = tmp_path_factory.mktemp("sandbox")
    filled = build_database(folder / "traces.duckdb")
    (folder / "secret.csv").write_text(f"name,value\n{MARKER},1\n")
    (folder / "secret.json").write_text(f'{{"name": "{MARKER}"}}\n')
    (folder / "secret.txt").write_text(MARKER)
    pq.write_table(pa.table({"name": [MARKER]}), folder / "secret.parquet")
    with duckdb.connect(str(folder / "other.duckdb")) as other:
        other.execute(f"CREATE TABLE s AS SELECT '{MARKER}' AS name")
    return Bait(folder, filled.path, filled)


@pytest.fixture(scope="module")
def reader(bait: Bait) -> Iterator[TraceStore]:
    store = TraceStore(bait.db, read_only=True)
    yield store
    store.close()


# What the sandbox refuses. Queries that parse as one SELECT reach DuckDB, whose settings refuse
# them (`SandboxRefusal`); the others are refused by the statement check before they reach it.
FILE_READS = [
    "SELECT * FROM read_csv('{csv}')",
    "SELECT * FROM read_csv_auto('{csv}')",
    "SELECT * FROM read_json('{json}')",
    "SELECT * FROM read_json_auto('{json}')",
    "SELECT * FROM read_text('{txt}')",
    "SELECT * FROM read_blob('{txt}')",
    "SELECT * FROM read_parquet('{parquet}')",
    "SELECT * FROM parquet_scan('{parquet}')",
    "SELECT * FROM parquet_metadata('{parquet}')",
    "SELECT * FROM glob('{folder}/*')",
    "SELECT * FROM sniff_csv('{csv}')",
    "SELECT * FROM '{csv}'",
    "SELECT * FROM '{parquet}'",
    "FROM '{folder}/*.csv'",
    "SELECT * FROM read_csv('https://example.invalid/data.csv')",
    "SELECT * FROM read_text('file://{txt}')",
    "SELECT * FROM query_table('{csv}')",
    "SELECT * FROM query($$SELECT * FROM read_text('{txt}')$$)",
    "SELECT * FROM read_csv('{folder}/' || 'secret.csv')",
    "SELECT * FROM duckdb_secrets()",
]
STATEMENTS = [
    "ATTACH '{other}' AS other",
    "ATTACH ':memory:' AS scratch",
    "DETACH traces",
    "COPY (SELECT 1) TO '{out}.csv'",
    "COPY spans TO '{out}.parquet' (FORMAT parquet)",
    "COPY spans FROM '{csv}'",
    "EXPORT DATABASE '{out}'",
    "IMPORT DATABASE '{folder}'",
    "INSTALL httpfs",
    "LOAD httpfs",
    "LOAD json",
    "SET threads = 1",
    "SET enable_external_access = true",
    "RESET memory_limit",
    "PRAGMA threads = 1",
    "PRAGMA enable_profiling",
    "SET VARIABLE path = '{txt}'",
    "CALL pragma_version()",
    "CALL checkpoint()",
    "INSERT INTO spans SELECT * FROM spans",
    "UPDATE spans SET name = 'x'",
    "DELETE FROM spans",
    "CREATE TABLE copied AS SELECT * FROM spans",
    "CREATE TEMP TABLE copied AS SELECT 1",
    "CREATE TEMP MACRO m(x) AS x",
    "CREATE VIEW v AS SELECT 1",
    "DROP TABLE spans",
    "ALTER TABLE spans ADD COLUMN x INTEGER",
    "BEGIN TRANSACTION",
    "CHECKPOINT",
    "VACUUM",
    "SELECT 1; SELECT * FROM read_text('{txt}')",
]
# The same constructs dressed up: comments, case, unicode, nesting, CTEs.
HOSTILE = [
    "/* harmless */ SELECT * FROM read_text('{txt}') -- really",
    "SeLeCt * FrOm ReAd_TeXt('{txt}')",
    "SELECT * FROM \"read_csv\"('{csv}')",
    "SELECT * FROM main.read_csv('{csv}')",
    "SELECT '\u00e9t\u00e9 \u2603', * FROM read_text('{txt}')",
    "SELECT * FROM (SELECT * FROM (SELECT content FROM read_text('{txt}')))",
    "WITH a AS (SELECT * FROM read_csv('{csv}')) SELECT * FROM a",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) "
    "SELECT * FROM r, read_text('{txt}')",
    "SELECT (SELECT content FROM read_text('{txt}')) AS c",
    "SELECT count(*) FROM spans WHERE EXISTS (SELECT 1 FROM glob('{folder}/*'))",
    "SELECT * FROM spans s JOIN read_parquet('{parquet}') p ON true",
    "PIVOT (SELECT * FROM read_csv('{csv}')) ON name IN ('x') USING count(*)",
    "EXPLAIN ANALYZE SELECT * FROM read_text('{txt}')",
    "SELECT 1 /* ; */ ; ATTACH '{other}' AS o",
    "\ufeffSELECT * FROM read_text('{txt}')",
    "select * from read_text(E'{txt}')",
]
REFUSED = FILE_READS + STATEMENTS + HOSTILE


def no_marker(*texts: str) -> None:
    for text in texts:
        assert MARKER not in text


@pytest.mark.parametrize("template", REFUSED)
def test_a_read_only_store_refuses_with_a_typed_error(bait: Bait, reader: TraceStore, template: str) -> None:
    query = bait.fill(template)
    with pytest.raises(ReadOnlyViolation, match=r"^refused: ") as refused:
        reader.read_sql(query)
    no_marker(str(refused.value))
    with pytest.raises(ReadOnlyViolation):
        reader.sql(query)
    with pytest.raises(ReadOnlyViolation):
        reader.arrow(query)
    assert not list(bait.folder.glob("out*"))


@pytest.mark.parametrize("template", FILE_READS)
def test_file_reads_are_refused_by_duckdb_itself(bait: Bait, reader: TraceStore, template: str) -> None:
    # These parse as one SELECT: only the connection's settings stand between them and the file.
    query = bait.fill(template)
    assert check_read_only(query)
    with pytest.raises(SandboxRefusal, match="refused: this SQL can read the trace database only"):
        reader.read_sql(query)


@pytest.mark.parametrize(
    "template",
    [
        "SELECT * FROM read_text('{txt}')",
        "SELECT * FROM '{parquet}'",
        "ATTACH '{other}' AS other",
        "COPY (SELECT 1) TO '{out}.csv'",
        "EXPORT DATABASE '{out}'",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET threads = 1",
        "SET enable_external_access = true",
        "RESET enable_external_access",
        "PRAGMA threads = 1",
        "INSERT INTO spans SELECT * FROM spans",
        "CREATE TABLE copied AS SELECT 1",
        "DROP TABLE spans",
        "ATTACH ':memory:' AS scratch",
    ],
)
def test_the_sandbox_settings_refuse_without_the_statement_check(bait: Bait, template: str) -> None:
    # The first layer alone, as `readonly` configures it: a connection that never saw check_read_only.
    config = sandbox_config(SqlLimits())
    with duckdb.connect(str(bait.db), read_only=True, config=config) as connection:
        with pytest.raises(duckdb.Error) as refused:
            connection.execute(bait.fill(template)).fetchall()
        no_marker(str(refused.value))
        assert connection.execute("SELECT current_setting('enable_external_access')").fetchone() == (False,)
    assert not list(bait.folder.glob("out*"))


def test_a_writable_stores_read_sql_is_sandboxed_too(bait: Bait, tmp_path: Path) -> None:
    copy = tmp_path / "copy.duckdb"
    shutil.copy(bait.db, copy)
    with TraceStore(copy) as store:
        with pytest.raises(SandboxRefusal):
            store.read_sql(bait.fill("SELECT * FROM read_csv('{csv}')"))
        with pytest.raises(ReadOnlyViolation, match="DELETE"):
            store.read_sql("DELETE FROM spans")
        # The store's own SQL (the application's code) still does what it asks.
        assert store.sql(bait.fill("SELECT name FROM read_csv('{csv}')")) == [(MARKER,)]


def test_an_in_memory_store_has_no_sandbox(bait: Bait) -> None:
    with TraceStore(":memory:") as store, pytest.raises(StoreError, match="in-memory"):
        store.read_sql("SELECT 1")


# -- what still works ------------------------------------------------------------------------------

ALLOWED = [
    ("SELECT 'read_csv(''/etc/passwd'')' AS s", [("read_csv('/etc/passwd')",)]),
    ("SELECT 1 AS one -- read_text('/etc/hostname')", [(1,)]),
    ("SELECT count(*) > 0 FROM spans WHERE name NOT LIKE '%read_text(%'", [(True,)]),
    ("SELECT $$ATTACH '/etc' AS x$$ AS s", [("ATTACH '/etc' AS x",)]),
]


@pytest.mark.parametrize(("query", "expected"), ALLOWED)
def test_text_that_only_mentions_a_refused_construct_runs(
    reader: TraceStore, query: str, expected: list[tuple[object, ...]]
) -> None:
    assert reader.sql(query) == expected


def test_analytical_sql_and_the_designed_views_and_macros_still_work(bait: Bait, reader: TraceStore) -> None:
    executions = len(bait.filled.all_ids)
    assert reader.sql("SELECT count(*) FROM workflow_executions") == [(executions,)]
    ranked = reader.sql(
        """
        WITH per_step AS (
            SELECT execution_id, step_name, duration_ms,
                   row_number() OVER (PARTITION BY execution_id ORDER BY duration_ms DESC) AS rank
            FROM execution_steps
        )
        SELECT count(DISTINCT execution_id) FROM per_step WHERE rank = 1
        """
    )
    assert ranked[0][0] > 0
    assert reader.sql(
        "SELECT json_extract_string(input_data, '$.order') FROM execution_steps WHERE input_data IS NOT NULL"
    ) == [("42",)]
    assert reader.sql("SELECT count(*) > 0 FROM execution_logs") == [(True,)]
    assert reader.sql("SELECT count(*) FROM slowest_executions()")[0][0] > 0
    assert reader.sql("SELECT count(*) FROM failure_rate_over_time()")[0][0] > 0
    assert reader.sql("SELECT count(*) FROM critical_path(?)", [bait.filled.failed_id])[0][0] > 0
    assert reader.read_sql("DESCRIBE spans").num_rows > 10
    assert reader.read_sql("SHOW TABLES").num_rows >= 3
    assert reader.read_sql("SUMMARIZE workflow_executions").num_rows > 5
    assert reader.read_sql("EXPLAIN SELECT * FROM spans").num_rows >= 1
    assert reader.read_sql(
        "SELECT id FROM workflow_executions WHERE id = $id", {"id": bait.filled.billing_id}
    )["id"].to_pylist() == [bait.filled.billing_id]


def test_a_page_streams_and_says_when_rows_were_cut(reader: TraceStore) -> None:
    page = reader.read_sql_page("SELECT * FROM range(1000000000000)", max_rows=5)
    assert (page.table.num_rows, page.truncated) == (5, True)
    whole = reader.read_sql_page("SELECT * FROM range(5)", max_rows=5)
    assert (whole.table.num_rows, whole.truncated) == (5, False)
    wide = reader.read_sql_page(
        "SELECT repeat('x', 10000) AS s FROM range(1000)", max_rows=1000, max_bytes=100_000
    )
    assert wide.truncated and 0 < wide.table.num_rows < 20
    empty = reader.read_sql_page("SELECT * FROM range(0)", max_rows=10)
    assert (empty.table.num_rows, empty.truncated, empty.table.column_names) == (0, False, ["range"])


# -- limits ----------------------------------------------------------------------------------------


def test_a_long_query_is_interrupted_and_a_waiting_writer_process_gets_the_file(
    bait: Bait, tmp_path: Path
) -> None:
    copy = tmp_path / "copy.duckdb"
    shutil.copy(bait.db, copy)
    reader = TraceStore(copy, read_only=True)
    outcome: dict[str, object] = {}

    def query() -> None:
        started = time.monotonic()
        try:
            reader.read_sql(LONG_QUERY, timeout_s=2)
        except QueryLimitExceeded as exc:
            outcome["error"] = str(exc)
        outcome["ended"] = time.monotonic()
        outcome["took"] = outcome["ended"] - started  # type: ignore[operator]

    thread = threading.Thread(target=query)
    thread.start()
    time.sleep(0.5)  # the query holds the file
    writer = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import time
                from otel_workflow import TraceStore
                store = TraceStore({str(copy)!r}, lock_timeout_s=30)
                store.sql("CREATE TABLE written_after AS SELECT 1 AS one")
                store.close()
                print(time.monotonic())
                """
            ),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    thread.join(30)
    reader.close()
    assert writer.returncode == 0, writer.stderr
    assert outcome["error"] == (
        "query interrupted after 2 s (its time limit); narrow it down, or give it more time "
        "(--timeout, timeout_s=)"
    )
    assert 2 <= outcome["took"] < 2 + 5  # type: ignore[operator]
    # The writer opened the file once the query had let go of it, not before.
    assert float(writer.stdout.strip()) >= outcome["ended"] - 0.05  # type: ignore[operator]
    with TraceStore(copy, read_only=True) as after:
        assert after.sql("SELECT one FROM written_after") == [(1,)]


def test_the_memory_limit_stops_a_query_with_a_clear_error(bait: Bait) -> None:
    limits = SqlLimits(memory_limit="64MB", max_temp_directory_size="64MB")
    with TraceStore(bait.db, read_only=True, sql_limits=limits) as store:
        with pytest.raises(QueryLimitExceeded, match="more memory than its limit of 64MB"):
            store.sql("SELECT length(list(range)) FROM range(100000000)")
        assert store.sql("SELECT 1") == [(1,)]


def test_limits_are_checked(bait: Bait) -> None:
    for bad in (
        {"timeout_s": 0},
        {"timeout_s": float("nan")},
        {"memory_limit": "lots"},
        {"memory_limit": "1GB; x"},
    ):
        with pytest.raises(ValueError):
            SqlLimits(**bad)  # type: ignore[arg-type]


def test_sandboxed_reads_and_the_writer_share_one_process(tmp_path: Path, traced: Traced) -> None:
    # As in `serve`: one process writes the file and answers SQL over it; the writer's kept
    # connection is let go for each query and taken again after, nothing is lost.
    stop = threading.Event()
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            while not stop.is_set():
                with traced.wf.execution(trigger_type="loop"), traced.wf.step("s"):
                    time.sleep(0.001)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        seen = []
        for _ in range(20):
            seen.append(
                traced.store.read_sql("SELECT count(*) AS n FROM workflow_executions")["n"][0].as_py()
            )
            time.sleep(0.05)
    finally:
        stop.set()
        producer.join(30)
    assert not errors
    traced.sync()
    assert seen == sorted(seen) and seen[-1] > 0
    produced = traced.scalar("SELECT count(*) FROM workflow_executions")
    assert produced >= seen[-1]
    assert traced.store.dropped_spans == 0
    assert traced.scalar("SELECT count(*) FROM execution_steps") == produced


# -- the CLI ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("template", REFUSED)
def test_the_cli_refuses(bait: Bait, template: str) -> None:
    result = CliRunner().invoke(main, ["sql", "--db", str(bait.db), bait.fill(template)])
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit)
    no_marker(result.stdout, result.stderr)
    assert result.stderr.strip()
    assert not list(bait.folder.glob("out*"))


def test_the_cli_interrupts_a_long_query(bait: Bait) -> None:
    result = CliRunner().invoke(main, ["sql", "--db", str(bait.db), "--timeout", "1", LONG_QUERY])
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "Error: query interrupted after 1 s (its time limit); narrow it down, or give it more time "
        "(--timeout, timeout_s=)"
    )
    bad = CliRunner().invoke(main, ["sql", "--db", str(bait.db), "--memory-limit", "plenty", "SELECT 1"])
    assert bad.exit_code == 2 and "memory_limit must be a size" in bad.stderr


def test_the_installed_cli_refuses_a_file_read(bait: Bait) -> None:
    script = Path(sys.executable).with_name("otel-workflow")
    result = subprocess.run(
        [str(script), "sql", "--db", str(bait.db), bait.fill("SELECT * FROM read_text('{txt}')")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    no_marker(result.stdout, result.stderr)
    assert result.stderr.startswith("Error: refused: this SQL can read the trace database only")


# -- HTTP ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api(bait: Bait, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    copy = tmp_path_factory.mktemp("served") / "served.duckdb"
    shutil.copy(bait.db, copy)
    with served(copy, limits=ReceiverLimits(sql_timeout_s=1, max_sql_rows=50)) as server:
        yield server.url + "/api/sql"


@pytest.mark.parametrize("template", REFUSED)
def test_the_http_api_refuses(bait: Bait, api: str, template: str) -> None:
    query = bait.fill(template)
    with httpx.Client(timeout=30) as client:
        for response in (client.get(api, params={"q": query}), client.post(api, json={"query": query})):
            assert 400 <= response.status_code < 500, response.text
            no_marker(response.text)
            assert response.json()["error"]
    assert not list(bait.folder.glob("out*"))


def test_the_http_api_interrupts_a_long_query_and_keeps_answering(api: str) -> None:
    with httpx.Client(timeout=30) as client:
        started = time.monotonic()
        response = client.get(api, params={"q": LONG_QUERY})
        assert time.monotonic() - started < 1 + 5
        assert response.status_code == 422
        assert response.json() == {
            "error": "query interrupted after 1 s (its time limit); narrow it down, or give it more time "
            "(--timeout, timeout_s=)",
            "kind": "limit",
        }
        after = client.get(api, params={"q": "SELECT count(*) AS n FROM workflow_executions"})
        assert after.status_code == 200 and after.json()["rows"][0][0] > 0
        assert client.get(api.replace("/sql", "/executions")).status_code == 200


def test_the_http_api_limits_rows(api: str) -> None:
    with httpx.Client(timeout=30) as client:
        page = client.get(api, params={"q": "SELECT * FROM range(1000000000000)"}).json()
        assert (page["row_count"], page["truncated"], page["limit"]) == (50, True, 50)
        small = client.get(api, params={"q": "SELECT * FROM range(3)", "limit": 10}).json()
        assert (small["rows"], small["truncated"]) == ([[0], [1], [2]], False)
        assert client.get(api, params={"q": "SELECT 1", "limit": 51}).status_code == 400
