"""The services' hints in the command line's words (`oddity.cli.cli_words`): each API phrase
as the services write it reads as the CLI's command or flag; real services giving the hints
and the command line printing them (errors, notes, lines, table cells) in its words, while
--json and the SDK keep the API's. (`oddity score`'s note for a model without explanations:
test_score_cli.)"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from oddity.cli.cli_words import HINTS, in_cli_words
from oddity.client import TrainerClient
from oddity.common.errors import InvalidArgument
from oddity.embedder.export import ExportError, ensure_exported
from oddity.embedder.settings import ModelSource
from oddity.v1 import embedder_pb2
from tests.client.conftest import FEATURES, invoke, stdout_of, table
from tests.conftest import start_detector, start_trainer
from tests.support import datasets, drawings, models

# (what a service says, what the command line prints)
SAID_AND_PRINTED = [
    (
        "data and spec unchanged since version 1; Train with force to train again",
        "data and spec unchanged since version 1; run oddity train --force to train again",
    ),
    (
        "later versions keep percentile 80 until SetThreshold(0) clears it",
        "later versions keep percentile 80 until oddity threshold --percentile 0 clears it",
    ),
    (
        "version 3 (a copy of version 1) serves until Train is called (after_rollback: hold)",
        "version 3 (a copy of version 1) serves until oddity train is run (after_rollback: hold)",
    ),
    (
        "or raise the tolerance (or Rollback and Train) to accept a lower figure",
        "or raise the tolerance (or oddity rollback, then oddity train) to accept a lower figure",
    ),
    ("data_path '../x.csv' is not a usable path", "--data-path '../x.csv' is not a usable path"),
    ('data_path "it\'s.csv" is not a file under', '--data-path "it\'s.csv" is not a file under'),
    ("unknown model_kind 'nope'; choose one of ['knn']", "unknown --model-kind 'nope'; choose one of ['knn']"),
    (
        "send extra_features for ['age'] (or one routing value per item)",
        "give each file its 'age' with --routing-value (one for every file, or one per file)",
    ),
    (
        "send extra_features for ['age', 'height'] (or one routing value per item)",
        "the model appends ['age', 'height'] to each embedding and the command line sends one --routing-value: "
        "use the SDK's detect_images(extra_features=...)",
    ),
    (
        "model 'm' routes rows by 'age': set routing_values (one per row, or one for all rows)",
        "model 'm' routes rows by 'age': give the table a column 'age'",
    ),
    (
        "model 'm' (isolation_forest) does not report per-feature errors; set explain_top_k to 0",
        "model 'm' (isolation_forest) does not report per-feature errors; use --top-features 0",
    ),
    (
        "model 'm' is a classifier: threshold_percentile and explain_top_k do not apply",
        "model 'm' is a classifier: --threshold-percentile does not apply",
    ),
    (
        "model 'm' was not trained on embeddings; use Detect",
        "model 'm' was not trained on embeddings; score its rows with oddity score",
    ),
    (
        "model 'm' matches texts against its tags and captions (use Similar)",
        "model 'm' matches texts against its tags and captions (use oddity similar)",
    ),
    (
        "no embedder is configured on this detector (--embedder)",
        "no embedder is configured on this detector (oddity up --embedder starts one)",
    ),
    (
        "give a local directory of its weights (save_pretrained) as its model_id, e.g. --models "
        '\'{"<name>": {"model_id": "/path/to/local/dir", "modality": "image"}}\'',
        "give a local directory of its weights (save_pretrained), "
        "e.g. oddity up --model <name>=image:/path/to/local/dir",
    ),
    (
        "Provide the weights as a local directory (save_pretrained) in the model's model_id, or run where",
        "Provide the weights as a local directory (save_pretrained) with oddity up --model NAME=PATH, or run where",
    ),
]


@pytest.mark.parametrize(("said", "printed"), SAID_AND_PRINTED)
def test_each_hint_reads_in_the_command_lines_words(said, printed):
    assert in_cli_words(said) == printed


def test_every_hint_of_the_table_is_tried_above_and_other_text_is_left_alone():
    assert all(any(re.search(api, said) for said, _ in SAID_AND_PRINTED) for api, _ in HINTS)
    untouched = "left out columns: data_path, model_kind; Training with forceps"
    assert in_cli_words(untouched) == untouched


@pytest.mark.slow  # importing huggingface_hub
def test_the_embedders_hint_for_weights_it_cannot_fetch_names_oddity_up(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    source = ModelSource(model_id="nobody/absent-vit", modality="image")
    with pytest.raises(ExportError) as refused:
        ensure_exported(source, tmp_path / "cache")
    assert "--models '{" in str(refused.value)  # the embedder's own flag, for its operators
    assert in_cli_words(str(refused.value)).endswith("e.g. oddity up --model <name>=image:/path/to/local/dir")


def printed(result) -> str:
    """A command's stdout as one line (rich wraps lines at the terminal's width)."""
    return " ".join(stdout_of(result).split())


@pytest.fixture(scope="module")
def bounded_detector(tmp_path_factory):
    """A detector with an embedder address (never reached here) and a model routed by age with
    no 'all' group."""
    repository = tmp_path_factory.mktemp("cli-words") / "models"
    repository.mkdir()
    fitted = models.fit_pca_group(models.normal_rows(200, len(FEATURES)), components=2)
    groups = {
        "young": (models.group_proto("young", fitted, upper=6.0), fitted.onnx),
        "old": (models.group_proto("old", fitted, lower=6.0, upper=12.0), fitted.onnx),
    }
    models.publish(repository, "bounded", groups, dimension=len(FEATURES), routing_key="age", feature_names=FEATURES)
    detector = start_detector(repository, embedder="127.0.0.1:1")
    yield detector
    detector.close()


def test_a_table_without_the_routing_column_is_told_to_add_it(cli, bounded_detector, tmp_path):
    path = tmp_path / "no_age.csv"
    table(5).drop(columns=["age"]).to_csv(path, index=False)
    target = bounded_detector.server.target
    result = invoke(cli, "score", path, "-m", "bounded", "--top-features", 0, "--detector", target)
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == (
        f"error: no_age.csv, lines 2-6: detector at {target}: INVALID_ARGUMENT: "
        "model 'bounded' routes rows by 'age': give the table a column 'age'"
    )


def test_images_for_a_model_of_table_rows_are_sent_to_oddity_score(cli, bounded_detector, tmp_path):
    image = tmp_path / "a.png"
    image.write_bytes(b"\x89PNG not really")
    target = bounded_detector.server.target
    result = invoke(cli, "detect-images", image, "-m", "bounded", "--detector", target)
    assert result.exit_code == 1
    assert result.stderr == (
        f"error: detector at {target}: FAILED_PRECONDITION: model 'bounded' was not trained on embeddings; "
        "score its rows with oddity score\n"
    )


@pytest.mark.slow  # the client retries UNAVAILABLE for a few seconds
def test_a_detector_without_an_embedder_names_oddity_up(cli, served, tmp_path):
    image = tmp_path / "a.png"
    image.write_bytes(b"\x89PNG not really")
    result = invoke(cli, "detect-images", image, "-m", "sensors", "--detector", served.target)
    assert result.exit_code == 3
    assert result.stderr.startswith(f"error: detector at {served.target}: UNAVAILABLE: ")
    assert result.stderr.endswith("no embedder is configured on this detector (oddity up --embedder starts one)\n")


@pytest.mark.slow
def test_an_image_model_that_appends_the_age_asks_for_routing_value(cli, embedder, tmp_path):
    repository = tmp_path / "models"
    repository.mkdir()
    served = embedder.stub.GetInfo(embedder_pb2.GetInfoRequest(model="vit")).models[0]
    models.publish_image_model(repository, served)
    detector = start_detector(repository, embedder=embedder.server.target)
    try:
        image = tmp_path / "drawing.png"
        image.write_bytes(drawings.drawing(6.0, np.random.default_rng(0)))
        result = invoke(cli, "detect-images", image, "-m", "pictures", "--detector", detector.server.target)
    finally:
        detector.close()
    assert result.exit_code == 1
    assert result.stderr.rstrip().endswith(
        "INVALID_ARGUMENT: give each file its 'age' with --routing-value (one for every file, or one per file)"
    )


@pytest.mark.slow
def test_the_trainers_hints_name_the_commands_and_json_keeps_the_api_words(cli, tmp_path):
    data_volume, repository = tmp_path / "data", tmp_path / "models"
    repository.mkdir()
    spec = datasets.autoencoder_spec(
        model={"kind": "autoencoder", "params": {"epochs": 3}}, retrain={"policy": "manual", "after_rollback": "hold"}
    )
    datasets.write_dataset(data_volume, "plant", spec, {"rows.csv": datasets.sensor_frame(300)})
    detector = start_detector(repository)
    trainer = start_trainer(data_volume, repository, detectors=[detector.server.target])
    target = ("--trainer", trainer.server.target)
    try:
        assert invoke(cli, "train", "plant", "--follow", *target).exit_code == 0

        again = invoke(cli, "train", "plant", "--follow", *target)
        assert again.exit_code == 0, again.stderr
        assert re.fullmatch(
            r"job \S+ skipped: data and spec unchanged since version 1; run oddity train --force to train again",
            printed(again),
        )
        as_json = invoke(cli, "train", "plant", "--follow", "--json", *target)
        assert json.loads(as_json.stdout.splitlines()[-1])["message"].endswith("Train with force to train again")

        moved = invoke(cli, "threshold", "plant", "--percentile", "80", *target)
        assert printed(moved) == (
            "version 2 serves with the new threshold; "
            "later versions keep percentile 80 until oddity threshold --percentile 0 clears it"
        )
        rolled = invoke(cli, "rollback", "plant", "--version", "1", *target)
        assert printed(rolled) == (
            "version 3 (a copy of version 1) serves until oddity train is run (after_rollback: hold)"
        )
        status = invoke(cli, "status", "--dataset", "plant", *target)  # a table cell
        assert "pinned v3 until oddity train is run (after_rollback: hold)" in stdout_of(status)

        kind = invoke(cli, "train", "plant", "--model-kind", "nope", *target)
        assert kind.exit_code == 1
        assert kind.stderr.startswith(
            f"error: trainer at {trainer.server.target}: INVALID_ARGUMENT: unknown --model-kind 'nope'"
        )
        with (
            TrainerClient(trainer.server.target) as sdk,
            pytest.raises(InvalidArgument, match="unknown model_kind 'nope'"),
        ):
            sdk.train("plant", model_kind="nope")  # the SDK keeps the API's words
    finally:
        trainer.close()
        detector.close()
