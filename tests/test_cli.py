"""The `otel-workflow` command line on a database filled by a real traced pipeline.

Every command is run through click's CliRunner and asserted on its `--json`
output and exit code; a few run as real subprocesses of the installed entry point.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
from analytics_support import Filled, build_database
from click.testing import CliRunner, Result
from conftest import Traced

from otel_workflow.cli.commands import main


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Filled:
    return build_database(tmp_path_factory.mktemp("cli") / "traces.duckdb")


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    # A wide terminal, so that table cells are not cut in the text assertions.
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("OTEL_WORKFLOW_DB", raising=False)
    yield CliRunner()


def run(runner: CliRunner, filled: Filled, *args: str) -> Result:
    return runner.invoke(main, [*args, "--db", str(filled.path)])


def run_json(runner: CliRunner, filled: Filled, *args: str) -> Any:
    result = run(runner, filled, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def one_error_line(result: Result) -> str:
    lines = result.stderr.strip().splitlines()
    assert lines, result.output
    assert "Traceback" not in result.output
    return lines[-1]


# -- executions ------------------------------------------------------------------------------------------


def test_executions_lists_newest_first(runner: CliRunner, filled: Filled) -> None:
    rows = run_json(runner, filled, "executions")
    assert {row["id"] for row in rows} == set(filled.all_ids)
    starts = [row["started_at"] for row in rows]
    assert starts == sorted(starts, reverse=True)
    assert rows[-1]["id"] == filled.old_id
    failed = next(row for row in rows if row["id"] == filled.failed_id)
    assert failed["status"] == "failed"
    assert "out of stock" in failed["error_message"]
    assert failed["trigger_type"] == "POST /orders"


def test_executions_filters(runner: CliRunner, filled: Filled) -> None:
    def ids(*args: str) -> list[str]:
        return [row["id"] for row in run_json(runner, filled, "executions", *args)]

    assert ids("--status", "failed") == [filled.failed_id]
    assert set(ids("--status", "failed", "--status", "completed")) == set(filled.all_ids)
    assert ids("--workflow", "billing") == [filled.billing_id]
    assert ids("--triggered-by", "bob") == [filled.billing_id]
    assert ids("--error-contains", "OUT OF STOCK") == [filled.failed_id]
    assert ids("--since", "1d") == [i for i in ids() if i != filled.old_id]
    assert ids("--until", "7d") == [filled.old_id]
    assert ids("--workflow", "order-pipeline", "--since", "1d", "--status", "failed") == [filled.failed_id]
    assert ids("--status", "running") == []


def test_executions_paging(runner: CliRunner, filled: Filled) -> None:
    everything = [row["id"] for row in run_json(runner, filled, "executions")]
    pages = [
        [row["id"] for row in run_json(runner, filled, "executions", "--limit", "3", "--offset", str(offset))]
        for offset in range(0, len(everything), 3)
    ]
    assert [i for page in pages for i in page] == everything
    assert all(len(page) <= 3 for page in pages)


def test_executions_table(runner: CliRunner, filled: Filled) -> None:
    result = run(runner, filled, "executions", "--limit", "2")
    assert result.exit_code == 0, result.output
    assert "More may follow: --offset 2" in result.stdout
    result = run(runner, filled, "executions", "--status", "failed")
    # The table shows ids as 8-character prefixes (enough for `show`); --json has them whole.
    assert filled.failed_id[:8] in result.stdout
    assert "out of stock" in result.stdout


# -- show ------------------------------------------------------------------------------------------------


def test_show_json_header_steps_and_waterfall(runner: CliRunner, filled: Filled) -> None:
    detail = run_json(runner, filled, "show", filled.failed_id[:8])
    assert detail["id"] == filled.failed_id
    assert detail["status"] == "failed"
    assert detail["config_version"] == "sha256:0123abcd"
    assert detail["triggered_by"] == "customer3@example.com"
    assert detail["duration_ms"] > 0
    names = [step["step_name"] for step in detail["steps"]]
    assert names[:2] == ["validate", "enrich"]
    assert {"reserve-stock", "refund-payment"} <= set(names)
    assert "input_data" not in detail["steps"][0]
    spans = detail["spans"]
    assert spans[0]["role"] == "execution"
    assert spans[0]["depth"] == 0
    # The execution, its steps, and the demo's HTTP client span inside fetch-customer.
    assert len(spans) == 2 + len(detail["steps"])
    by_label = {span["label"]: span for span in spans}
    assert by_label["GET /customers/{id}"]["depth"] == 3
    assert by_label["enrich"]["depth"] == 1
    assert by_label["fetch-customer"]["depth"] == 2
    assert by_label["fetch-customer"]["parent_span_id"] == by_label["enrich"]["span_id"]
    assert by_label["reserve-stock"]["status"] == "failed"
    assert "out of stock" in by_label["reserve-stock"]["error_message"]
    assert by_label["refund-payment"]["status"] == "compensated"
    assert by_label["apply-coupon"]["status"] == "skipped"
    offsets = [span["offset_ms"] for span in spans]
    assert offsets[0] == 0
    assert all(0 <= offset <= detail["duration_ms"] for offset in offsets)


def test_show_text_draws_the_waterfall(runner: CliRunner, filled: Filled) -> None:
    result = run(runner, filled, "show", filled.failed_id)
    assert result.exit_code == 0, result.output
    out = result.stdout
    for text in ("failed", "POST /orders", "customer3@example.com", "sha256:0123abcd", "Waterfall", "█"):
        assert text in out
    lines = out.splitlines()
    enrich = next(line for line in lines if " enrich " in line)
    customer = next(line for line in lines if "fetch-customer" in line)
    # Nesting shows as indentation: a child step starts further right than its parent.
    assert customer.index("fetch-customer") > enrich.index("enrich")
    assert any("reserve-stock" in line and "out of stock" in line for line in lines)


def test_show_with_io_and_child_spans(runner: CliRunner, filled: Filled) -> None:
    detail = run_json(runner, filled, "show", filled.captured_id, "--io")
    assert detail["capture_io"] is True
    assert detail["trigger_data"] == {"order": 42, "api_key": "[REDACTED]"}
    [step] = detail["steps"]
    assert step["input_data"] == {"order": 42, "password": "[REDACTED]"}
    assert step["output_data"] == {"valid": True}
    [http] = [span for span in detail["spans"] if span["role"] is None]
    assert http["label"] == "GET /customers/42"
    assert http["kind"] == "CLIENT"
    assert http["depth"] == 2

    result = run(runner, filled, "show", filled.captured_id, "--io")
    assert result.exit_code == 0, result.output
    # Markup-like user data prints as it is.
    assert '"password": "[REDACTED]"' in result.stdout
    assert "GET /customers/42" in result.stdout
    no_capture = run(runner, filled, "show", filled.failed_id, "--io")
    assert "No input/output was captured" in no_capture.stdout


def test_unknown_and_ambiguous_ids_give_one_line(runner: CliRunner, filled: Filled) -> None:
    for command in ("show", "logs"):
        result = run(runner, filled, command, "no-such-id")
        assert result.exit_code == 1
        assert one_error_line(result) == "Error: no execution with id 'no-such-id' or an id starting with it"
    result = run(runner, filled, "show", "cafe")
    assert result.exit_code == 1
    line = one_error_line(result)
    assert "several execution ids" in line
    assert filled.captured_id in line and filled.billing_id in line
    result = run(runner, filled, "export", "--format", "otlp-json", "--output", "-", "--execution", "cafe")
    assert result.exit_code == 1
    assert "several execution ids" in one_error_line(result)


# -- logs ------------------------------------------------------------------------------------------------


def test_logs(runner: CliRunner, filled: Filled) -> None:
    rows = run_json(runner, filled, "logs", filled.failed_id[:6])
    assert {row["execution_id"] for row in rows} == {filled.failed_id}
    times = [row["created_at"] for row in rows]
    assert times == sorted(times)
    assert rows[0]["message"] == "Execution started: order-pipeline"
    assert rows[-1]["message"].startswith("Execution failed: order-pipeline")
    assert any(
        row["message"] == "Step completed: validate" or "Step completed: validate (" in row["message"]
        for row in rows
    )

    errors = run_json(runner, filled, "logs", filled.failed_id, "--level", "error")
    assert errors and {row["level"] for row in errors} == {"error"}
    assert any(row["message"].startswith("Step failed: reserve-stock") for row in errors)
    warnings = run_json(runner, filled, "logs", filled.failed_id, "--level", "WARNING", "--level", "error")
    assert {row["level"] for row in warnings} == {"warning", "error"}
    assert run_json(runner, filled, "logs", filled.failed_id, "--limit", "2") == rows[:2]

    text = run(runner, filled, "logs", filled.failed_id, "--level", "error")
    assert text.exit_code == 0
    assert "Step failed: reserve-stock" in text.stdout


# -- stats -----------------------------------------------------------------------------------------------


def test_stats(runner: CliRunner, filled: Filled) -> None:
    data = run_json(runner, filled, "stats")
    workflows = {row["workflow_id"]: row for row in data["workflows"]}
    assert workflows["order-pipeline"]["count"] == len(filled.demo_ids) + 2  # + captured + old
    assert workflows["order-pipeline"]["failed"] == 1
    assert workflows["billing"]["count"] == 1
    assert workflows["billing"]["failure_rate"] == 0
    steps = {(row["workflow_id"], row["step_name"]): row for row in data["steps"]}
    reserve = steps[("order-pipeline", "reserve-stock")]
    assert reserve["count"] == len(filled.demo_ids)
    assert reserve["failed"] == 1
    assert reserve["failure_rate"] == pytest.approx(1 / len(filled.demo_ids))
    coupon = steps[("order-pipeline", "apply-coupon")]
    assert coupon["skipped"] > 0
    for row in data["steps"]:
        assert row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] <= row["max_ms"]

    recent = run_json(runner, filled, "stats", "--since", "1d", "--workflow", "order-pipeline")
    assert [row["workflow_id"] for row in recent["workflows"]] == ["order-pipeline"]
    assert recent["workflows"][0]["count"] == len(filled.demo_ids) + 1
    assert recent["since"] is not None

    by_name = run_json(runner, filled, "stats", "--sort", "name")["steps"]
    keys = [(row["workflow_id"], row["step_name"]) for row in by_name]
    assert keys == sorted(keys)
    by_failures = run_json(runner, filled, "stats", "--sort", "failures")["steps"]
    rates = [row["failure_rate"] for row in by_failures]
    assert rates == sorted(rates, reverse=True)

    text = run(runner, filled, "stats")
    assert text.exit_code == 0
    assert "reserve-stock" in text.stdout and "failure rate" in text.stdout


# -- sql -------------------------------------------------------------------------------------------------


def test_sql_formats(runner: CliRunner, filled: Filled) -> None:
    query = "SELECT id, status FROM workflow_executions WHERE workflow_id = 'billing'"
    assert run_json(runner, filled, "sql", query) == [{"id": filled.billing_id, "status": "completed"}]
    csv_result = run(runner, filled, "sql", query, "--format", "csv")
    assert csv_result.exit_code == 0
    assert csv_result.stdout.splitlines() == ["id,status", f"{filled.billing_id},completed"]
    table = run(runner, filled, "sql", query)
    assert filled.billing_id in table.stdout and "1 row" in table.stdout
    macro = run_json(runner, filled, "sql", "SELECT id FROM slowest_executions(n := 2)")
    assert len(macro) == 2


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO spans SELECT * FROM spans",
        "DELETE FROM spans",
        "DROP TABLE spans",
        "COPY spans TO '{target}'",
        "ATTACH '{target}' AS other",
        "UPDATE spans SET name = 'x'",
        "CREATE TABLE x AS SELECT 1",
        "INSTALL httpfs",
        "SET threads = 1",
        "/* a comment first */ delete from spans",
        "SELECT 1; DELETE FROM spans",
        "EXPLAIN ANALYZE DELETE FROM spans",
    ],
)
def test_sql_refuses_statements_that_write(
    runner: CliRunner, filled: Filled, tmp_path: Path, statement: str
) -> None:
    target = tmp_path / "leak.out"
    before = run_json(runner, filled, "sql", "SELECT count(*) AS n FROM spans")
    result = run(runner, filled, "sql", statement.format(target=target))
    assert result.exit_code == 2, result.output
    line = one_error_line(result)
    assert line.startswith("Error: ")
    assert "refused" in line or "one statement at a time" in line
    assert not target.exists()
    assert run_json(runner, filled, "sql", "SELECT count(*) AS n FROM spans") == before


def test_sql_errors_are_one_message(runner: CliRunner, filled: Filled) -> None:
    result = run(runner, filled, "sql", "SELECT * FROM no_such_table")
    assert result.exit_code == 1
    assert "no_such_table" in result.stderr
    assert "Traceback" not in result.output
    result = run(runner, filled, "sql", "SELEC 1")
    assert result.exit_code == 1
    assert "syntax error" in result.stderr


# -- export and prune ------------------------------------------------------------------------------------


def test_export_commands(runner: CliRunner, filled: Filled, tmp_path: Path) -> None:
    out = tmp_path / "jaeger.json"
    summary = run_json(runner, filled, "export", "--format", "jaeger-json", "--output", str(out))
    assert summary["traces"] == len(filled.all_ids)
    assert len(json.loads(out.read_text())["data"]) == len(filled.all_ids)

    result = run(
        runner, filled, "export", "--format", "otlp-json", "--output", "-", "--execution", "cafe0002"
    )
    assert result.exit_code == 0, result.output
    request = json.loads(result.stdout)
    assert len(request["resourceSpans"]) == 1
    assert "Exported 1 traces" in result.stderr

    folder = tmp_path / "parquet"
    summary = run_json(
        runner, filled, "export", "--format", "parquet", "--output", str(folder), "--since", "1d"
    )
    assert summary["traces"] == len(filled.all_ids) - 1
    assert (folder / "spans.parquet").exists()

    bad = run(runner, filled, "export", "--format", "jaeger-json", "--output", "x", "--partition-by-date")
    assert bad.exit_code == 2
    assert one_error_line(bad) == "Error: --partition-by-date applies to --format parquet only"
    bad = run(runner, filled, "export", "--format", "yaml", "--output", "x")
    assert bad.exit_code == 2


def test_prune_removes_the_old_trace(runner: CliRunner, filled: Filled, tmp_path: Path) -> None:
    copy = tmp_path / "copy.duckdb"
    shutil.copy(filled.path, copy)
    args = ["--db", str(copy), "--json"]
    dry = runner.invoke(main, ["prune", "--older-than", "7d", "--dry-run", *args])
    assert dry.exit_code == 0, dry.output
    report = json.loads(dry.stdout)
    assert report["dry_run"] is True
    assert (report["traces"], report["executions"], report["steps"], report["spans"]) == (1, 1, 1, 3)
    assert (report["span_events"], report["span_links"]) == (1, 1)
    assert report["logs"] == 5  # start + end of execution and step, and the step's event

    done = runner.invoke(main, ["prune", "--older-than", "7d", *args])
    assert done.exit_code == 0, done.output
    assert {k: v for k, v in json.loads(done.stdout).items() if k not in ("dry_run", "cutoff")} == {
        k: v for k, v in report.items() if k not in ("dry_run", "cutoff")
    }
    ids = {row["id"] for row in json.loads(runner.invoke(main, ["executions", *args]).stdout)}
    assert ids == set(filled.all_ids) - {filled.old_id}
    again = runner.invoke(main, ["prune", "--older-than", "7d", *args])
    assert json.loads(again.stdout)["spans"] == 0
    text = runner.invoke(main, ["prune", "--older-than", "7d", "--db", str(copy)])
    assert text.stdout.startswith("Removed 0 traces")


def test_bad_arguments_exit_2(runner: CliRunner, filled: Filled) -> None:
    for args in (
        ["executions", "--since", "yesterday"],
        ["executions", "--status", "lost"],
        ["executions", "--limit", "0"],
        ["prune", "--older-than", "soon"],
        ["prune", "--older-than", "0s"],
        ["stats", "--sort", "color"],
        ["show"],
    ):
        result = run(runner, filled, *args)
        assert result.exit_code == 2, (args, result.output)
        assert "Traceback" not in result.output
    result = run(runner, filled, "executions", "--since", "1h", "--until", "2h")
    assert result.exit_code == 2
    assert "the window is empty" in one_error_line(result)


def test_missing_database_exit_1(runner: CliRunner, tmp_path: Path) -> None:
    missing = tmp_path / "none.duckdb"
    for args in (
        ["executions"],
        ["show", "x"],
        ["logs", "x"],
        ["stats"],
        ["sql", "SELECT 1"],
        ["prune", "--older-than", "1d"],
        ["export", "--format", "jaeger-json", "--output", str(tmp_path / "o.json")],
    ):
        result = runner.invoke(main, [*args, "--db", str(missing)])
        assert result.exit_code == 1, (args, result.output)
        assert "no database at" in one_error_line(result)
    assert not missing.exists()


def test_db_from_environment(runner: CliRunner, filled: Filled, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_WORKFLOW_DB", str(filled.path))
    result = runner.invoke(main, ["executions", "--json", "--status", "failed"])
    assert result.exit_code == 0, result.output
    assert [row["id"] for row in json.loads(result.stdout)] == [filled.failed_id]


# -- the real entry point ------------------------------------------------------------------------------


def entry_point() -> str:
    script = Path(sys.executable).with_name("otel-workflow")
    assert os.access(script, os.X_OK), f"no otel-workflow script beside {sys.executable}"
    return str(script)


def test_entry_point_subprocess(filled: Filled) -> None:
    env = {**os.environ, "OTEL_WORKFLOW_DB": str(filled.path), "COLUMNS": "200"}
    listed = subprocess.run(
        [entry_point(), "executions", "--json", "--workflow", "billing"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    assert [row["id"] for row in json.loads(listed.stdout)] == [filled.billing_id]
    unknown = subprocess.run(
        [entry_point(), "show", "zzzz"], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert unknown.returncode == 1
    assert unknown.stderr.strip().splitlines() == [
        "Error: no execution with id 'zzzz' or an id starting with it"
    ]
    refused = subprocess.run(
        [entry_point(), "sql", "DROP TABLE spans"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 2
    assert len(refused.stderr.strip().splitlines()) == 1


def test_python_dash_m_runs_the_same_cli(filled: Filled) -> None:
    env = {**os.environ, "OTEL_WORKFLOW_DB": str(filled.path), "COLUMNS": "200"}
    listed = subprocess.run(
        [sys.executable, "-m", "otel_workflow", "executions", "--json", "--workflow", "billing"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    assert [row["id"] for row in json.loads(listed.stdout)] == [filled.billing_id]
    usage = subprocess.run(
        [sys.executable, "-m", "otel_workflow", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert usage.returncode == 0
    assert usage.stdout.startswith("Usage: otel-workflow ")


def test_demo_subprocess_shows_the_failed_waterfall(tmp_path: Path) -> None:
    # A subprocess: `demo` sets the global TracerProvider, which must not leak into this test process.
    db = tmp_path / "demo.duckdb"
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("OTEL_WORKFLOW_DB", None)
    result = subprocess.run(
        [entry_point(), "demo", "--db", str(db), "--executions", "3", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert len(data["executions"]) == 3
    [failed] = data["failed"]
    assert failed["status"] == "failed"
    labels = [span["label"] for span in failed["spans"]]
    assert "reserve-stock" in labels
    # The demo's HTTP client span (other instrumentation, on the global provider) is in the waterfall.
    assert any(span["role"] is None and span["kind"] == "CLIENT" for span in failed["spans"])
    with duckdb.connect(str(db), read_only=True) as connection:
        assert connection.execute("SELECT count(*) FROM workflow_executions").fetchone() == (3,)
    text = subprocess.run(
        [entry_point(), "demo", "--db", str(db), "--executions", "3"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert text.returncode == 0, text.stderr
    assert "Waterfall" in text.stdout and "reserve-stock" in text.stdout


def test_show_a_running_execution(traced: Traced, runner: CliRunner) -> None:
    wf = traced.wf
    with wf.execution(trigger_type="POST /slow") as run, wf.step("prepare"), wf.step("await-approval"):
        traced.sync()
        args = ["show", run.execution_id[:12], "--db", str(traced.path)]
        data = json.loads(runner.invoke(main, [*args, "--json"]).stdout)
        assert (data["status"], data["current_step"], data["duration_ms"]) == (
            "running",
            "await-approval",
            None,
        )
        assert [span["status"] for span in data["spans"]] == ["running"] * 3
        text = runner.invoke(main, args)
        assert text.exit_code == 0, text.output
        assert "so far" in text.stdout and "await-approval" in text.stdout and "▒" in text.stdout
        listed = json.loads(
            runner.invoke(
                main, ["executions", "--status", "running", "--json", "--db", str(traced.path)]
            ).stdout
        )
        assert [row["id"] for row in listed] == [run.execution_id]
