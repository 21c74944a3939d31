"""Export the embedder's models to ONNX into its cache directory, then exit.

The entry point of the exporter image (torch + transformers), run as an init container (or a
Job) before the serving embedder, whose image has onnxruntime only. It takes the embedder's
own settings (the same ConfigMap: ODDITY_EMBEDDER_MODELS, ODDITY_EMBEDDER_CACHE_DIR, ... or
the same flags), so both compute the same cache keys. Models already in the cache are not
exported again; concurrent exporters are safe (each export is renamed into place).

Exit status 0 when every model is in the cache, 1 otherwise (one log line per failed model,
saying how to provide its weights).

Reason to change: the exporter's console script.
"""

from __future__ import annotations

import sys
import time

from oddity.common.logging import configure_logging, get_logger
from oddity.common.settings import load_settings
from oddity.embedder.export import ExportError, ensure_exported
from oddity.embedder.settings import EmbedderSettings


def main(argv: list[str] | None = None) -> int:
    settings = load_settings(EmbedderSettings, argv)
    configure_logging(level=settings.log_level, json=settings.log_json, service="embedder-export")
    log = get_logger("oddity.embedder.export")
    failed = []
    for name, source in settings.models.items():
        began = time.monotonic()
        try:
            folder = ensure_exported(source, settings.cache_dir)
        except ExportError as exc:
            failed.append(name)
            log.error("model not exported", model=name, model_id=source.model_id, error=str(exc))
            continue
        log.info(
            "model in cache",
            model=name,
            model_id=source.model_id,
            folder=str(folder),
            seconds=round(time.monotonic() - began, 1),
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
