"""The ASGI middleware at the path DESIGN.md names (`otel_workflow.asgi.WorkflowTraceMiddleware`);
it lives in `otel_workflow.instrument.http.asgi`."""

from otel_workflow.instrument.http.asgi import CLAIMS_SCOPE_KEY, WorkflowTraceMiddleware, default_claims

__all__ = ["CLAIMS_SCOPE_KEY", "WorkflowTraceMiddleware", "default_claims"]
