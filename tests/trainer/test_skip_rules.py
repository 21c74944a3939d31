"""The skip rules, case by case: each row is what a job knows at one point and the one
decision that is right (None: the job goes on)."""

import pytest

from oddity.trainer.skip_rules import JobFacts, skip_reason

SAME, OTHER = "f" * 64, "0" * 64
UNCHANGED = {"fingerprint": SAME, "live_version": 4, "live_fingerprint": SAME}
CHANGED = {"fingerprint": OTHER, "live_version": 4, "live_fingerprint": SAME}
FIRST = {"fingerprint": SAME}  # no version yet
FORCE_HINT = "data and spec unchanged since version 4; Train with force to train again"

CASES = [
    # Unchanged data, before loading.
    ("interval run on unchanged data", {"trigger": "interval", **UNCHANGED}, "data unchanged since version 4"),
    ("interval run on changed data", {"trigger": "interval", **CHANGED}, None),
    ("interval run before any version", {"trigger": "interval", **FIRST}, None),
    ("Train on unchanged data", {"trigger": "api", **UNCHANGED}, FORCE_HINT),
    ("Train with force on unchanged data", {"trigger": "api", "force": True, **UNCHANGED}, None),
    ("Train naming a kind on unchanged data", {"trigger": "api", "other_kind": True, **UNCHANGED}, None),
    ("Train naming a file: never unchanged", {"trigger": "api", "data_path": True, **UNCHANGED}, None),
    ("Train on changed data", {"trigger": "api", **CHANGED}, None),
    ("file change on unchanged data (a spec touched back)", {"trigger": "file_change", **UNCHANGED}, None),
    ("scan on unchanged data", {"trigger": "scan", **UNCHANGED}, None),
    ("startup on unchanged data", {"trigger": "startup", **UNCHANGED}, None),
    # Too few rows, after loading.
    (
        "fewer rows than min_samples",
        {"trigger": "file_change", **CHANGED, "min_samples": 100, "rows": 99},
        "not enough samples: 99 < min_samples 100",
    ),
    ("exactly min_samples rows", {"trigger": "file_change", **CHANGED, "min_samples": 100, "rows": 100}, None),
    ("too few rows, forced", {"trigger": "api", "force": True, **CHANGED, "min_samples": 100, "rows": 5}, None),
    ("rows not loaded yet", {"trigger": "file_change", **CHANGED, "min_samples": 100}, None),
    (
        "unchanged data is found before the rows are counted",
        {"trigger": "interval", **UNCHANGED, "min_samples": 100, "rows": 5},
        "data unchanged since version 4",
    ),
    # A rollback that holds, before publishing.
    (
        "a file change while a rollback holds",
        {"trigger": "file_change", **CHANGED, "rows": 500, "rollback_holds": 2},
        "a rollback to version 2 holds; this run is not published",
    ),
    (
        "an interval run while a rollback holds",
        {"trigger": "interval", **CHANGED, "rows": 500, "rollback_holds": 2},
        "a rollback to version 2 holds; this run is not published",
    ),
    ("Train ends the hold", {"trigger": "api", **CHANGED, "rows": 500, "rollback_holds": 2}, None),
    (
        "the data changing after the rollback ends the hold",
        {"trigger": "data_changed_after_rollback", **CHANGED, "rows": 500, "rollback_holds": 2},
        None,
    ),
    ("no rollback", {"trigger": "file_change", **CHANGED, "rows": 500}, None),
]


@pytest.mark.parametrize(("known", "decision"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_skip_rules(known, decision):
    assert skip_reason(JobFacts(**known)) == decision


@pytest.mark.parametrize(
    ("known", "since"),
    [(UNCHANGED, 4), (CHANGED, 0), (FIRST, 0), ({**UNCHANGED, "data_path": True}, 0)],
    ids=["same fingerprint", "other fingerprint", "no live version", "a named file"],
)
def test_unchanged_since_names_the_live_version_trained_on_the_same_data(known, since):
    assert JobFacts(trigger="api", **known).unchanged_since == since
