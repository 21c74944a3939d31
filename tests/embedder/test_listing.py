"""Listing every model waits for the models still loading: a list without one would say it is
not served (the trainer picks its text model from this list)."""

from __future__ import annotations

import pytest

from oddity.common.errors import Unavailable
from oddity.common.metrics import new_metrics_registry
from oddity.embedder.metrics import EmbedderMetrics
from oddity.embedder.models import ModelSource
from oddity.embedder.service import EmbedderService
from oddity.embedder.settings import EmbedderSettings


@pytest.mark.slow
def test_every_model_is_listed_once_none_is_still_loading(tmp_path, shared_encoders):
    models = {
        **shared_encoders.models,
        "missing": ModelSource(model_id=str(tmp_path / "no-weights"), modality="image"),
    }
    settings = EmbedderSettings(cache_dir=shared_encoders.cache_dir, models=models, default_model="vit")  # type: ignore[call-arg]
    service = EmbedderService(settings, EmbedderMetrics(new_metrics_registry(process_metrics=False)))

    assert service.load("vit")
    with pytest.raises(Unavailable, match=r"^models still loading: missing, text; ask again, or name a loaded model$"):
        service.info()
    assert [m["name"] for m in service.info("vit")] == ["vit"]

    assert not service.load("missing")  # failed: left out, not waited for
    with pytest.raises(Unavailable, match=r"^models still loading: text;"):
        service.info()

    assert service.load("text")
    assert [(m["name"], m["modality"]) for m in service.info()] == [("text", "text"), ("vit", "image")]
