"""How a command fails: one line on stderr and an exit code (`model.problems`), never a traceback."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import click

from otel_workflow.model.problems import EXIT_FAILED, EXIT_USAGE, problem_of

P = ParamSpec("P")
R = TypeVar("R")


class CommandError(click.ClickException):
    """The command could not do its work: exit code 1 (`model.problems.EXIT_FAILED`)."""

    exit_code = EXIT_FAILED


class BadArgument(CommandError):
    """A bad argument found after parsing (a refused SQL statement, an empty window): exit code 2."""

    exit_code = EXIT_USAGE


def first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def friendly_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn the errors a command can meet into one line on stderr and a meaningful exit code."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except click.ClickException:
            raise
        except BrokenPipeError:
            # The reader went away (`| head`): stop quietly, and keep Python from complaining at exit.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            sys.exit(1)
        except Exception as exc:
            problem = problem_of(exc)
            if problem is None and not isinstance(exc, OSError):
                raise
            if problem is None:
                raise CommandError(first_line(exc)) from exc
            error = BadArgument if problem.exit_code == EXIT_USAGE else CommandError
            raise error(problem.message.splitlines()[0]) from exc

    return run
