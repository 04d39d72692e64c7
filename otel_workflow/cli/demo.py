"""The sample order pipeline that `otel-workflow demo` runs.

It shows every shape the tables handle: a nested sub-pipeline, a step retried
under the same name, a skipped step, a child span from "other
instrumentation", a log event, application log lines (Python `logging`, stored with
their steps), and one failing execution with a compensating step.
"""

from __future__ import annotations

import logging
import random
import time

from opentelemetry.trace import SpanKind

from otel_workflow.instrument.tracer import WorkflowTracer


class PaymentGatewayTimeout(Exception):
    """A transient failure the pipeline retries."""


class OutOfStock(Exception):
    """The failure that makes one demo execution fail."""


log = logging.getLogger("order-pipeline")


def _work(rng: random.Random, low_ms: float, high_ms: float) -> None:
    time.sleep(rng.uniform(low_ms, high_ms) / 1000)


def run_order(wf: WorkflowTracer, order_number: int, rng: random.Random, *, fail: bool) -> str:
    """One execution of the order pipeline; returns its execution id. Never raises."""
    customer = f"customer{order_number}@example.com"
    try:
        with wf.execution(trigger_type="POST /orders", triggered_by=customer) as run:
            with wf.step("validate", step_type="step.validate"):
                _work(rng, 1, 4)
            with wf.step("enrich", step_type="pipeline.enrich"):
                # A span from "other instrumentation" inside a step: stored and shown, not a step.
                with (
                    wf.step("fetch-customer", step_type="step.fetch"),
                    wf.otel_tracer.start_as_current_span("GET /customers/{id}", kind=SpanKind.CLIENT) as http,
                ):
                    http.set_attribute("http.request.method", "GET")
                    http.set_attribute("http.response.status_code", 200)
                    _work(rng, 2, 8)
                with wf.step("fetch-inventory", step_type="step.fetch") as step:
                    step.span.add_event("cache miss", {"level": "warning", "message": "inventory cache miss"})
                    _work(rng, 3, 10)
            for attempt in (1, 2):
                try:
                    with wf.step("charge-payment", step_type="step.payment") as step:
                        step.span.set_attribute("payment.attempt", attempt)
                        _work(rng, 5, 15)
                        if attempt == 1 and order_number % 2 == 0:
                            log.warning("payment gateway timed out on attempt %d; retrying", attempt)
                            raise PaymentGatewayTimeout("gateway did not answer within 10s")
                    break
                except PaymentGatewayTimeout:
                    continue
            with wf.step("apply-coupon", step_type="step.discount") as step:
                if order_number % 3 != 1:
                    step.skip("no coupon on this order")
                else:
                    _work(rng, 1, 3)
            try:
                with wf.step("reserve-stock", step_type="step.inventory"):
                    _work(rng, 2, 6)
                    if fail:
                        log.error("SKU-%04d: %d ordered, none left in any warehouse", order_number, 2)
                        raise OutOfStock(f"SKU-{order_number:04d} is out of stock")
            except OutOfStock:
                with wf.step("refund-payment", step_type="step.compensation") as step:
                    _work(rng, 2, 5)
                    step.mark_compensated()
                raise
            with wf.step("send-confirmation", step_type="step.notify"):
                _work(rng, 1, 4)
    except OutOfStock:
        pass
    return run.execution_id


def run_demo(wf: WorkflowTracer, executions: int = 5, seed: int = 7) -> list[str]:
    """Run `executions` orders; the third one (or the last, if fewer) fails."""
    rng = random.Random(seed)
    failing = min(3, executions)
    return [run_order(wf, n, rng, fail=n == failing) for n in range(1, executions + 1)]
