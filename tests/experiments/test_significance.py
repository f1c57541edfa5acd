"""Paired t-tests and bootstrap intervals on hand-made per-nodule errors."""

from __future__ import annotations

import gc

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from nodule_net.experiments.significance import (
    absolute_errors,
    bootstrap_interval,
    compare,
    holm,
    pair_errors,
    paired_ttest,
)

A = np.array([0.50, 0.10, 0.90, 0.30, 0.70, 0.20, 0.40, 0.60])
B = np.array([0.60, 0.30, 0.80, 0.50, 0.90, 0.20, 0.70, 0.65])


def test_paired_ttest_matches_the_textbook_formula() -> None:
    d = A - B  # mean -0.0875
    t = d.mean() / (d.std(ddof=1) / np.sqrt(len(d)))
    p = 2 * stats.t.sf(abs(t), df=len(d) - 1)
    assert paired_ttest(A, B) == pytest.approx(p, rel=1e-12)
    assert paired_ttest(A, B) == pytest.approx(stats.ttest_rel(A, B).pvalue, rel=1e-12)
    assert 0.01 < paired_ttest(A, B) < 0.1  # a real, non-trivial value
    assert np.isnan(paired_ttest(A, A + 0.1))  # identical differences: no variance, no test
    assert np.isnan(paired_ttest(A[:1], B[:1]))


def test_bootstrap_interval_matches_a_direct_percentile_bootstrap() -> None:
    d = A - B
    low, high = bootstrap_interval(d, seed=0)
    rng = np.random.default_rng(123)  # other draws: the two agree up to Monte-Carlo error
    means = d[rng.integers(0, len(d), size=(200_000, len(d)))].mean(axis=1)
    direct = np.percentile(means, [2.5, 97.5])
    assert low == pytest.approx(direct[0], abs=0.004) and high == pytest.approx(direct[1], abs=0.004)
    assert low < d.mean() < high < 0
    assert bootstrap_interval(d, seed=0) == (low, high)  # seeded
    assert bootstrap_interval(np.full(5, -0.2)) == (-0.2, -0.2)


def _predictions(ids, truth, pred) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "nodule_id": ids,
            "true_subtlety": truth[:, 0],
            "pred_subtlety": pred[:, 0],
            "true_margin": truth[:, 1],
            "pred_margin": pred[:, 1],
        }
    )


def test_compare_pairs_nodules_by_id_whatever_their_order() -> None:
    ids = [f"n{i}" for i in range(len(A))]
    truth = np.zeros((len(A), 2))
    a = _predictions(ids, truth, np.stack([A, 2 * A], axis=1))
    b = _predictions(ids, truth, np.stack([B, 2 * B], axis=1)).iloc[::-1]  # rows in another order
    paired = pair_errors(absolute_errors(a, ["subtlety", "margin"]), absolute_errors(b, ["subtlety", "margin"]))
    np.testing.assert_allclose(paired.a[:, 1], 2 * A)  # ids n0..n7 sort as A's order
    np.testing.assert_allclose(paired.b[:, 0], B)
    result = compare(paired)
    assert result.n == len(A)
    assert result.p_values["subtlety"] == pytest.approx(stats.ttest_rel(A, B).pvalue)
    # The mean error over attributes per nodule is 1.5·A vs 1.5·B: the same t statistic.
    assert result.p_values["mean"] == pytest.approx(stats.ttest_rel(A, B).pvalue)
    assert result.mean_difference == pytest.approx(1.5 * (A - B).mean())
    assert result.differences == pytest.approx(
        {"subtlety": (A - B).mean(), "margin": 2 * (A - B).mean(), "mean": 1.5 * (A - B).mean()}
    )
    assert result.ci_low < result.mean_difference < result.ci_high


def test_pairing_refuses_different_nodules() -> None:
    truth = np.zeros((3, 2))
    a = absolute_errors(_predictions(["x", "y", "z"], truth, truth + 1), ["subtlety", "margin"])
    b = absolute_errors(_predictions(["x", "y", "w"], truth, truth + 1), ["subtlety", "margin"])
    with pytest.raises(ValueError, match="did not score the same nodules"):
        pair_errors(a, b)
    twice = absolute_errors(_predictions(["x", "x", "z"], truth, truth), ["subtlety", "margin"])
    with pytest.raises(ValueError, match="more than once"):
        pair_errors(twice, a)


def test_holm_is_statsmodels_on_the_tests_that_exist() -> None:
    raw = [0.010, 0.040, 0.030, 0.200]
    adjusted = holm(raw)
    gc.freeze()  # multipletests runs gc.collect(), slow over pytest's heap
    try:
        assert adjusted == pytest.approx(list(multipletests(raw, method="holm")[1]), rel=1e-12)
        # A NaN (no test) stays NaN and leaves the family: the others are adjusted as three tests.
        with_nan = holm([0.010, float("nan"), 0.030, 0.200])
        assert np.isnan(with_nan[1])
        expected = multipletests([0.010, 0.030, 0.200], method="holm")[1]
    finally:
        gc.unfreeze()
    assert [with_nan[0], with_nan[2], with_nan[3]] == pytest.approx(list(expected), rel=1e-12)
    assert adjusted == pytest.approx([0.04, 0.09, 0.09, 0.2])  # by hand: 4·0.01, max(3·0.03, ·), 2·0.04, 0.2
    assert all(np.isnan(holm([float("nan")] * 2))) and holm([]) == []
