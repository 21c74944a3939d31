"""Exit codes, and the one place a failed operation becomes one red line and its code.

    0  done
    1  the operation failed: the service refused it (unknown model or dataset, bad input,
       a training job that failed, refused credentials, ...) or a file could not be read
       or written
    2  usage error: unknown option, missing or invalid argument (typer's, and ours)
    3  a service could not be reached or is not ready (UNAVAILABLE, deadline passed):
       retrying later may work
    4  `oddity up`: its folder or a port it listens on is in use (another `oddity up`)
    130 interrupted (Ctrl-C)

Reason to change: what the command line tells scripts when something fails.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

import typer

from oddity.cli.output import error
from oddity.cli.table_files import TableError
from oddity.common.errors import OddityError, Unavailable

OK = 0
FAILED = 1
USAGE = 2
UNAVAILABLE = 3
IN_USE = 4
INTERRUPTED = 130

HELP = (
    "Exit codes: 0 done; 1 the operation failed (the service refused it, a job failed, a file "
    "could not be read); 2 usage error; 3 a service could not be reached or is not ready "
    "(retrying may work); 130 interrupted."
)


def reports_failures(command: Callable[..., None]) -> Callable[..., None]:
    """Run `command`; a failed operation prints one red line on stderr and exits with its code."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except Unavailable as exc:
            error(exc.message)
            raise typer.Exit(UNAVAILABLE) from None
        except OddityError as exc:
            error(exc.message)
            raise typer.Exit(FAILED) from None
        except TableError as exc:
            error(str(exc))
            raise typer.Exit(FAILED) from None
        except BrokenPipeError:  # the reader of stdout went away (e.g. `| head`): nothing left to tell it
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(FAILED) from None
        except OSError as exc:
            error(f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else str(exc))
            raise typer.Exit(FAILED) from None
        except KeyboardInterrupt:
            error("interrupted")
            raise typer.Exit(INTERRUPTED) from None

    return run
