"""Cross-validated evaluation (paper §3.3) and the per-experiment analyses of §4.

Every fold's model scores its own test fold (:func:`predict_folds`); everything else is
pooled from those predictions, each nodule being tested exactly once:

- :func:`mae_metrics`: MAE per attribute on the original rating scales and its mean, for
  the final and auxiliary (ASCMM) predictions and the train-mean baseline, per fold and
  pooled (Tables 1–3). For a benign/malignant classifier (``model.malignancy: classify``)
  malignancy is not a score, so it is left out and ``mean`` is over the other 8.
- :func:`analysis_metrics`: SAM end/non-end weights (Fig. 5), CAAM relations (Fig. 6) and
  Table 5's benign–malignant metrics, as metrics and as 9 × 9 matrices.
- :func:`summary_metrics`: the few of those numbers that DVC compares across experiments.
- :func:`prediction_table`: one row per nodule (``data/predictions.csv``).
- :func:`write_figures`: Figs. 5–7 as PNGs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from nodule_net.attributes import ABBREVIATIONS, MALIGNANCY_CUTOFF, attribute_index, denormalise
from nodule_net.config import ModelConfig
from nodule_net.data.split import fold_indices
from nodule_net.evaluation.analysis import benign_malignant, caam_summary, radiologist_correlation, sam_summary
from nodule_net.evaluation.figures import draw_attribute_relations, draw_predictions, draw_slice_attention
from nodule_net.evaluation.inference import Predictions, load_model, predict
from nodule_net.evaluation.metrics import mae_report, train_mean_predictor
from nodule_net.io.store import NoduleDataset

WEIGHT_SEPARATOR = ";"
CLASSIFIER_THRESHOLD = 0.5  # P(malignant) above it: malignant
NORMALISATION = "each row of the mean CAAM weight matrix divided by its largest absolute value (sign kept)"
FIGURES = {
    "sam": "fig5_slice_attention.png",
    "caam": "fig6_attribute_relations.png",
    "predictions": "fig7_predictions.png",
}


class FoldResult(NamedTuple):
    """One fold's model on its test nodules."""

    fold: int
    test_index: np.ndarray  # (n,) dataset indices of the test nodules
    config: ModelConfig  # the fold model's config (all folds agree)
    predictions: Predictions  # normalised scores and attention weights
    baseline: np.ndarray  # (n, K) the training part's mean rating, original scales


def _truth(data: NoduleDataset, attributes: tuple[str, ...]) -> np.ndarray:
    """(N, K) mean reader ratings of ``attributes`` on the original scales."""
    return data.ratings[:, [attribute_index(a) for a in attributes]].astype(np.float64)


def predict_folds(
    data: NoduleDataset,
    splits: dict,
    model_paths: Mapping[int, str | os.PathLike],
    device: torch.device,
    batch_nodules: int = 8,
) -> list[FoldResult]:
    """Each fold's model (``model_paths[k]``) on fold k's test nodules, folds in order.

    The baseline predicts the mean rating of the fold's training nodules (train and
    validation parts) for every test nodule.
    """
    results: list[FoldResult] = []
    for fold in sorted(model_paths):
        parts = fold_indices(splits, fold, data.nodule_id.tolist())
        model, mean, std = load_model(model_paths[fold], device)
        config = model.config
        if results and config != results[0].config:
            raise ValueError(
                f"{model_paths[fold]} was trained with other model params than fold "
                f"{results[0].fold}'s; retrain all folds with the same params (`dvc repro`)."
            )
        out = predict(model, data, parts["test"], mean, std, batch_nodules, device)
        truth = _truth(data, config.attributes)
        baseline = train_mean_predictor(truth[np.concatenate([parts["train"], parts["val"]])], len(parts["test"]))
        results.append(FoldResult(fold, parts["test"], config, out, baseline))
    if not results:
        raise ValueError("No models to evaluate; list at least one fold in `folds`.")
    return results


def _scores(result: FoldResult, scores: np.ndarray) -> np.ndarray:
    """(n, K) scores on the original scales; a classifier's malignancy column is NaN (not a score)."""
    final = denormalise(scores, result.config.attributes)
    if result.config.classify_column is not None:
        final[:, result.config.classify_column] = np.nan
    return final


def _slice_weights(result: FoldResult) -> list[np.ndarray]:
    """The test nodules' SAM weights, n arrays (M_n,), of a fold whose model has SAM."""
    weights = result.predictions.slice_weights
    assert weights is not None, f"inference returns slice weights for every SAM model (fold {result.fold})"
    return weights


def _regressed(config: ModelConfig) -> list[int]:
    """Output columns that are scores (all but a classifier's malignancy)."""
    return [k for k in range(config.n_outputs) if k != config.classify_column]


def mae_metrics(data: NoduleDataset, results: list[FoldResult]) -> dict:
    """``{"mae", "aux_mae"?, "baseline_mae", "folds"}``, per attribute and ``mean``, over the regressed attributes."""
    config = results[0].config
    columns = _regressed(config)
    names = tuple(config.attributes[k] for k in columns)
    pooled: dict[str, list[np.ndarray]] = {"truth": [], "mae": [], "aux_mae": [], "baseline_mae": []}
    folds = {}
    for r in results:
        truth = _truth(data, config.attributes)[r.test_index][:, columns]
        predicted = {"mae": _scores(r, r.predictions.scores)[:, columns]}
        if r.predictions.aux_scores is not None:
            predicted["aux_mae"] = _scores(r, r.predictions.aux_scores)[:, columns]
        predicted["baseline_mae"] = r.baseline[:, columns]
        folds[str(r.fold)] = {key: mae_report(p, truth, names) for key, p in predicted.items()} | {"n_test": len(truth)}
        pooled["truth"].append(truth)
        for key, p in predicted.items():
            pooled[key].append(p)
    truth = np.concatenate(pooled["truth"])
    metrics = {
        key: mae_report(np.concatenate(pooled[key]), truth, names)
        for key in ("mae", "aux_mae", "baseline_mae")
        if pooled[key]
    }
    return metrics | {"folds": folds}


def prediction_table(data: NoduleDataset, results: list[FoldResult]) -> pd.DataFrame:
    """One row per test nodule: ``nodule_id``, ``fold``, ``n_slices``, ``true_*``, ``pred_*``,
    ``aux_*`` (ASCMM variants), ``prob_malignant`` (classifier; its ``pred_``/``aux_malignancy``
    are empty) and ``sam_weights`` (per-slice, joined by ``;``; empty without SAM)."""
    rows = []
    for r in results:
        attributes, out = r.config.attributes, r.predictions
        truth, final = _truth(data, attributes)[r.test_index], _scores(r, out.scores)
        table = {"nodule_id": data.nodule_id[r.test_index], "fold": r.fold, "n_slices": data.n_slices[r.test_index]}
        table |= {f"true_{a}": truth[:, i] for i, a in enumerate(attributes)}
        table |= {f"pred_{a}": final[:, i] for i, a in enumerate(attributes)}
        if out.aux_scores is not None:
            aux = _scores(r, out.aux_scores)
            table |= {f"aux_{a}": aux[:, i] for i, a in enumerate(attributes)}
        if r.config.classify_column is not None:
            table["prob_malignant"] = out.scores[:, r.config.classify_column].astype(np.float64)
        table["sam_weights"] = (
            [WEIGHT_SEPARATOR.join(f"{w:.6g}" for w in weights) for weights in out.slice_weights]
            if out.slice_weights is not None
            else ""
        )
        rows.append(pd.DataFrame(table))
    return pd.concat(rows, ignore_index=True)


def malignancy_decision(result: FoldResult) -> tuple[np.ndarray, float, str] | None:
    """Table 5's decision values (n,), threshold and source for one fold, or None without a malignancy output.

    A classifier: P(malignant), threshold 0.5. A regression model: its malignancy score on
    the 1–5 scale, threshold 3 (the label rule's cutoff).
    """
    config = result.config
    if "malignancy" not in config.attributes:
        return None
    column = config.attributes.index("malignancy")
    if config.classify_column is not None:
        return result.predictions.scores[:, column].astype(np.float64), CLASSIFIER_THRESHOLD, "classifier"
    score = denormalise(result.predictions.scores, config.attributes)[:, column]
    return score, MALIGNANCY_CUTOFF, "regression"


def analysis_metrics(data: NoduleDataset, results: list[FoldResult]) -> tuple[dict, dict]:
    """The §4 analyses pooled over the test folds: ``(metrics, attention)``.

    ``metrics``: ``sam`` (SAM variants), ``caam`` (CAAM variants predicting ≥ 2 attributes),
    ``benign_malignant`` (models with a malignancy output), as in ``metrics/analysis.json``.
    ``attention``: the attribute order and the (K, K) matrices of Fig. 6 (``metrics/attention.json``).
    """
    config = results[0].config
    metrics: dict = {}
    if config.uses_sam:
        metrics["sam"] = sam_summary([w for r in results for w in _slice_weights(r)])
    ratings = np.concatenate([_truth(data, config.attributes)[r.test_index] for r in results])
    attention = {
        "attributes": list(config.attributes),
        "abbreviations": [ABBREVIATIONS[attribute_index(a)] for a in config.attributes],
        "n_nodules": len(ratings),
        "radiologist_correlation": radiologist_correlation(ratings),
    }
    if config.uses_caam and config.n_outputs >= 2:
        similarity, matrices = caam_summary(np.concatenate([r.predictions.caam_weights for r in results]), ratings)
        metrics["caam"] = similarity
        attention |= {"variant": config.variant, "normalisation": NORMALISATION, **matrices}
    decisions = [malignancy_decision(r) for r in results]
    if decisions[0] is not None:
        decided = [d for d in decisions if d is not None]
        assert len(decided) == len(results), "predict_folds gives every fold's model one config"
        source, threshold = decided[0][2], decided[0][1]
        mean_malignancy = np.concatenate([data.ratings[r.test_index, attribute_index("malignancy")] for r in results])
        folds = np.concatenate([np.full(len(r.test_index), r.fold) for r in results])
        table5 = benign_malignant(mean_malignancy, np.concatenate([d[0] for d in decided]), folds, threshold)
        metrics["benign_malignant"] = {"source": source} | table5
    return metrics, attention


# What `dvc metrics diff` and `dvc exp show` compare across experiments (metrics/summary.json), in
# the order they list it: pooled MAE first. A group's keys, or None for all of them; groups and
# keys missing from the full files (no aux_mae without ASCMM, no sam without SAM) are left out.
SUMMARY_KEYS: tuple[tuple[str, tuple[str, ...] | None], ...] = (
    ("mae", None),
    ("aux_mae", ("mean",)),
    ("baseline_mae", ("mean",)),
    ("sam", ("nonend_to_end_ratio",)),
    ("caam", ("radiologist_similarity", "profile_similarity")),
    ("benign_malignant", ("auc", "sensitivity", "specificity", "accuracy")),
)


def summary_metrics(mae: dict, analysis: dict) -> dict:
    """The pooled headline numbers of :func:`mae_metrics` and :func:`analysis_metrics`, the same values.

    ``{"mae": {<attributes>, "mean"}, "aux_mae": {"mean"}, "baseline_mae": {"mean"},
    "sam": {"nonend_to_end_ratio"}, "caam": {...}, "benign_malignant": {"auc", ...}}``; per-fold
    values, SAM's depth bins and Table 5's counts stay in the full files only.
    """
    full = mae | analysis
    summary = {}
    for group, keys in SUMMARY_KEYS:
        if group in full:
            values = full[group]
            summary[group] = {key: values[key] for key in (keys or values) if key in values}
    return summary


def evaluate_folds(
    data: NoduleDataset,
    splits: dict,
    model_paths: Mapping[int, str | os.PathLike],
    device: torch.device,
    batch_nodules: int = 8,
) -> tuple[dict, pd.DataFrame]:
    """MAE metrics (:func:`mae_metrics`) and per-nodule predictions (:func:`prediction_table`)."""
    results = predict_folds(data, splits, model_paths, device, batch_nodules)
    return mae_metrics(data, results), prediction_table(data, results)


# --- figures -----------------------------------------------------------------------------


def _fig5_nodules(results: list[FoldResult], n: int = 3) -> list[tuple[int, np.ndarray]]:
    """(dataset index, SAM weights) of ``n`` test nodules of at least 3 slices (so that end and
    non-end slices show), those closest to 5 slices first, ties by dataset order."""
    candidates = [
        (int(i), w) for r in results for i, w in zip(r.test_index, _slice_weights(r), strict=True) if len(w) >= 3
    ]
    candidates.sort(key=lambda c: (abs(len(c[1]) - 5), c[0]))
    return candidates[:n]


def _fig7_nodules(truth: np.ndarray, predicted: np.ndarray, nodule_ids: np.ndarray) -> list[tuple[int, str]]:
    """(row, label) of three nodules: those at the 10th, 50th and 90th percentile of the
    per-nodule mean absolute error over the K columns of ``truth`` and ``predicted`` (n, K)."""
    error = np.nanmean(np.abs(predicted - truth), axis=1)
    order = np.argsort(error, kind="stable")
    picked = []
    for q in (10, 50, 90):
        row = int(order[round(q / 100 * (len(order) - 1))])
        picked.append((row, f"{q}th percentile error ({error[row]:.2f}):\n{nodule_ids[row]}"))
    return picked


def write_figures(
    folder: str | os.PathLike, data: NoduleDataset, results: list[FoldResult], attention: dict
) -> list[Path]:
    """Figs. 5 (SAM variants), 6 and 7 as PNGs in ``folder``; returns the paths written."""
    folder = Path(folder)
    config = results[0].config
    written = []
    if config.uses_sam and (picked := _fig5_nodules(results)):
        path = folder / FIGURES["sam"]
        draw_slice_attention(
            [data.slices(i) for i, _ in picked],
            [w for _, w in picked],
            [f"{data.nodule_id[i]} ({len(w)} slices)" for i, w in picked],
            path,
        )
        written.append(path)
    path = folder / FIGURES["caam"]
    draw_attribute_relations(attention, path)
    written.append(path)
    index = np.concatenate([r.test_index for r in results])
    truth = np.concatenate([_truth(data, config.attributes)[r.test_index] for r in results])
    predicted = np.concatenate([_scores(r, r.predictions.scores) for r in results])
    if config.classify_column is not None:  # show P(malignant) where the score would be
        predicted[:, config.classify_column] = np.concatenate(
            [r.predictions.scores[:, config.classify_column] for r in results]
        )
    scored = _regressed(config)
    picked_rows = _fig7_nodules(truth[:, scored], predicted[:, scored], data.nodule_id[index])
    rows = [k for k, _ in picked_rows]
    path = folder / FIGURES["predictions"]
    draw_predictions(
        [data.slices(int(index[k]))[data.n_slices[index[k]] // 2] for k in rows],
        truth[rows],
        predicted[rows],
        attention["abbreviations"],
        [label for _, label in picked_rows],
        path,
        probability_row=config.classify_column,
    )
    written.append(path)
    return written
