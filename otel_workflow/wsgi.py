"""The WSGI middleware at the path DESIGN.md names (`otel_workflow.wsgi.WorkflowTraceMiddleware`);
it lives in `otel_workflow.instrument.http.wsgi`."""

from otel_workflow.instrument.http.wsgi import CLAIMS_ENVIRON_KEY, WorkflowTraceMiddleware, default_claims

__all__ = ["CLAIMS_ENVIRON_KEY", "WorkflowTraceMiddleware", "default_claims"]
