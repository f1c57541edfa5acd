"""The §4 analyses on hand-made weights and labels whose answers are worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nodule_net.evaluation.analysis import (
    benign_malignant,
    caam_profile_correlation,
    caam_summary,
    classification_metrics,
    end_nonend_weights,
    malignancy_labels,
    normalise_rows,
    normalised_mean_caam,
    offdiagonal_correlation,
    radiologist_correlation,
    sam_summary,
)

# Four nodules: depths 4, 3, 2 (too shallow, left out) and 5 (uniform weights).
SAM_WEIGHTS = [np.array([0.1, 0.4, 0.4, 0.1]), np.array([0.2, 0.6, 0.2]), np.array([0.5, 0.5]), np.full(5, 0.2)]


def test_end_and_nonend_weights_are_scaled_by_depth_and_pooled_over_slices() -> None:
    # ×M: [0.4 1.6 1.6 0.4], [0.6 1.8 0.6], [1 1 1 1 1]; ends 0.4 0.4 0.6 0.6 1 1, others 1.6 1.6 1.8 1 1 1
    result = end_nonend_weights(SAM_WEIGHTS)
    assert result["n_nodules"] == 3
    assert result["end_weight"] == pytest.approx(4.0 / 6)
    assert result["nonend_weight"] == pytest.approx(8.0 / 6)
    assert result["nonend_to_end_ratio"] == pytest.approx(2.0)


def test_sam_by_depth_splits_the_nodules_into_bins() -> None:
    by_depth = sam_summary(SAM_WEIGHTS)["by_depth"]
    assert list(by_depth) == ["3-4", "5-8", "9-16", "17+"]
    assert by_depth["3-4"]["n_nodules"] == 2
    assert by_depth["3-4"]["end_weight"] == pytest.approx(0.5)  # 0.4 0.4 0.6 0.6
    assert by_depth["3-4"]["nonend_weight"] == pytest.approx(5.0 / 3)  # 1.6 1.6 1.8
    assert by_depth["3-4"]["nonend_to_end_ratio"] == pytest.approx(10.0 / 3)
    assert by_depth["5-8"] == {"end_weight": 1.0, "nonend_weight": 1.0, "nonend_to_end_ratio": 1.0, "n_nodules": 1}
    assert by_depth["17+"]["n_nodules"] == 0 and math.isnan(by_depth["17+"]["end_weight"])


# Two nodules, three attributes. Row t: the weights CAAM unit t gives attributes 0..2.
CAAM = np.array(
    [
        [[2.0, 1.0, 0.0], [0.0, 4.0, -2.0], [1.0, 1.0, 1.0]],
        [[2.0, 3.0, 0.0], [0.0, 0.0, -2.0], [1.0, 1.0, 1.0]],
    ]
)


def test_mean_caam_weights_are_divided_by_each_rows_largest_magnitude() -> None:
    # mean [[2 2 0] [0 2 -2] [1 1 1]]
    np.testing.assert_allclose(normalised_mean_caam(CAAM), [[1, 1, 0], [0, 1, -1], [1, 1, 1]])
    np.testing.assert_allclose(normalise_rows(np.array([[0.5, -2.0], [0.0, 0.0]])), [[0.25, -1.0], [np.nan, np.nan]])


def test_profile_correlation_averages_per_nodule_row_correlations_and_skips_constant_rows() -> None:
    # nodule 1: rows 0, 1 centred [1 0 -1], [-2/3 10/3 -8/3] → r = 2 / (√2 · √168 / 3) = 6 / √336
    # nodule 2: rows 0, 1 centred [1/3 4/3 -5/3], [2/3 2/3 -4/3] → r = (10/3) / (√42 · √24 / 9)
    r1, r2 = 6 / math.sqrt(336), (10 / 3) / (math.sqrt(42) * math.sqrt(24) / 9)
    result = caam_profile_correlation(CAAM)
    assert result[0, 1] == pytest.approx((r1 + r2) / 2) and result[1, 0] == pytest.approx((r1 + r2) / 2)
    assert result[0, 0] == pytest.approx(1.0) and result[1, 1] == pytest.approx(1.0)
    assert np.isnan(result[2]).all() and np.isnan(result[:, 2]).all()  # row 2 is constant in both nodules


def test_profile_correlation_leaves_out_only_the_nodules_where_a_row_is_constant() -> None:
    weights = CAAM.copy()
    weights[1, 1] = 5.0  # nodule 2's row 1 becomes constant: the (0, 1) mean is nodule 1's alone
    assert caam_profile_correlation(weights)[0, 1] == pytest.approx(6 / math.sqrt(336))


def test_offdiagonal_correlation_ignores_the_diagonal_and_missing_entries() -> None:
    model = np.array([[9.0, 1, 2], [3, -7, 4], [5, 6, 100]])
    reference = np.array([[1.0, 2, 4], [6, 1, 8], [10, 12, 1]])  # off-diagonal = 2 × model's
    assert offdiagonal_correlation(model, reference) == pytest.approx(1.0)
    assert offdiagonal_correlation(-model, reference) == pytest.approx(-1.0)
    reference[0, 1] = np.nan
    model[0, 2] = 50.0  # breaks the line, so a dropped entry is visible in r
    expected = np.corrcoef([50, 3, 4, 5, 6], [4, 6, 8, 10, 12])[0, 1]
    assert offdiagonal_correlation(model, reference) == pytest.approx(expected)
    assert math.isnan(offdiagonal_correlation(np.ones((3, 3)), reference))


def test_radiologist_correlation_is_the_magnitude_and_nan_for_a_constant_attribute() -> None:
    x = np.array([1.0, 2.0, 4.0, 3.0])
    ratings = np.stack([x, 5 - x, np.full(4, 3.0), np.array([1.0, 1.0, 2.0, 2.0])], axis=1)
    a = radiologist_correlation(ratings)
    assert a[0, 1] == pytest.approx(1.0)  # r = −1
    assert a[0, 3] == pytest.approx(abs(np.corrcoef(x, [1, 1, 2, 2])[0, 1]))
    assert np.isnan(a[2]).all() and np.isnan(a[:, 2]).all()


def test_caam_summary_compares_magnitudes_with_the_radiologists() -> None:
    rng = np.random.default_rng(0)
    ratings = rng.normal(size=(50, 3))
    similarity, matrices = caam_summary(CAAM, ratings)
    reference = radiologist_correlation(ratings)
    assert similarity["radiologist_similarity"] == pytest.approx(
        offdiagonal_correlation(np.abs(matrices["caam_weights_normalised"]), reference)
    )
    np.testing.assert_allclose(matrices["caam_weights_mean"], CAAM.mean(axis=0))
    assert math.isnan(similarity["profile_similarity"])  # only the (0, 1) pair is defined: < 3 entries


# Mean malignancy ratings: benign < 3 < malignant, exactly 3 left out.
RATINGS = np.array([1.0, 2.5, 3.0, 3.5, 5.0, 4.0, 2.0, 3.0])
DECISION = np.array([2.0, 3.5, 9.0, 4.0, 3.6, 3.2, 3.1, 0.0])


def test_malignancy_labels_follow_the_cutoff() -> None:
    np.testing.assert_array_equal(malignancy_labels(RATINGS), [0, 0, np.nan, 1, 1, 1, 0, np.nan])
    assert np.isnan(malignancy_labels(np.array([(2 + 3 + 4) / 3]))[0])  # a mean that is 3 in floating point


def test_classification_metrics_against_hand_counts() -> None:
    # kept y = 0 0 1 1 1 0, scores 2 3.5 4 3.6 3.2 3.1 → predicted 0 1 1 1 1 1: TP 3, FN 0, FP 2, TN 1
    # AUC: positives {4, 3.6, 3.2} beat negatives {2, 3.5, 3.1} in 3 + 3 + 2 of 9 pairs
    result = classification_metrics(malignancy_labels(RATINGS), DECISION, threshold=3.0)
    assert result == pytest.approx(
        {
            "accuracy": 4 / 6,
            "sensitivity": 1.0,
            "specificity": 1 / 3,
            "precision": 3 / 5,
            "auc": 8 / 9,
            "n_benign": 3,
            "n_malignant": 3,
            "n_excluded": 2,
        }
    )


def test_benign_malignant_per_fold_marks_undefined_metrics_nan() -> None:
    folds = np.array([0, 0, 0, 0, 0, 0, 1, 1])  # fold 1: one benign nodule (predicted malignant), one excluded
    result = benign_malignant(RATINGS, DECISION, folds, threshold=3.0)
    assert result["auc"] == pytest.approx(8 / 9) and set(result["folds"]) == {"0", "1"}
    fold1 = result["folds"]["1"]
    assert fold1["accuracy"] == 0.0 and fold1["specificity"] == 0.0 and fold1["precision"] == 0.0
    assert math.isnan(fold1["sensitivity"]) and math.isnan(fold1["auc"])
    assert (fold1["n_benign"], fold1["n_malignant"], fold1["n_excluded"]) == (1, 0, 1)
    fold0 = result["folds"]["0"]  # benign 1, 2.5; malignant 3.5, 5, 4 → TP 3, FP 1, TN 1
    assert fold0["accuracy"] == pytest.approx(4 / 5) and fold0["precision"] == pytest.approx(3 / 4)
    assert fold0["auc"] == pytest.approx(5 / 6)  # positives {4, 3.6, 3.2} vs {2, 3.5}: 2 + 2 + 1 of 6
