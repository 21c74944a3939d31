"""The services' JSON log lines made short for people: time, service, event, the fields that
say something; colour by level. A line that is not JSON (a traceback) is shown as it is.

    22:18:42 trainer   job finished  dataset=sensors outcome=succeeded message="published version 1"

Reason to change: how service log lines look in a terminal.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from rich.text import Text

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
        f"the embedder cannot load model {name!r} ({event.get('model_id', '?')}): {event.get('error', '')} "
        f"With oddity up: --model {name}=/path/to/local/dir (add text: before a text model's path)."
    )
