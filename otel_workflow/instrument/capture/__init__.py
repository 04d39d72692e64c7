"""Step input/output capture: the baggage flag, the payload encoder, redaction."""
