"""dataset.yaml parsing and the file formats the trainer reads."""

import re

import numpy as np
import pandas as pd
import pytest

from oddity.trainer.data import DataError, load_dataset
from oddity.trainer.spec import DatasetSpec, SpecError, load_spec
from oddity.trainer.validation import ValidationFailed, check_anomaly_rate
from tests.support.servers import repo_root


def spec_examples() -> list[str]:
    text = (repo_root() / "docs" / "datasets.md").read_text()
    return re.findall(r"```yaml\n(.*?)```", text, flags=re.S)


@pytest.mark.parametrize("example", spec_examples())
def test_documented_examples_are_valid_specs(tmp_path, example):
    (tmp_path / "dataset.yaml").write_text(example)
    spec = load_spec(tmp_path)
    assert spec.name == tmp_path.name


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sources: [{path: a.csv}]\nmodel: {kind: svm}\n", "needs a label column"),
        ("sources: [{path: a.csv}]\nlabel: y\n", "anomaly detector; remove label"),
        ("sources: [{path: ../outside.csv}]\n", "must stay inside the dataset folder"),
        ("sources: [{path: a.csv}]\nrouting: {key: age, bounds: [6, 3]}\n", "must rise strictly"),
        ("sources: [{path: a.csv}]\nthreshold_percentile: 100\n", "threshold_percentile"),
        ("sources: [{path: a.csv}]\nsurprise: 1\n", "surprise"),
        ("- just\n- a list\n", "must be a mapping"),
        ("sources: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_specs_name_the_problem(tmp_path, text, message):
    (tmp_path / "dataset.yaml").write_text(text)
    with pytest.raises(SpecError, match=re.escape(message)):
        load_spec(tmp_path)


TOP_LEVEL_KEYS = ", ".join(sorted(DatasetSpec.model_fields))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "treshold_percentile: 90\n",
            f"treshold_percentile: unknown key, did you mean 'threshold_percentile'? (allowed keys: {TOP_LEVEL_KEYS})",
        ),
        ("surprise: 1\n", f"surprise: unknown key (allowed keys: {TOP_LEVEL_KEYS})"),
        (
            "retrain: {polcy: manual}\n",
            "retrain.polcy: unknown key, did you mean 'policy'? "
            "(allowed keys in retrain: after_rollback, debounce_seconds, interval_hours, policy, ready_marker)",
        ),
        (
            "sources: [{path: a.csv}, {path: b.csv, pth: c.csv}]\n",
            "sources.1.pth: unknown key, did you mean 'path'? (allowed keys in sources: format, path)",
        ),
        (
            "features: {colums: [a]}\n",
            "features.colums: unknown key, did you mean 'columns'? (allowed keys in features: columns, exclude)",
        ),
    ],
)
def test_an_unknown_key_is_named_with_the_closest_allowed_key_and_all_allowed_there(tmp_path, text, message):
    source = "" if text.startswith("sources") else "sources: [{path: a.csv}]\n"
    (tmp_path / "dataset.yaml").write_text(source + text)
    with pytest.raises(SpecError) as refused:
        load_spec(tmp_path)
    assert message in str(refused.value).removeprefix("dataset.yaml: ").split("; ")


def test_missing_spec(tmp_path):
    with pytest.raises(SpecError, match=r"dataset\.yaml missing"):
        load_spec(tmp_path)


@pytest.mark.parametrize("suffix", ["csv", "xlsx", "parquet", "jsonl"])
def test_every_format_loads_the_same_rows(tmp_path, suffix):
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": [4.0, 5.0, 6.0], "name": ["x", "y", "z"]})
    path = tmp_path / f"data.{suffix}"
    {
        "csv": lambda: frame.to_csv(path, index=False),
        "xlsx": lambda: frame.to_excel(path, index=False),
        "parquet": lambda: frame.to_parquet(path),
        "jsonl": lambda: frame.to_json(path, orient="records", lines=True),
    }[suffix]()
    (tmp_path / "dataset.yaml").write_text(f"sources: [{{path: 'data.{suffix}'}}]\nmin_samples: 1\n")
    data = load_dataset(tmp_path, load_spec(tmp_path))
    assert data.feature_names == ["a", "b"]  # every numeric column
    np.testing.assert_array_equal(data.features, [[1, 4], [2, 5], [3, 6]])


def test_no_matching_files(tmp_path):
    (tmp_path / "dataset.yaml").write_text("sources: [{path: '*.csv'}]\n")
    with pytest.raises(DataError, match="no files match"):
        load_dataset(tmp_path, load_spec(tmp_path))


def test_anomaly_rate_gate_is_tight_on_many_rows_and_loose_on_few():
    check_anomaly_rate(0.12, 30, (0.01, 0.10), "all", 95)  # 4 of 30: consistent with <= 10%
    with pytest.raises(ValidationFailed) as too_many:
        check_anomaly_rate(0.12, 2000, (0.01, 0.10), "all", 95)
    assert str(too_many.value) == (
        "group 'all': 12.0% of 2000 normal rows are flagged when each is judged by a threshold taken on the "
        "others, outside validation.anomaly_rate [1%, 10%]; the rows disagree with each other more than one "
        "threshold can cover: add more normal rows, raise threshold_percentile (now 95), or widen "
        "validation.anomaly_rate"
    )
    with pytest.raises(ValidationFailed) as too_few:
        check_anomaly_rate(0.0, 5000, (0.01, 0.10), "all", 99.5)
    assert str(too_few.value).endswith(
        "outside validation.anomaly_rate [1%, 10%]; lower threshold_percentile (now 99.5) or widen "
        "validation.anomaly_rate"
    )


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("{kind: knn, params: {k: 0}}", "knn: k must be >= 1, got 0"),
        ("{kind: autoencoder, params: {epochs: many}}", "invalid literal for int() with base 10: 'many'"),
        ("{kind: auto, params: {trim: 0.9}}", "auto: trim must lie in [0, 0.3], got 0.9"),
        ("{kind: ensemble, params: {members: [svm]}}", "ensemble members must be anomaly detectors"),
        ("{kind: ensemble, params: {members: [{kind: knn, params: {kk: 1}}]}}", "unknown knn parameters ['kk']"),
        ("{kind: svm, params: {kernel: precomputed}}", "svm: kernel must be one of ['linear', 'poly', 'rbf'"),
    ],
)
def test_model_parameters_are_checked_against_the_kind_when_the_spec_is_read(tmp_path, model, message):
    label = "label: y\n" if "kind: svm," in model else ""
    (tmp_path / "dataset.yaml").write_text(f"sources: [{{path: a.csv}}]\nmodel: {model}\n{label}")
    with pytest.raises(SpecError, match=re.escape(message)):
        load_spec(tmp_path)
