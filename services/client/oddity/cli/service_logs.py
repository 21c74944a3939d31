"""The services' log lines for people: made short (time, service, event, the fields that say
something; colour by level; a line that is not JSON, e.g. a traceback, as it is) on stdout,
or passed on raw; the embedder's "model not loaded" turned into advice on stderr.

    22:18:42 trainer   job finished  dataset=sensors outcome=succeeded message="published version 1"

Reason to change: how service log lines look in a terminal.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Any

from rich.text import Text

from oddity.cli import output

# Fields every line carries, or that only matter to machines.
LEFT_OUT = frozenset({"event", "service", "level", "timestamp", "grpc_service", "request_id", "logger"})
LEVEL_STYLES = {"error": "red", "critical": "red", "warning": "yellow", "debug": "dim"}
SERVICE_STYLES = {"detector": "cyan", "trainer": "magenta", "embedder": "blue"}
NAME_WIDTH = 8


def _clock(stamp: object) -> str:
    try:
        return datetime.fromisoformat(str(stamp)).astimezone().strftime("%H:%M:%S")
    except ValueError:
        return datetime.now().strftime("%H:%M:%S")


def _value(value: object) -> str:
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False) if (" " in value or not value) else value
    if isinstance(value, float):
        return f"{value:.4g}"
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def human_line(service: str, raw: str, event: dict[str, Any] | None) -> Text:
    """One log line for a terminal."""
    name = Text(f"{service:<{NAME_WIDTH}} ", style=SERVICE_STYLES.get(service, ""))
    if event is None:
        return Text(datetime.now().strftime("%H:%M:%S") + " ", style="dim") + name + Text(raw)
    level = str(event.get("level", "info"))
    style = LEVEL_STYLES.get(level, "")
    fields = " ".join(f"{key}={_value(value)}" for key, value in event.items() if key not in LEFT_OUT)
    message = Text(str(event.get("event", "")), style=f"bold {style}".strip())
    if fields:
        message += Text("  " + fields, style=style)
    return Text(_clock(event.get("timestamp")) + " ", style="dim") + name + message


def model_not_loaded(event: dict[str, Any] | None) -> str | None:
    """The embedder's one line for a model it cannot load, as advice for `oddity up` users."""
    if event is None or event.get("event") != "model not loaded":
        return None
    name = event.get("model", "?")
    return (
        f"the embedder cannot load model {name!r} ({event.get('model_id', '?')}): {event.get('error', '')}\n"
        f"  with oddity up: --model {name}=/path/to/local/dir (text models: --model {name}=text:/path/to/dir)"
    )


class TerminalOutput:
    """Service lines on stdout (short, or raw JSON with `raw`); notes and advice on stderr."""

    def __init__(self, raw: bool, quiet: bool = False) -> None:
        self.raw = raw
        self.quiet = quiet  # only the services' errors and advice (the demo)

    def line(self, service: str, raw: str, event: dict[str, Any] | None) -> None:
        advice = model_not_loaded(event)
        if advice:
            output.note(advice, style="bold red")
        if self.quiet:  # errors only, and not the calls that failed: their callers report them
            if advice is None and (event is None or _is_service_error(event)):
                output.err.print(human_line(service, raw, event), soft_wrap=True)
            return
        if self.raw:
            sys.stdout.write(raw + "\n")
            sys.stdout.flush()
        else:
            output.out.print(human_line(service, raw, event), soft_wrap=True)

    def note(self, message: str) -> None:
        output.note(message, style="green")


def _is_service_error(event: dict[str, Any]) -> bool:
    return event.get("level") in ("error", "critical") and event.get("event") != "request failed"
