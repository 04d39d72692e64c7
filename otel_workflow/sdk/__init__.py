"""The OpenTelemetry SDK side: span processor, span exporter, `configure()`, autoconfig entry points."""
