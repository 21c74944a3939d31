"""Cross-fitting an autoencoder: the served model and its fold models train side by side in
one stack. The served model is the one `fit` trains alone, and each fold's out-of-fold scores
come from a model that never saw that fold's rows."""

import numpy as np
import pytest

from oddity.trainer import calibration
from oddity.trainer.learners import make_learner
from tests.support.models import normal_rows

ROWS = normal_rows(600, 6, seed=0)


def test_the_served_model_is_the_one_fit_trains_alone():
    params = {"epochs": 12, "seed": 2}
    alone = make_learner("autoencoder", params).fit(ROWS)
    stacked = make_learner("autoencoder", params)
    stacked.fit_cross_fitted(ROWS, calibration.make_folds(len(ROWS), 2))
    assert stacked.epochs_run_ == alone.epochs_run_
    assert stacked.history_ == pytest.approx(alone.history_, rel=1e-4)
    np.testing.assert_allclose(stacked.anomaly_scores(ROWS)[0], alone.anomaly_scores(ROWS)[0], rtol=1e-4, atol=1e-7)


def test_each_fold_is_scored_by_a_model_that_never_saw_it():
    """Only fold 0 holds rows from a second cluster: the served model, which saw them,
    reconstructs them; fold 0's own model never saw such rows and scores them high."""
    folds = calibration.make_folds(len(ROWS), 0)
    rows = ROWS.copy()
    apart = folds == 0
    rows[apart] = normal_rows(int(apart.sum()), 6, seed=9, shift=4.0)
    learner = make_learner("autoencoder", {"epochs": 30})
    out_of_fold = learner.fit_cross_fitted(rows, folds)
    served = learner.anomaly_scores(rows)[0]
    assert np.median(out_of_fold[apart]) > 5 * np.median(served[apart])
    assert np.median(out_of_fold[apart]) > np.percentile(out_of_fold[~apart], 95)
    # The other folds' models saw the second cluster, so their rows score as the served model's do.
    assert np.median(out_of_fold[~apart]) < 3 * np.median(served[~apart])
