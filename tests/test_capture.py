"""I/O capture end to end: the DuckDB tables and what the standard OTLP exporter sends, off and on."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from capture_support import OtlpReceiver, Service, make_service, proto_attributes, proto_events

from otel_workflow import capture_io, io_capture_enabled
from otel_workflow.instrument.capture.flag import (
    CapturePolicy,
    CaptureRateLimiter,
    capture_limiter,
    capture_policy,
    capture_refused_count,
    configure_capture,
)

SENTINEL = "sentinel-4b1d"  # in every payload: its absence proves no payload went anywhere
SECRET = "hunter2-secret-9f3c"
CARD = "4111 1111 1111 1111"


@pytest.fixture(autouse=True)
def fresh_capture_policy() -> Iterator[None]:
    """Each test starts from the default policy with a full rate-limit bucket, and leaves it so."""
    configure_capture(captures_per_minute=None)
    yield
    configure_capture()
    capture_limiter().reset()


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as running:
        yield running


@pytest.fixture
def service(tmp_path: Path, receiver: OtlpReceiver) -> Iterator[Service]:
    svc = make_service(tmp_path / "orders.duckdb", otlp_endpoint=receiver.endpoint)
    try:
        yield svc
    finally:
        svc.close()


@dataclass
class Charge:
    amount: int
    api_key: str
    note: str


def run_order(service: Service) -> str:
    """One execution whose steps record nested input and output holding secrets and the sentinel."""
    wf = service.wf
    with wf.execution(trigger_type="POST /orders", trigger_data={"body": SENTINEL, "token": SECRET}) as run:
        with wf.step("validate") as step:
            step.record_input(
                {
                    "order": {"id": 42, "note": SENTINEL, "customer": {"Password": SECRET, "email": "a@x"}},
                    "headers": [("Authorization", f"Bearer {SECRET}"), ("Accept", "*/*")],
                    "payment": {"card": CARD, "cards": [{"number": 4111111111111111}]},
                }
            )
            step.record_output({"valid": True, "session": {"id": SECRET}, "echo": SENTINEL})
        with wf.step("charge") as step:
            step.record_input(Charge(amount=1999, api_key=SECRET, note=f"{SENTINEL} paid with {CARD}"))
            step.record_output([{"receipt": SENTINEL, "private_key": SECRET}])
    return run.execution_id


def stored_events(service: Service, name: str) -> list[dict[str, Any]]:
    rows = service.rows("SELECT attributes FROM span_events WHERE name = ?", [name])
    return [json.loads(row[0]) for row in rows]


def test_capture_is_off_by_default_and_nothing_leaves_the_process(
    service: Service, receiver: OtlpReceiver
) -> None:
    assert not io_capture_enabled()
    execution_id = run_order(service)
    service.finish()

    steps = service.steps()
    assert [s["step_name"] for s in steps] == ["validate", "charge"]
    assert all(s["input_data"] is None and s["output_data"] is None for s in steps)
    assert service.rows("SELECT count(*) FROM spans WHERE input_data IS NOT NULL OR output_data IS NOT NULL")[
        0
    ] == (0,)
    io_events = service.rows(
        "SELECT count(*) FROM span_events WHERE name IN "
        "('workflow.step.input', 'workflow.step.output', 'workflow.execution.input')"
    )
    assert io_events == [(0,)]
    [execution] = service.executions()
    assert execution["id"] == execution_id
    assert execution["metadata"]["capture_io"] is False
    stored = service.everything_stored()
    assert SENTINEL not in stored and SECRET not in stored

    # The OTLP exporter got the spans, and no payload with them.
    spans = receiver.spans()
    assert {s.name for s in spans} == {"workflow.execute", "workflow.step.validate", "workflow.step.charge"}
    for span in spans:
        assert not [name for name, _ in proto_events(span) if name.startswith("workflow.")]
        assert "workflow.capture_io" not in proto_attributes(span.attributes)
    raw = receiver.raw()
    assert SENTINEL.encode() not in raw and SECRET.encode() not in raw
    assert b"workflow.io.json" not in raw


def test_capture_on_stores_and_exports_redacted_payloads(service: Service, receiver: OtlpReceiver) -> None:
    with capture_io():
        execution_id = run_order(service)
    service.finish()

    [execution] = service.executions()
    assert execution["id"] == execution_id
    assert execution["metadata"]["capture_io"] is True
    assert execution["metadata"]["explicit_trace"] is True

    validate, charge = service.steps()
    validate_in = json.loads(validate["input_data"])
    assert validate_in["order"]["id"] == 42
    assert validate_in["order"]["note"] == SENTINEL
    assert validate_in["order"]["customer"] == {"Password": "[REDACTED]", "email": "a@x"}
    assert validate_in["headers"] == [["Authorization", "[REDACTED]"], ["Accept", "*/*"]]
    assert validate_in["payment"] == {"card": "[REDACTED]", "cards": [{"number": "[REDACTED]"}]}
    assert json.loads(validate["output_data"]) == {"valid": True, "session": "[REDACTED]", "echo": SENTINEL}
    assert json.loads(charge["input_data"]) == {
        "amount": 1999,
        "api_key": "[REDACTED]",
        "note": f"{SENTINEL} paid with [REDACTED]",
    }
    assert json.loads(charge["output_data"]) == [{"receipt": SENTINEL, "private_key": "[REDACTED]"}]

    # trigger_data is on the execution span, redacted too.
    [trigger] = stored_events(service, "workflow.execution.input")
    assert json.loads(trigger["workflow.io.json"]) == {"body": SENTINEL, "token": "[REDACTED]"}

    stored = service.everything_stored()
    assert SENTINEL in stored
    assert SECRET not in stored and CARD not in stored and "4111111111111111" not in stored

    # The same payloads went over OTLP, as span events Jaeger and Tempo show.
    by_name = {span.name: span for span in receiver.spans()}
    assert proto_attributes(by_name["workflow.execute"].attributes)["workflow.capture_io"] is True
    exported = dict(proto_events(by_name["workflow.step.validate"]))
    assert json.loads(exported["workflow.step.input"]["workflow.io.json"]) == validate_in
    assert json.loads(exported["workflow.step.output"]["workflow.io.json"])["session"] == "[REDACTED]"
    raw = receiver.raw()
    assert SENTINEL.encode() in raw
    assert SECRET.encode() not in raw and CARD.encode() not in raw


def test_a_megabyte_of_multibyte_text_is_cut_to_valid_json_under_10_kib(
    service: Service, receiver: OtlpReceiver
) -> None:
    text = "Grüße, 世界! 🎉 " * 50_000  # about 1.1 MB of UTF-8, 1- to 4-byte characters
    assert len(text.encode()) > 1_000_000
    with capture_io(), service.wf.execution(), service.wf.step("big") as step:
        step.record_input({"document": text, "password": SECRET})
        step.record_output(text)
    service.finish()

    [step_row] = service.steps()
    for column in ("input_data", "output_data"):
        payload = step_row[column]
        size = len(payload.encode("utf-8"))
        assert size <= 10 * 1024
        document = json.loads(payload)
        assert document["_truncated"] is True
        assert document["original_bytes"] > 1_000_000
        preview = document["preview"]
        body = preview["document"] if column == "input_data" else preview
        assert body.endswith("…")
        assert text.startswith(body[:-1])
        assert len(body) > 1000  # the preview uses the room it has
    assert SECRET not in service.everything_stored()

    [exported] = [s for s in receiver.spans() if s.name == "workflow.step.big"]
    for _, attributes in proto_events(exported):
        payload = attributes["workflow.io.json"]
        assert len(payload.encode()) <= 10 * 1024
        json.loads(payload)


def test_record_outside_capture_allocates_no_payload(service: Service) -> None:
    """The off path returns before touching the object: even one that cannot be read is fine."""

    class Explosive:
        def __getattribute__(self, name: str) -> Any:
            raise AssertionError("the object was read while capture was off")

    with service.wf.execution(), service.wf.step("quiet") as step:
        step.record_input(Explosive())
        step.record_output(Explosive())
        assert not step.span.events  # type: ignore[attr-defined]


def test_rate_limit_refuses_captures_past_the_limit_and_counts_them(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    configure_capture(captures_per_minute=2)
    wf = service.wf
    seen_inside: list[bool] = []
    with caplog.at_level(logging.WARNING, logger="otel_workflow"), capture_io():
        for index in range(5):
            with wf.execution(attributes={"run": index}), wf.step("work") as step:
                seen_inside.append(io_capture_enabled())
                step.record_input({"run": index})
                # A nested execution shares its parent's token.
                with wf.execution(attributes={"run": index, "nested": True}):
                    pass
            # Outside the refused execution the request's switch is as it was.
            assert io_capture_enabled()
    service.finish()

    assert seen_inside == [True, True, False, False, False]
    assert capture_refused_count() == 3
    assert capture_limiter().granted == 2
    executions = service.rows(
        "SELECT attributes ->> '$.run', attributes ->> '$.nested', capture_io FROM spans "
        "WHERE workflow_role = 'execution' ORDER BY start_time"
    )
    assert [(run, capture) for run, _, capture in executions] == [
        ("0", True), ("0", True), ("1", True), ("1", True),
        ("2", False), ("2", False), ("3", False), ("3", False), ("4", False), ("4", False),
    ]  # fmt: skip
    stored = [row for row in service.steps() if row["input_data"] is not None]
    assert [json.loads(row["input_data"]) for row in stored] == [{"run": 0}, {"run": 1}]
    warnings = [r for r in caplog.records if "rate limit" in r.getMessage()]
    assert len(warnings) == 1  # logged once per interval, not once per refusal


def test_rate_limiter_refills_over_time() -> None:
    now = [0.0]
    limiter = CaptureRateLimiter(per_minute=6, burst=2, clock=lambda: now[0])
    assert [limiter.try_acquire() for _ in range(3)] == [True, True, False]
    now[0] += 10.0  # 6 a minute: one token every 10 s
    assert [limiter.try_acquire() for _ in range(2)] == [True, False]
    now[0] += 3600.0  # refills to the burst, not beyond
    assert [limiter.try_acquire() for _ in range(3)] == [True, True, False]
    assert (limiter.granted, limiter.refused) == (5, 3)
    assert not CaptureRateLimiter(per_minute=0).try_acquire()
    unlimited = CaptureRateLimiter(per_minute=None)
    assert all(unlimited.try_acquire() for _ in range(1000))


def test_user_rules_redact_and_the_policy_is_process_wide(service: Service) -> None:
    seen: list[str] = []

    def by_field(key: str, value: object) -> bool:
        seen.append(key)
        return key == "ssn"

    def drop_emails(payload: Any) -> Any:
        if isinstance(payload, dict):
            payload.pop("email", None)
        return payload

    configure_capture(
        CapturePolicy(extra_redact_keys=("iban",), redact_field=by_field, redact_payload=drop_emails),
        captures_per_minute=None,
    )
    assert capture_policy().extra_redact_keys == ("iban",)
    with capture_io(), service.wf.execution(), service.wf.step("kyc") as step:
        step.record_input({"IBAN": "DE89 3704", "ssn": "078-05-1120", "email": "a@x", "name": "Al"})
    service.finish()
    [row] = service.steps()
    assert json.loads(row["input_data"]) == {"IBAN": "[REDACTED]", "ssn": "[REDACTED]", "name": "Al"}
    assert "ssn" in seen and "IBAN" not in seen  # the callback is asked only what the patterns let through


def test_failing_payload_callback_withholds_the_payload(service: Service) -> None:
    def broken(payload: Any) -> Any:
        raise RuntimeError("bug in the application's redactor")

    configure_capture(redact_payload=broken, captures_per_minute=None)
    with capture_io(), service.wf.execution(), service.wf.step("s") as step:
        step.record_input({"name": SENTINEL})
    service.finish()
    [row] = service.steps()
    assert SENTINEL not in row["input_data"]
    assert json.loads(row["input_data"])["_redacted"] is True


def test_payload_respects_the_sdk_attribute_length_limit(tmp_path: Path) -> None:
    """OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT would cut the JSON anywhere: the payload stays inside it."""
    from opentelemetry.sdk.trace import SpanLimits, TracerProvider  # noqa: PLC0415

    from otel_workflow import WorkflowTracer  # noqa: PLC0415

    provider = TracerProvider(span_limits=SpanLimits(max_attribute_length=500), shutdown_on_exit=False)
    wf = WorkflowTracer("limits", tracer_provider=provider)
    with capture_io(), wf.execution(), wf.step("s") as step:
        step.record_input({"text": "x" * 5000})
        [event] = step.span.events  # type: ignore[attr-defined]
    payload = event.attributes["workflow.io.json"]
    assert len(payload) <= 500
    assert json.loads(payload)["_truncated"] is True
    provider.shutdown()


def test_policy_validation() -> None:
    with pytest.raises(ValueError, match="max_payload_bytes"):
        CapturePolicy(max_payload_bytes=10)
    with pytest.raises(ValueError, match="captures_per_minute"):
        CapturePolicy(captures_per_minute=-1)
    assert CapturePolicy(extra_redact_keys="ssn").extra_redact_keys == ("ssn",)  # type: ignore[arg-type]


def test_logs_never_carry_the_trigger_payload(service: Service) -> None:
    with capture_io(), service.wf.execution(trigger_data={"note": SENTINEL}):
        pass
    service.finish()
    assert SENTINEL not in repr(service.rows("SELECT * FROM execution_logs"))


def test_one_capture_io_object_shared_by_overlapping_tasks() -> None:
    """Each task leaves its own entry: the switch is off again in each task after its block."""
    shared = capture_io()

    async def task(delay: float) -> tuple[bool, bool]:
        async with shared:
            await asyncio.sleep(delay)
            inside = io_capture_enabled()
        return inside, io_capture_enabled()

    async def main() -> list[tuple[bool, bool]]:
        return list(await asyncio.gather(task(0.02), task(0.0), task(0.01)))

    assert asyncio.run(main()) == [(True, False)] * 3
    assert not io_capture_enabled()
