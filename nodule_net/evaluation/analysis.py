"""The paper's per-experiment analyses (§4.1, §4.2) as pure numpy/scipy/scikit-learn functions.

- Slice attention (§4.1, Fig. 5): SAM weights of end vs non-end slices, overall and by depth.
- Cross-attribute attention (§4.1, Fig. 6): the radiologists' score correlations (6a), the
  row-normalised mean CAAM weights (6b/c), the correlation between attributes' CAAM weight
  profiles (6d/e), and how much each resembles 6a off the diagonal.
- Benign–malignant classification (§4.2, Table 5) from the mean malignancy rating.

Undefined values (a constant column, a class that never occurs) are NaN; the caller
decides how to write them (the evaluate stage writes JSON ``null``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn import metrics as skm

from nodule_net.attributes import attribute_index, normalise
from nodule_net.model.loss import benign_malignant_labels

# Depth bins (number of slices, inclusive; None: no upper bound) for the end/non-end split.
SAM_DEPTH_BINS: tuple[tuple[str, int, int | None], ...] = (
    ("3-4", 3, 4),
    ("5-8", 5, 8),
    ("9-16", 9, 16),
    ("17+", 17, None),
)
SAM_MIN_SLICES = 3  # §4.1: "stacks containing at least 3 slices" (fewer have no non-end slice)


# --- slice attention (SAM) ---------------------------------------------------------------


def end_nonend_weights(slice_weights: Sequence[np.ndarray], min_slices: int = SAM_MIN_SLICES) -> dict:
    """Mean SAM weight of end vs non-end slices (§4.1; paper: 0.28 vs 1.32, ratio 4.7).

    ``slice_weights``: one (M_n,) array per nodule, summing to 1 (softmax over its slices).
    Nodules with fewer than ``min_slices`` slices are left out. Each weight is multiplied
    by M_n, so a nodule whose slices are all equally important has weight 1 on every
    slice. The two end slices (first and last) of all kept nodules are pooled into one
    mean, all their other slices into the other (each slice counts once).

    Returns ``{"end_weight", "nonend_weight", "nonend_to_end_ratio", "n_nodules"}``; the
    weights are NaN when no nodule qualifies.
    """
    kept = [np.asarray(w, dtype=np.float64) for w in slice_weights if len(w) >= min_slices]
    if not kept:
        return {"end_weight": np.nan, "nonend_weight": np.nan, "nonend_to_end_ratio": np.nan, "n_nodules": 0}
    scaled = [w * len(w) for w in kept]
    end = np.concatenate([w[[0, -1]] for w in scaled])
    nonend = np.concatenate([w[1:-1] for w in scaled])
    end_mean, nonend_mean = float(end.mean()), float(nonend.mean())
    ratio = nonend_mean / end_mean if end_mean > 0 else np.nan
    return {"end_weight": end_mean, "nonend_weight": nonend_mean, "nonend_to_end_ratio": ratio, "n_nodules": len(kept)}


def sam_summary(slice_weights: Sequence[np.ndarray]) -> dict:
    """:func:`end_nonend_weights` over all nodules plus ``"by_depth"``: the same per ``SAM_DEPTH_BINS`` bin."""
    summary = end_nonend_weights(slice_weights)
    depths = np.array([len(w) for w in slice_weights])
    summary["by_depth"] = {}
    for name, low, high in SAM_DEPTH_BINS:
        in_bin = (depths >= low) & (depths <= (high if high is not None else np.inf))
        in_depth = [w for w, k in zip(slice_weights, in_bin, strict=True) if k]
        summary["by_depth"][name] = end_nonend_weights(in_depth, low)
    return summary


# --- cross-attribute attention (CAAM) ----------------------------------------------------


def _row_correlations(rows: np.ndarray) -> np.ndarray:
    """Pearson correlation between the rows of ``rows`` (..., K, D) → (..., K, K); NaN for constant rows."""
    centred = rows - rows.mean(axis=-1, keepdims=True)
    norm = np.linalg.norm(centred, axis=-1, keepdims=True)
    # A constant row has no correlation with anything (0/0); mark it NaN, not 0.
    scale = np.divide(1.0, norm, out=np.full_like(norm, np.nan), where=norm > 1e-12 * rows.shape[-1])
    unit = centred * scale
    return np.clip(unit @ np.swapaxes(unit, -1, -2), -1.0, 1.0)


def radiologist_correlation(ratings: np.ndarray) -> np.ndarray:
    """Fig. 6a: |Pearson r| between the mean ratings of every pair of attributes → (K, K).

    ``ratings``: (N, K) mean reader ratings of the evaluated nodules. An attribute that is
    constant over the nodules has NaN in its row and column.
    """
    return np.abs(_row_correlations(np.asarray(ratings, dtype=np.float64).T))


def normalise_rows(matrix: np.ndarray) -> np.ndarray:
    """Each row divided by its largest absolute value → entries in [−1, 1], sign kept.

    CAAM weights are unnormalised scores (no softmax, §2.2.2) that can be negative, so
    this keeps their sign and their zero; NaN for an all-zero row.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    peak = np.abs(matrix).max(axis=-1, keepdims=True)
    return np.divide(matrix, peak, out=np.full_like(matrix, np.nan), where=peak > 0)


def normalised_mean_caam(caam_weights: np.ndarray) -> np.ndarray:
    """Fig. 6b/c: the mean over nodules of the CAAM weights, each row then divided by its max |w|.

    ``caam_weights``: (N, K, K); row t holds the weights CAAM unit t gives attributes 0..K-1
    (paper eqs. 5–6), so entry (i, j) is the weight of attribute j for attribute i. → (K, K).
    """
    return normalise_rows(np.asarray(caam_weights, dtype=np.float64).mean(axis=0))


def caam_profile_correlation(caam_weights: np.ndarray) -> np.ndarray:
    """Fig. 6d/e: per nodule, Pearson r between the weight profiles (rows) of each pair of
    attributes, averaged over nodules → (K, K) in [−1, 1].

    ``caam_weights``: (N, K, K). A row that is constant for a nodule has no correlation;
    that nodule is left out of the mean for the pairs involving it (NaN if no nodule is left).
    """
    per_nodule = _row_correlations(np.asarray(caam_weights, dtype=np.float64))  # (N, K, K)
    valid = ~np.isnan(per_nodule)
    total = np.where(valid, per_nodule, 0.0).sum(axis=0)
    count = valid.sum(axis=0)
    return np.divide(total, count, out=np.full(total.shape, np.nan), where=count > 0)


def offdiagonal_correlation(model: np.ndarray, reference: np.ndarray) -> float:
    """Pearson r between the off-diagonal entries of two (K, K) matrices (NaN entries dropped).

    "How much the model's attribute relations resemble the radiologists'" when
    ``reference`` is :func:`radiologist_correlation`. NaN with fewer than 3 usable
    entries or when either side is constant.
    """
    model, reference = np.asarray(model, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    off = ~np.eye(len(model), dtype=bool) & ~np.isnan(model) & ~np.isnan(reference)
    a, b = model[off], reference[off]
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def caam_summary(caam_weights: np.ndarray, ratings: np.ndarray) -> tuple[dict, dict[str, np.ndarray]]:
    """Fig. 6's numbers: ``({"radiologist_similarity", "profile_similarity"}, matrices)``.

    Both similarities compare magnitudes with Fig. 6a (which holds |r|): |normalised mean
    CAAM weights| and |mean profile correlation| against the radiologists' |r|, off the
    diagonal. ``matrices``: ``radiologist_correlation``, ``caam_weights_mean`` (raw),
    ``caam_weights_normalised``, ``caam_profile_correlation``, each (K, K).
    """
    caam_weights = np.asarray(caam_weights, dtype=np.float64)
    matrices = {
        "radiologist_correlation": radiologist_correlation(ratings),
        "caam_weights_mean": caam_weights.mean(axis=0),
        "caam_weights_normalised": normalised_mean_caam(caam_weights),
        "caam_profile_correlation": caam_profile_correlation(caam_weights),
    }
    reference = matrices["radiologist_correlation"]
    similarity = {
        "radiologist_similarity": offdiagonal_correlation(np.abs(matrices["caam_weights_normalised"]), reference),
        "profile_similarity": offdiagonal_correlation(np.abs(matrices["caam_profile_correlation"]), reference),
    }
    return similarity, matrices


# --- benign–malignant classification (Table 5) ------------------------------------------


def malignancy_labels(mean_malignancy: np.ndarray) -> np.ndarray:
    """(N,) 1.0 malignant (mean rating > 3), 0.0 benign (< 3), NaN excluded (= 3), by training's rule
    (:func:`nodule_net.model.loss.benign_malignant_labels`) on the [0, 1] scale."""
    rating = np.asarray(mean_malignancy, dtype=np.float64)
    # (N, 1) broadcasts against normalise's 9 columns; malignancy's column is this rating normalised.
    malignant, counted = benign_malignant_labels(normalise(rating[:, None])[:, attribute_index("malignancy")])
    return np.where(counted, malignant.astype(np.float64), np.nan)


def classification_metrics(labels: np.ndarray, decision: np.ndarray, threshold: float) -> dict:
    """Table 5's accuracy, sensitivity, specificity, precision and AUC (fractions, not %).

    ``labels``: (N,) from :func:`malignancy_labels` (NaN = excluded); ``decision``: (N,)
    the model's decision value, malignant when ``decision > threshold``. AUC ranks the
    decision values (sklearn ``roc_auc_score``). A metric whose denominator is empty (no
    malignant nodule for sensitivity, …) is NaN. Also ``n_benign``, ``n_malignant``,
    ``n_excluded``.
    """
    labels, decision = np.asarray(labels, dtype=np.float64), np.asarray(decision, dtype=np.float64)
    if labels.shape != decision.shape or labels.ndim != 1:
        raise ValueError(f"Labels {labels.shape} and decision values {decision.shape} must be the same (N,) shape.")
    kept = ~np.isnan(labels)
    y, score = labels[kept].astype(int), decision[kept]
    predicted = (score > threshold).astype(int)
    counts = {"n_benign": int((y == 0).sum()), "n_malignant": int((y == 1).sum()), "n_excluded": int((~kept).sum())}
    if len(y) == 0:
        return dict.fromkeys(("accuracy", "sensitivity", "specificity", "precision", "auc"), np.nan) | counts
    nan = np.nan
    result = {
        "accuracy": float(skm.accuracy_score(y, predicted)),
        "sensitivity": float(skm.recall_score(y, predicted, pos_label=1, labels=[0, 1], zero_division=nan)),
        "specificity": float(skm.recall_score(y, predicted, pos_label=0, labels=[0, 1], zero_division=nan)),
        "precision": float(skm.precision_score(y, predicted, pos_label=1, labels=[0, 1], zero_division=nan)),
        # AUC needs both classes among the kept nodules.
        "auc": float(skm.roc_auc_score(y, score)) if 0 < y.sum() < len(y) else nan,
    }
    return result | counts


def benign_malignant(mean_malignancy: np.ndarray, decision: np.ndarray, folds: np.ndarray, threshold: float) -> dict:
    """Table 5 pooled over all test nodules plus ``"folds"``: the same per fold.

    ``mean_malignancy``: (N,) mean rating; ``decision``: (N,) the model's decision value
    (a regression model's malignancy score with ``threshold`` 3, or a classifier's
    probability with 0.5); ``folds``: (N,) the test fold of each nodule.
    """
    labels, decision, folds = malignancy_labels(mean_malignancy), np.asarray(decision), np.asarray(folds)
    result = classification_metrics(labels, decision, threshold)
    result["folds"] = {
        str(k): classification_metrics(labels[folds == k], decision[folds == k], threshold) for k in np.unique(folds)
    }
    return result
