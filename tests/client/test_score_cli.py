"""`oddity score` on real files against a real detector: csv, parquet, jsonl and xlsx in;
csv (stdout), jsonl and parquet out; every row matches Detect on the same rows (scores,
decisions, groups, top features), across batch boundaries. A row the model cannot read is
named by its line (or row) in the file, or with --skip-invalid written with a reason while
the others are scored. Exit codes and messages for an unknown model and bad arguments; one
run as a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from io import StringIO
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from tests.client import batch_models
from tests.client.conftest import FEATURES, invoke, table, usage_error
from tests.conftest import start_detector
from tests.support import models
from tests.support.client import detect_request

WRITERS = {
    "csv": lambda frame, path: frame.to_csv(path, index=False),
    "parquet": lambda frame, path: frame.to_parquet(path, index=False),
    "jsonl": lambda frame, path: frame.to_json(path, orient="records", lines=True),
    "xlsx": lambda frame, path: frame.to_excel(path, index=False),
}
READERS = {
    "csv": pd.read_csv,
    "parquet": pd.read_parquet,
    "jsonl": lambda path: pd.read_json(path, lines=True, dtype=False, precise_float=True),
    "xlsx": pd.read_excel,
}


def expected_results(served, model: str, frame: pd.DataFrame, routed: bool) -> pd.DataFrame:
    """What Detect answers for these rows, as `oddity score` should write it."""
    fields = {"routing_values": frame["age"].tolist()} if routed else {}
    response = served.detector.stub.Detect(
        detect_request(model, frame[FEATURES].to_numpy(np.float32), explain_top_k=3, **fields), timeout=30
    )
    return pd.DataFrame(
        {
            "score": list(response.scores),
            "normalized_score": list(response.normalized_scores),
            "is_anomaly": list(response.is_anomaly),
            "group": list(response.groups),
            "top_features": [
                ";".join(f"{f.name}:{f.contribution:.2f}" for f in e.features) for e in response.explanations
            ],
        }
    )


def assert_rows_match(scored: pd.DataFrame, source: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert list(scored.columns) == [
        *source.columns,
        "score",
        "normalized_score",
        "is_anomaly",
        "threshold",
        "confidence",
        "group",
        "fallback",
        "top_features",
    ]
    assert scored["id"].tolist() == source["id"].tolist()
    assert scored[FEATURES].to_numpy().tolist() == source[FEATURES].to_numpy().tolist()
    for column in expected.columns:
        assert scored[column].tolist() == expected[column].tolist(), column


@pytest.mark.parametrize("suffix", ["csv", "parquet", "jsonl", "xlsx"])
def test_every_input_format_scores_row_for_row_as_detect(served, cli, tmp_path, suffix):
    source_path = tmp_path / f"readings.{suffix}"
    WRITERS[suffix](table(45), source_path)
    source = READERS[suffix](source_path)  # as the file holds it (e.g. jsonl rounds floats)
    result = invoke(cli, "score", source_path, "--model", "routed", "--batch-rows", 7, "--detector", served.target)
    assert result.exit_code == 0, result.stderr
    scored = pd.read_csv(StringIO(result.stdout))
    expected = expected_results(served, "routed", source, routed=True)
    assert_rows_match(scored, source, expected)
    assert set(scored["group"]) == {"young", "old"}
    assert result.stderr.splitlines()[-1].startswith(f"scored 45 rows, {int(expected['is_anomaly'].sum())} anomalies")


@pytest.mark.parametrize("suffix", ["jsonl", "parquet", "csv"])
def test_the_output_format_follows_the_suffix_of_out(served, cli, tmp_path, suffix):
    source_path = tmp_path / "readings.csv"
    table(30).to_csv(source_path, index=False)
    out = tmp_path / f"scored.{suffix}"
    result = invoke(
        cli, "score", source_path, "-m", "sensors", "-o", out, "--batch-rows", 8, "--detector", served.target
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["readings.csv", out.name])  # no partial file left
    source = pd.read_csv(source_path)
    scored = READERS[suffix](out)
    assert_rows_match(scored, source, expected_results(served, "sensors", source, routed=False))
    if suffix == "jsonl":  # numbers keep every digit, booleans stay booleans
        first = json.loads(out.read_text().splitlines()[0])
        assert first["is_anomaly"] in (True, False) and first["f0"] == source["f0"][0]


def test_a_missing_routing_column_is_noted_and_rows_fall_back(served, cli, tmp_path):
    path = tmp_path / "no_age.csv"
    table(10).drop(columns=["age"]).to_csv(path, index=False)
    result = invoke(cli, "score", path, "--model", "routed", "--no-progress", "--detector", served.target)
    assert result.exit_code == 0, result.stderr
    assert "no_age.csv has no 'age' column: every row is scored by the model's 'all' group" in result.stderr
    scored = pd.read_csv(StringIO(result.stdout))
    assert scored["group"].tolist() == ["all"] * 10 and scored["fallback"].tolist() == [True] * 10


def test_result_columns_are_prefixed_when_the_input_has_such_a_column(served, cli, tmp_path):
    path = tmp_path / "clash.csv"
    table(5).assign(score=1.0).to_csv(path, index=False)
    result = invoke(cli, "score", path, "--model", "sensors", "--top-features", 0, "--detector", served.target)
    assert result.exit_code == 0, result.stderr
    scored = pd.read_csv(StringIO(result.stdout))
    assert scored["score"].tolist() == [1.0] * 5
    assert [c for c in scored.columns if c.startswith("oddity_")] == [
        "oddity_score",
        "oddity_normalized_score",
        "oddity_is_anomaly",
        "oddity_threshold",
        "oddity_confidence",
        "oddity_group",
        "oddity_fallback",
    ]


def test_a_threshold_percentile_moves_the_decisions_as_detect_does(served, cli, tmp_path):
    path = tmp_path / "readings.csv"
    table(40).to_csv(path, index=False)
    result = invoke(cli, "score", path, "-m", "sensors", "--threshold-percentile", 50, "--detector", served.target)
    assert result.exit_code == 0, result.stderr
    source = pd.read_csv(path)
    expected = served.detector.stub.Detect(
        detect_request("sensors", source[FEATURES].to_numpy(np.float32), threshold_percentile=50), timeout=30
    )
    scored = pd.read_csv(StringIO(result.stdout))
    assert scored["is_anomaly"].tolist() == list(expected.is_anomaly)
    assert scored["threshold"].tolist() == list(expected.thresholds)
    assert scored["is_anomaly"].sum() > 10


def test_an_unknown_model_exits_1_with_one_red_line(served, cli, tmp_path):
    path = tmp_path / "readings.csv"
    table(5).to_csv(path, index=False)
    result = invoke(cli, "score", path, "--model", "nope", "--detector", served.target)
    assert result.exit_code == 1  # (stdout: the in-process detector's log line of the refusal)
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"error: detector at {served.target}: NOT_FOUND: ")
    assert "nope" in lines[0]


# Where data row 13 (from 0) stands in each format: a csv file's header is line 1.
PLACE_OF_ROW_13 = {"csv": "line 15", "jsonl": "line 14", "parquet": "row 14", "xlsx": "row 15"}


@pytest.mark.parametrize("suffix", ["csv", "parquet", "jsonl", "xlsx"])
def test_a_blank_cell_fails_the_file_naming_its_line_and_column(served, cli, tmp_path, suffix):
    path = tmp_path / f"gaps.{suffix}"
    frame = table(20)
    frame.loc[13, "f1"] = np.nan  # in the second batch
    WRITERS[suffix](frame, path)
    out = tmp_path / "out.csv"
    result = invoke(cli, "score", path, "-m", "sensors", "-o", out, "--batch-rows", 10, "--detector", served.target)
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == (
        f"error: gaps.{suffix}, {PLACE_OF_ROW_13[suffix]}: blank value in column 'f1' "
        "(--skip-invalid scores the other rows and gives this one a reason)"
    )
    assert not out.exists()


@pytest.mark.parametrize("suffix", ["csv", "parquet", "jsonl", "xlsx"])
def test_skip_invalid_scores_every_other_row_and_gives_the_skipped_ones_a_reason(served, cli, tmp_path, suffix):
    path = tmp_path / f"gaps.{suffix}"
    frame = table(20)
    frame.loc[3, "age"] = np.nan  # the routing column, first batch
    frame.loc[13, "f1"] = np.nan  # a feature, second batch
    WRITERS[suffix](frame, path)
    result = invoke(
        cli, "score", path, "-m", "routed", "--skip-invalid", "--batch-rows", 10, "--detector", served.target
    )
    assert result.exit_code == 0, result.stderr
    scored = pd.read_csv(StringIO(result.stdout))
    skipped = [3, 13]
    assert scored["reason"].isna().tolist() == [i not in skipped for i in range(20)]
    assert scored["reason"][skipped].tolist() == ["blank value in column 'age'", "blank value in column 'f1'"]
    assert scored.loc[skipped, ["score", "is_anomaly", "group", "top_features"]].isna().all().all()
    kept = scored.drop(index=skipped).reset_index(drop=True)
    source = READERS[suffix](path).drop(index=skipped).reset_index(drop=True)
    expected = expected_results(served, "routed", source, routed=True)
    assert_rows_match(kept.drop(columns=["reason"]), source, expected)
    assert result.stderr.splitlines()[-1].startswith(f"scored 18 rows, {int(expected['is_anomaly'].sum())} anomalies ")
    assert ", 2 invalid rows skipped (see the reason column), in " in result.stderr.splitlines()[-1]


def test_skip_invalid_names_text_infinite_and_out_of_range_values(served, cli, tmp_path):
    path = tmp_path / "odd.csv"
    frame = table(6).astype({"f0": object})
    frame.loc[1, "f0"] = "n/a?"
    frame.loc[2, "f2"] = np.inf
    frame.loc[4, "f3"] = 1e39  # beyond float32
    frame.to_csv(path, index=False)
    result = invoke(cli, "score", path, "-m", "sensors", "--skip-invalid", "--detector", served.target)
    assert result.exit_code == 0, result.stderr
    scored = pd.read_csv(StringIO(result.stdout))
    assert scored["reason"].fillna("").tolist() == [
        "",
        "value 'n/a?' in column 'f0' is not a number",
        "value inf in column 'f2' is not finite",
        "",
        "value 1e+39 in column 'f3' is beyond the range of float32",
        "",
    ]
    assert scored["score"].notna().tolist() == [True, False, False, True, False, True]


def test_a_first_batch_with_no_scorable_row_keeps_the_columns_of_the_others(served, cli, tmp_path):
    path = tmp_path / "late.csv"
    frame = table(12)
    frame.loc[:4, "f0"] = np.nan  # the whole first batch
    frame.to_csv(path, index=False)
    out = tmp_path / "scored.parquet"
    result = invoke(
        cli, "score", path, "-m", "sensors", "-o", out, "--skip-invalid", "--batch-rows", 5, "--detector", served.target
    )
    assert result.exit_code == 0, result.stderr
    scored = pd.read_parquet(out)
    assert scored["reason"].fillna("").tolist() == ["blank value in column 'f0'"] * 5 + [""] * 7
    assert scored.loc[:4, "score"].isna().all()
    source = pd.read_csv(path).iloc[5:].reset_index(drop=True)
    kept = scored.iloc[5:].reset_index(drop=True).drop(columns=["reason"])
    assert_rows_match(kept, source, expected_results(served, "sensors", source, routed=False))
    types = {field.name: str(field.type) for field in pq.read_schema(out)}
    assert [types[c] for c in ("score", "is_anomaly", "group", "top_features")] == [
        "double",
        "bool",
        "large_string",
        "large_string",
    ]


def test_a_row_the_detector_refuses_is_named_by_its_line(cli, repository, tmp_path):
    fitted = models.fit_pca_group(models.normal_rows(200, len(FEATURES)), components=2)
    groups = {
        "young": (models.group_proto("young", fitted, upper=6.0), fitted.onnx),
        "old": (models.group_proto("old", fitted, lower=6.0, upper=12.0), fitted.onnx),
    }
    models.publish(repository, "bounded", groups, dimension=len(FEATURES), routing_key="age", feature_names=FEATURES)
    detector = start_detector(repository)
    try:
        path = tmp_path / "ages.csv"
        frame = table(20)
        frame.loc[2, "f0"] = np.nan  # skipped: the detector's row 11 is the file's row 12
        frame.loc[12, "age"] = 40.0  # in no group, and the model has no 'all' group
        frame.to_csv(path, index=False)
        result = invoke(
            cli,
            "score",
            path,
            "-m",
            "bounded",
            "--skip-invalid",
            "--top-features",
            0,
            "--detector",
            detector.server.target,
        )
    finally:
        detector.close()
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == (
        f"error: ages.csv, line 14: detector at {detector.server.target}: FAILED_PRECONDITION: "
        "age=40 is outside every group of model 'bounded' and there is no active 'all' group"
    )


@pytest.fixture(scope="module")
def kinds_detector(tmp_path_factory):
    """A detector serving real trained kinds: an isolation forest (no per-feature errors) and a
    random-forest classifier (`batch_models`)."""
    repository = tmp_path_factory.mktemp("kinds") / "models"
    repository.mkdir()
    batch_models.publish_all(repository)
    detector = start_detector(repository)
    yield detector
    detector.close()


@pytest.mark.slow
def test_a_classifiers_first_batch_with_no_scorable_row_has_the_columns_of_its_answers(cli, kinds_detector, tmp_path):
    path = tmp_path / "grades.csv"
    frame = batch_models.table(8)
    frame.loc[:3, "f5"] = np.nan  # the whole first batch
    frame.to_csv(path, index=False)
    target = kinds_detector.server.target
    whole = invoke(cli, "score", path, "-m", "classes", "--skip-invalid", "--detector", target)
    batched = invoke(cli, "score", path, "-m", "classes", "--skip-invalid", "--batch-rows", 4, "--detector", target)
    assert (whole.exit_code, batched.exit_code) == (0, 0), batched.stderr
    assert batched.stdout == whole.stdout  # its columns, as when the first batch has a scorable row
    scored = pd.read_csv(StringIO(batched.stdout))
    assert list(scored.columns[len(frame.columns) :]) == [
        "predicted_class",
        "confidence",
        "group",
        "probability_high",
        "probability_low",
        "reason",
    ]
    assert scored["predicted_class"].isna().tolist() == [True] * 4 + [False] * 4


@pytest.mark.slow
def test_a_model_without_explanations_is_scored_without_top_features_saying_so_in_cli_words(
    cli, kinds_detector, tmp_path
):
    path = tmp_path / "readings.csv"
    batch_models.table(6).to_csv(path, index=False)
    target = kinds_detector.server.target
    result = invoke(cli, "score", path, "-m", "forest", "--detector", target)
    assert result.exit_code == 0, result.stderr
    assert "top_features" not in pd.read_csv(StringIO(result.stdout)).columns
    assert result.stderr.splitlines()[0] == (
        f"no top_features column: detector at {target}: FAILED_PRECONDITION: "
        "model 'forest' (isolation_forest) does not report per-feature errors; use --top-features 0"
    )


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("broken.parquet", b"PAR1 this is not parquet"),
        ("broken.xlsx", b"PK\x03\x04 this is not a workbook"),
        ("broken.jsonl", b'{"f0": 1.0}\n{"f0": \n'),
        ("broken.csv", b'id,f0\n"unterminated,1\n'),
    ],
)
def test_a_file_that_cannot_be_parsed_exits_1_naming_it(served, cli, tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    result = invoke(cli, "score", path, "--model", "sensors", "--detector", served.target)
    assert result.exit_code == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: {name} cannot be read as {path.suffix[1:]}: ")


@pytest.mark.slow
def test_a_detector_that_cannot_be_reached_exits_3(cli, tmp_path):
    path = tmp_path / "readings.csv"
    table(5).to_csv(path, index=False)
    result = invoke(cli, "score", path, "--model", "sensors", "--detector", "127.0.0.1:1", "--timeout", 1)
    assert result.exit_code == 3
    assert result.stderr.startswith("error: detector at 127.0.0.1:1: ")
    assert result.stderr.rstrip().endswith(
        "(no connection to 127.0.0.1:1: is the detector running there, with TLS settings that match?)"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model"], "Option '--model' requires an argument"),
        ([], "Missing option '--model'"),
        (["--model", "sensors", "--batch-rows", "0"], "Invalid value for '--batch-rows'"),
        (["--model", "sensors", "--out", "scored.xml"], "write .csv, .jsonl or .parquet"),
        (["--model", "sensors", "--threshold-percentile", "100"], "100 is not within (0, 100)"),
        (["--model", "sensors", "--engine", "spark", "--skip-invalid"], "--skip-invalid goes with --engine grpc"),
    ],
)
def test_bad_arguments_exit_2(served, cli, tmp_path, args, message):
    path = tmp_path / "readings.csv"
    table(3).to_csv(path, index=False)
    result = invoke(cli, "score", path, "--detector", served.target, *args)
    assert result.exit_code == 2
    assert message in usage_error(result)


def test_a_file_that_is_not_there_or_not_a_table_exits_2(served, cli, tmp_path):
    missing = invoke(cli, "score", tmp_path / "missing.csv", "--model", "sensors", "--detector", served.target)
    assert missing.exit_code == 2
    (tmp_path / "notes.txt").write_text("hello")
    text = invoke(cli, "score", tmp_path / "notes.txt", "--model", "sensors", "--detector", served.target)
    assert text.exit_code == 2
    assert "cannot read .txt files" in text.stderr


@pytest.mark.slow
def test_score_as_a_real_process(served, tmp_path):
    path = tmp_path / "readings.csv"
    table(25).to_csv(path, index=False)
    out = tmp_path / "scored.parquet"
    result = subprocess.run(
        [sys.executable, "-m", "oddity.cli.main", "score", str(path), "--model", "routed", "--out", str(out)],
        env={**os.environ, "ODDITY_DETECTOR_TARGET": served.target},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    source = pd.read_csv(path)
    assert_rows_match(pd.read_parquet(out), source, expected_results(served, "routed", source, routed=True))

    unknown = subprocess.run(
        [sys.executable, "-m", "oddity.cli.main", "score", str(path), "--model", "nope", "--detector", served.target],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (unknown.returncode, unknown.stdout) == (1, "")

    console_script = Path(sys.executable).with_name("oddity")
    helped = subprocess.run([str(console_script), "score", "--help"], capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and "--batch-rows" in helped.stdout
    assert len(unknown.stderr.splitlines()) == 1 and unknown.stderr.startswith("error: detector at ")
