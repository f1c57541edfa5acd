"""Mean absolute error on the original rating scales (paper §3.3, eq. 9).

Pure numpy; predictions arrive normalised to [0, 1] from the model and are
de-normalised here with :func:`nodule_net.attributes.denormalise`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nodule_net.attributes import ATTRIBUTES, RATING_MAX, RATING_MIN, attribute_index


def denormalise_columns(scores: np.ndarray, attributes: Sequence[str]) -> np.ndarray:
    """Map [0, 1] scores (N, K) of the named attributes back to their rating scales."""
    cols = [attribute_index(a) for a in attributes]
    return np.asarray(scores, dtype=np.float64) * (RATING_MAX[cols] - RATING_MIN[cols]) + RATING_MIN[cols]


def mae_per_attribute(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(K,) mean over nodules of |predicted − truth|; both (N, K) on the same scale."""
    predicted, truth = np.asarray(predicted, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    if predicted.shape != truth.shape or predicted.ndim != 2 or len(predicted) == 0:
        raise ValueError(
            f"Predictions {predicted.shape} and ground truth {truth.shape} must be the same non-empty (N, K) shape."
        )
    return np.abs(predicted - truth).mean(axis=0)


def mae_report(predicted: np.ndarray, truth: np.ndarray, attributes: Sequence[str] = ATTRIBUTES) -> dict[str, float]:
    """``{attribute: MAE, ..., "mean": mean over attributes}`` on the original scales."""
    per_attribute = mae_per_attribute(predicted, truth)
    report = {name: float(v) for name, v in zip(attributes, per_attribute)}
    report["mean"] = float(per_attribute.mean())
    return report


def train_mean_predictor(train_truth: np.ndarray, n_test: int) -> np.ndarray:
    """The baseline: predict the training set's mean rating for every test nodule → (n_test, K)."""
    return np.repeat(np.asarray(train_truth, dtype=np.float64).mean(axis=0, keepdims=True), n_test, axis=0)
