"""A running job's limits reach inside long numeric steps: the kNN distance blocks and the
autoencoder's and MLP's batches check them, so a stop or a spent time budget ends the step at
the next block or batch instead of after it; outside a job the check does nothing, and an
`except Exception` around a step does not take the end of the job for the step's error."""

import time

import numpy as np
import pytest

from oddity.trainer import job_control
from oddity.trainer.job_control import JobLimits, Stopped, TimeBudgetSpent
from oddity.trainer.learners import AutoencoderLearner, KnnLearner, make_learner
from oddity.trainer.learners.knn import BLOCK_ROWS
from tests.support.models import normal_rows

BLOCKS = 5  # distance blocks of the rows scored


class StopAtCheck:
    """A trainer that stops while the job's `at`-th check is due: counts the checks made."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.checks = 0

    def __call__(self) -> None:
        self.checks += 1
        if self.checks == self.at:
            raise Stopped()


def test_knn_scoring_stops_at_the_next_block_when_the_trainer_stops():
    rows = normal_rows(BLOCKS * BLOCK_ROWS, 6)
    learner = KnnLearner().fit(rows)
    stop = StopAtCheck(2)
    with job_control.running(JobLimits(stop)), pytest.raises(Stopped):
        learner.anomaly_scores(rows)
    assert stop.checks == 2  # the first block was scored; the other four were not


def test_knn_leave_one_out_scores_stop_at_the_next_block_too():
    rows = normal_rows(BLOCKS * BLOCK_ROWS, 6)
    learner = KnnLearner().fit(rows)
    stop = StopAtCheck(3)
    with job_control.running(JobLimits(stop)), pytest.raises(Stopped):
        learner.out_of_fold_scores(rows, np.zeros(len(rows), dtype=np.int64))
    assert stop.checks == 3


@pytest.mark.slow  # torch's first use in a process takes seconds
def test_an_autoencoder_stops_within_its_first_epoch():
    rows = normal_rows(2000, 6)  # 1,800 training rows: 29 batches of 64 per epoch
    stop = StopAtCheck(10)
    with job_control.running(JobLimits(stop)), pytest.raises(Stopped):
        AutoencoderLearner(epochs=50, batch_size=64).fit(rows)
    assert stop.checks == 10


@pytest.mark.slow  # torch's first use in a process takes seconds
def test_an_mlp_classifier_stops_within_its_first_epoch():
    rows = normal_rows(2000, 6)
    labels = np.where(rows[:, 0] > 0, "up", "down")
    stop = StopAtCheck(10)
    with job_control.running(JobLimits(stop)), pytest.raises(Stopped):
        make_learner("mlp_classifier", {"epochs": 50, "batch_size": 64}).fit(rows, labels)
    assert stop.checks == 10


def test_a_spent_time_budget_ends_the_job_with_a_message_that_says_what_to_change():
    limits = JobLimits(lambda: None, started=time.monotonic() - 5.0)  # a job that started 5 s ago
    limits.check()  # no budget yet (the spec is not read): nothing to spend
    limits.set_budget(2.0)
    limits.phase = "training (group all)"
    with pytest.raises(TimeBudgetSpent) as raised:
        limits.check()
    assert str(raised.value) == (
        "the job took longer than training.time_budget_seconds (2 s); it was training (group all). "
        "Nothing was published: raise training.time_budget_seconds in dataset.yaml, or lower training.max_rows"
    )


def test_a_budget_not_spent_lets_the_job_go_on():
    limits = JobLimits(lambda: None)
    limits.set_budget(3600.0)
    with job_control.running(limits):
        job_control.check()


def test_outside_a_job_the_check_does_nothing_and_a_job_scope_ends_with_its_block():
    stop = StopAtCheck(1)
    with job_control.running(JobLimits(stop)) as limits:
        assert job_control.current() is limits
    assert job_control.current() is None
    job_control.check()
    assert stop.checks == 0


def test_a_step_that_catches_every_exception_does_not_swallow_the_end_of_the_job():
    """A reader wraps any error of a corrupt file into its own; a stop is no such error."""

    def read_chunk() -> str:
        try:
            job_control.check()
        except Exception:
            return "the file cannot be read"
        return "rows"

    with job_control.running(JobLimits(StopAtCheck(1))), pytest.raises(Stopped):
        read_chunk()
