"""The read side: executions, steps, logs, statistics, time parsing, and the SQL sandbox."""
