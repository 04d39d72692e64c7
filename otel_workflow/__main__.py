"""`python -m otel_workflow ...`: the same command line as the `otel-workflow` script."""

from otel_workflow.cli.commands import main

main(prog_name="otel-workflow")
