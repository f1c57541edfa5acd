"""Cross-validated evaluation (paper §3.3): every fold's model on its own test fold.

Reports MAE per attribute on the original rating scales and its mean over attributes,
for the final and the auxiliary (ASCMM) predictions and for the train-mean baseline,
per fold and pooled over all test nodules (each nodule is tested exactly once).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch

from nodule_net.attributes import attribute_index, denormalise
from nodule_net.metrics import mae_report, train_mean_predictor
from nodule_net.split import fold_indices
from nodule_net.store import NoduleDataset
from nodule_net.inference import Predictions, load_model, predict

WEIGHT_SEPARATOR = ";"


def _truth(data: NoduleDataset, attributes: tuple[str, ...]) -> np.ndarray:
    """(N, K) mean reader ratings of ``attributes`` on the original scales."""
    return data.ratings[:, [attribute_index(a) for a in attributes]].astype(np.float64)


def evaluate_folds(
    data: NoduleDataset,
    splits: dict,
    model_paths: Mapping[int, str | os.PathLike],
    device: torch.device,
    batch_nodules: int = 8,
) -> tuple[dict, pd.DataFrame]:
    """Metrics (``{"mae", "aux_mae"?, "baseline_mae", "folds"}``) and per-nodule predictions.

    The baseline predicts the mean rating of the fold's training nodules (train and
    validation parts) for every test nodule.
    """
    fold_metrics: dict[str, dict] = {}
    pooled: dict[str, list[np.ndarray]] = {"truth": [], "final": [], "aux": [], "baseline": []}
    rows: list[pd.DataFrame] = []
    attributes: tuple[str, ...] | None = None
    for fold in sorted(model_paths):
        parts = fold_indices(splits, fold, data.nodule_id)
        model, mean, std = load_model(model_paths[fold], device)
        if attributes is not None and model.config.attributes != attributes:
            raise ValueError(f"{model_paths[fold]} predicts {model.config.attributes}, other folds {attributes}; "
                             "retrain all folds with the same params (`dvc repro`).")
        attributes = model.config.attributes
        out = predict(model, data, parts["test"], mean, std, batch_nodules, device)
        truth = _truth(data, attributes)
        test_truth = truth[parts["test"]]
        final = denormalise(out.scores, attributes)
        baseline = train_mean_predictor(truth[np.concatenate([parts["train"], parts["val"]])], len(test_truth))
        metrics = {"mae": mae_report(final, test_truth, attributes)}
        if out.aux_scores is not None:
            aux = denormalise(out.aux_scores, attributes)
            metrics["aux_mae"] = mae_report(aux, test_truth, attributes)
            pooled["aux"].append(aux)
        metrics["baseline_mae"] = mae_report(baseline, test_truth, attributes)
        metrics["n_test"] = len(test_truth)
        fold_metrics[str(fold)] = metrics
        pooled["truth"].append(test_truth)
        pooled["final"].append(final)
        pooled["baseline"].append(baseline)
        rows.append(_prediction_rows(data, parts["test"], fold, attributes, test_truth, final, out))
    if attributes is None:
        raise ValueError("No models to evaluate; list at least one fold in `folds`.")
    truth = np.concatenate(pooled["truth"])
    result = {"mae": mae_report(np.concatenate(pooled["final"]), truth, attributes)}
    if pooled["aux"]:
        result["aux_mae"] = mae_report(np.concatenate(pooled["aux"]), truth, attributes)
    result["baseline_mae"] = mae_report(np.concatenate(pooled["baseline"]), truth, attributes)
    result["folds"] = fold_metrics
    return result, pd.concat(rows, ignore_index=True)


def _prediction_rows(data: NoduleDataset, index: np.ndarray, fold: int, attributes: tuple[str, ...],
                     truth: np.ndarray, final: np.ndarray, out: Predictions) -> pd.DataFrame:
    """One row per test nodule: id, fold, depth, truth, prediction, auxiliary, SAM weights."""
    table = {"nodule_id": data.nodule_id[index], "fold": fold, "n_slices": data.n_slices[index]}
    table |= {f"true_{a}": truth[:, i] for i, a in enumerate(attributes)}
    table |= {f"pred_{a}": final[:, i] for i, a in enumerate(attributes)}
    if out.aux_scores is not None:
        aux = denormalise(out.aux_scores, attributes)
        table |= {f"aux_{a}": aux[:, i] for i, a in enumerate(attributes)}
    table["sam_weights"] = (
        [WEIGHT_SEPARATOR.join(f"{w:.6g}" for w in weights) for weights in out.slice_weights]
        if out.slice_weights is not None else ""
    )
    return pd.DataFrame(table)
