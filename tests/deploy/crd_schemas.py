"""The Prometheus Operator's CRD schemas (monitoring.coreos.com/v1) as the npm package
@kubernetes-models/prometheus-operator 4.0.0 carries them (generated from prometheus-operator
v0.57.0's CRDs), which `bash scripts/dev setup` unpacks into .venv/share/prometheus-operator-crds.

Each model's JavaScript module holds its schema as a JSON object literal (`const schema = {...}`).
Validation is strict as `kubectl apply` is (server-side field validation): an object schema
with properties and no additionalProperties admits no other field, unless it says
x-kubernetes-preserve-unknown-fields. `metadata` refers to Kubernetes' ObjectMeta, which the
caller validates with kubernetes-validate."""

from __future__ import annotations

import json
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest

VERSION = "4.0.0"
FOLDER = Path(sys.prefix) / "share" / "prometheus-operator-crds"
MARKER = "const schema = "


def _strict(schema: Any) -> Any:
    if isinstance(schema, dict):
        schema = {key: _strict(value) for key, value in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


@cache
def schema(kind: str) -> dict[str, Any]:
    """The strict JSON schema of a monitoring.coreos.com/v1 kind, without `metadata`."""
    package = FOLDER / "package.json"
    if not package.is_file():
        pytest.fail(
            f"the Prometheus Operator's CRD schemas are missing at {FOLDER}: `bash scripts/dev setup` unpacks "
            f"the npm package @kubernetes-models/prometheus-operator@{VERSION} there",
            pytrace=False,
        )
    found = json.loads(package.read_text())["version"]
    assert found == VERSION, f"{FOLDER} holds version {found}, not {VERSION}: run `bash scripts/dev setup`"
    text = (FOLDER / "monitoring.coreos.com" / "v1" / f"{kind}.js").read_text(encoding="utf-8")
    loaded, _end = json.JSONDecoder().raw_decode(text[text.index(MARKER) + len(MARKER) :])
    loaded["properties"].pop("metadata")
    return _strict(loaded)
