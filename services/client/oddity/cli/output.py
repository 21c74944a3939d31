"""What commands print: rich tables for people on stdout, JSON for programs on stdout
(`--json`), progress, notes and errors on stderr (so stdout stays clean for pipes). Text for
people carries the services' hints in the command line's words (`oddity.cli.cli_words`);
JSON keeps the API's.

Reason to change: how the command line looks.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from rich.text import Text

from oddity.cli.cli_words import in_cli_words


class _PeoplesConsole(Console):
    """A console whose plain strings (a job's message, what happens next) read in the command
    line's words."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        super().print(*(in_cli_words(o) if isinstance(o, str) else o for o in objects), **kwargs)


# Consoles look up sys.stdout / sys.stderr when they print, so redirected streams are honoured.
out = _PeoplesConsole(highlight=False)
err = _PeoplesConsole(stderr=True, highlight=False)
PIPE_WIDTH = 200  # columns of a table written to a pipe or file (rich would take 80)


def print_json(value: Any) -> None:
    """One JSON document on stdout (plain: no colour, whatever the terminal)."""
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def print_json_line(value: Any) -> None:
    """One JSON object on its own line (for streams of updates)."""
    sys.stdout.write(json.dumps(value, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def error(message: str) -> None:
    """One red line on stderr."""
    err.print(Text(f"error: {' '.join(in_cli_words(message).split())}", style="red"), soft_wrap=True)


def note(message: str, style: str = "yellow") -> None:
    """One line on stderr for people (warnings, summaries)."""
    err.print(Text(in_cli_words(message), style=style), soft_wrap=True)


def show(renderable: Table) -> None:
    """A table on stdout: as wide as the terminal, or wide enough for whole rows in a pipe or file."""
    console = out if out.is_terminal else Console(file=sys.stdout, width=PIPE_WIDTH, highlight=False)
    console.print(renderable)


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    result = Table(title=title, title_justify="left", show_lines=False)
    for column in columns:
        result.add_column(column, overflow="fold")
    for row in rows:
        result.add_row(*(cell(v) for v in row))
    return result


def cell(value: Any) -> str:
    if isinstance(value, np.generic):
        value = value.item()
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, datetime):
        return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    return in_cli_words(str(value))
