"""The evaluate stage end to end on tiny trained models: MAE, §4 analyses, predictions, figures."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from sklearn.metrics import roc_auc_score

from nodule_net.attributes import ABBREVIATIONS, ATTRIBUTES
from nodule_net.config import ModelConfig, TrainConfig
from nodule_net.data.split import fold_indices, kfold_split, write_splits
from nodule_net.evaluation.analysis import SAM_DEPTH_BINS
from nodule_net.evaluation.evaluate import SUMMARY_KEYS, summary_metrics
from nodule_net.io.checkpoint import model_path
from nodule_net.io.store import write_dataset
from nodule_net.training.fit import fit, save_model
from synthetic_nodules import TINY, make_dataset

CPU = torch.device("cpu")  # the engines train where the plan says; these tests on the CPU

REPO = Path(__file__).resolve().parents[2]
# Mean malignancy ratings of the 12 nodules: 5 benign (< 3), 4 malignant (> 3), 3 rated exactly 3.
MALIGNANCY = np.array([1, 2, 3, 4, 5, 3, 2, 4, 1.5, 4.5, 3, 2.5])
TABLE5 = ("accuracy", "sensitivity", "specificity", "precision", "auc", "n_benign", "n_malignant", "n_excluded")
SAM_KEYS = ("end_weight", "nonend_weight", "nonend_to_end_ratio", "n_nodules")

pytestmark = pytest.mark.usefixtures("one_thread")


def flatten(tree: dict, prefix: str = "") -> dict:
    """Dotted keys, as `dvc metrics show` prints them."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[prefix + key] = value
    return flat


def expected_keys(sam: bool, caam: bool) -> set[str]:
    keys = {"benign_malignant.source", *(f"benign_malignant.{k}" for k in TABLE5)}
    keys |= {f"benign_malignant.folds.{fold}.{k}" for fold in "01" for k in TABLE5}
    if sam:
        keys |= {f"sam.{k}" for k in SAM_KEYS}
        keys |= {f"sam.by_depth.{name}.{k}" for name, _, _ in SAM_DEPTH_BINS for k in SAM_KEYS}
    if caam:
        keys |= {"caam.radiologist_similarity", "caam.profile_similarity"}
    return keys


def write_live(folder: Path, folds: int = 2, epochs: int = 2) -> None:
    """dvclive's per-fold files as the train stage leaves them: curves (TSV) and the summary."""
    for fold in range(folds):
        curves = folder / f"fold{fold}" / "plots" / "metrics"
        curves.mkdir(parents=True)
        for name in ("train_loss", "val_mae"):
            rows = "".join(f"{e}\t{1.0 / (e + fold)}\n" for e in range(1, epochs + 1))
            (curves / f"{name}.tsv").write_text(f"step\t{name}\n{rows}")
        summary = {"train_loss": 0.5, "val_mae": 0.5, "step": epochs, "best_epoch": epochs, "best_val_mae": 0.5}
        (folder / f"fold{fold}" / "metrics.json").write_text(json.dumps(summary))


def assert_summary_is_the_full_files(tmp_path: Path) -> dict:
    """metrics/summary.json: the pooled keys of mae.json and analysis.json, the same values, in SUMMARY_KEYS order."""
    summary, full = read(tmp_path, "summary.json"), read(tmp_path, "mae.json") | read(tmp_path, "analysis.json")
    assert list(summary) == [group for group, _ in SUMMARY_KEYS if group in full]
    for group, keys in SUMMARY_KEYS:
        if group in summary:
            assert summary[group] == {k: full[group][k] for k in (keys or full[group])}
    assert list(summary["mae"]) == list(full["mae"])  # every pooled attribute and the mean, no folds
    return summary


def run_evaluate(tmp_path: Path, variant: str, malignancy: str = "regress", live: bool = False):
    """Train 2 tiny folds for one epoch, then run pipeline/evaluate.py as DVC does (with a dvclive
    folder to draw when ``live``); returns the dataset."""
    data = make_dataset(n_nodules=12, size=16, max_depth=5, seed=1)
    data.ratings[:, ATTRIBUTES.index("malignancy")] = MALIGNANCY
    write_dataset(tmp_path / "nodules.h5", data)
    splits = kfold_split(data.nodule_id, data.patient_id, n_folds=2, seed=0, val_fraction=0.2)
    write_splits(tmp_path / "splits.json", splits)
    config = ModelConfig(variant=variant, malignancy=malignancy, **TINY)
    for fold in range(2):
        result = fit(
            data,
            fold_indices(splits, fold, data.nodule_id),
            config,
            TrainConfig(epochs=1, batch_nodules=4),
            fold,
            progress=False,
            device=CPU,
        )
        save_model(model_path(tmp_path / "models", fold), result, config, fold)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["folds"] = [0, 1]
    params["train"]["device"] = "cpu"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    argv = [
        "evaluate.py",
        "--dataset",
        str(tmp_path / "nodules.h5"),
        "--splits",
        str(tmp_path / "splits.json"),
        "--models",
        str(tmp_path / "models"),
        "--metrics",
        str(tmp_path / "metrics" / "mae.json"),
        "--predictions",
        str(tmp_path / "predictions.csv"),
        "--params",
        str(tmp_path / "params.yaml"),
    ]
    if live:
        write_live(tmp_path / "live")
        argv += ["--live", str(tmp_path / "live")]
    old_argv, sys.argv = sys.argv, argv
    try:
        runpy.run_path(str(REPO / "pipeline" / "evaluate.py"), run_name="__main__")
    finally:
        sys.argv = old_argv
    return data


def read(tmp_path: Path, name: str) -> dict:
    return json.loads((tmp_path / "metrics" / name).read_text())


def assert_table5_matches_predictions(table5: dict, truth: np.ndarray, decision: np.ndarray, threshold: float) -> None:
    kept = truth != 3
    y, score = (truth[kept] > 3).astype(int), decision[kept]
    assert (table5["n_benign"], table5["n_malignant"], table5["n_excluded"]) == (5, 4, 3)
    assert table5["accuracy"] == pytest.approx(((score > threshold) == y).mean())
    assert table5["auc"] == pytest.approx(roc_auc_score(y, score))


@pytest.mark.slow
def test_evaluate_stage_writes_every_analysis_of_the_full_model(tmp_path) -> None:
    data = run_evaluate(tmp_path, "full", live=True)
    analysis = read(tmp_path, "analysis.json")
    assert set(flatten(analysis)) == expected_keys(sam=True, caam=True)
    depths = data.n_slices
    assert analysis["sam"]["n_nodules"] == int((depths >= 3).sum()) > 0
    assert sum(b["n_nodules"] for b in analysis["sam"]["by_depth"].values()) == analysis["sam"]["n_nodules"]
    assert -1 <= analysis["caam"]["radiologist_similarity"] <= 1
    table5 = analysis["benign_malignant"]
    assert table5["source"] == "regression"
    predictions = pd.read_csv(tmp_path / "predictions.csv")
    assert "prob_malignant" not in predictions
    assert_table5_matches_predictions(
        table5, predictions["true_malignancy"].to_numpy(), predictions["pred_malignancy"].to_numpy(), 3.0
    )
    folds = table5["folds"]
    assert sum(folds[k]["n_benign"] + folds[k]["n_malignant"] + folds[k]["n_excluded"] for k in folds) == 12
    attention = read(tmp_path, "attention.json")
    assert attention["attributes"] == list(ATTRIBUTES) and attention["abbreviations"] == list(ABBREVIATIONS)
    for name in ("radiologist_correlation", "caam_weights_mean", "caam_weights_normalised", "caam_profile_correlation"):
        assert np.array(attention[name], dtype=float).shape == (9, 9)
    normalised = np.array(attention["caam_weights_normalised"], dtype=float)
    np.testing.assert_allclose(np.abs(normalised).max(axis=1), 1.0)  # each row's largest |w| is 1
    mae = read(tmp_path, "mae.json")
    assert set(mae["mae"]) == {*ATTRIBUTES, "mean"} and "aux_mae" in mae
    summary = assert_summary_is_the_full_files(tmp_path)
    assert len(flatten(summary)) == 19  # 9 attributes + mean, aux, baseline, SAM, 2 CAAM, 4 of Table 5
    figures = sorted(p.name for p in (tmp_path / "metrics" / "figures").iterdir())
    assert figures == [
        "fig5_slice_attention.png",
        "fig6_attribute_relations.png",
        "fig7_predictions.png",
        "training_curves.png",  # from --live, kept by the stale-figure cleanup
    ]


@pytest.mark.slow
def test_evaluate_stage_without_attention_has_no_sam_or_caam_keys(tmp_path) -> None:
    (tmp_path / "metrics" / "figures").mkdir(parents=True)
    (tmp_path / "metrics" / "figures" / "fig5_slice_attention.png").write_bytes(b"from a SAM run")
    run_evaluate(tmp_path, "none")
    analysis = read(tmp_path, "analysis.json")
    assert set(flatten(analysis)) == expected_keys(sam=False, caam=False)
    attention = read(tmp_path, "attention.json")
    assert "caam_weights_normalised" not in attention and len(attention["radiologist_correlation"]) == 9
    figures = sorted(p.name for p in (tmp_path / "metrics" / "figures").iterdir())
    assert figures == ["fig6_attribute_relations.png", "fig7_predictions.png"]  # the stale Fig. 5 is gone
    summary = assert_summary_is_the_full_files(tmp_path)
    assert set(summary) == {"mae", "baseline_mae", "benign_malignant"}  # no ASCMM, SAM or CAAM numbers


@pytest.mark.slow
def test_evaluate_stage_scores_a_classifier_by_its_probability(tmp_path) -> None:
    run_evaluate(tmp_path, "caam_ascmm", malignancy="classify")
    mae = read(tmp_path, "mae.json")
    regressed = {a for a in ATTRIBUTES if a != "malignancy"}
    assert set(mae["mae"]) == set(mae["aux_mae"]) == set(mae["baseline_mae"]) == {*regressed, "mean"}
    assert mae["mae"]["mean"] == pytest.approx(np.mean([mae["mae"][a] for a in regressed]))
    predictions = pd.read_csv(tmp_path / "predictions.csv")
    assert predictions["pred_malignancy"].isna().all() and predictions["aux_malignancy"].isna().all()
    probability = predictions["prob_malignant"].to_numpy()
    assert ((probability > 0) & (probability < 1)).all()
    table5 = read(tmp_path, "analysis.json")["benign_malignant"]
    assert table5["source"] == "classifier"
    summary = assert_summary_is_the_full_files(tmp_path)
    assert set(summary["mae"]) == {*regressed, "mean"} and summary["aux_mae"] == {"mean": mae["aux_mae"]["mean"]}
    assert_table5_matches_predictions(table5, predictions["true_malignancy"].to_numpy(), probability, 0.5)


def test_summary_keeps_the_pooled_headline_keys_of_a_single_attribute_run() -> None:
    mae = {
        "mae": {"malignancy": 0.7, "mean": 0.7},
        "baseline_mae": {"malignancy": 0.8, "mean": 0.8},
        "folds": {"0": {"mae": {"malignancy": 0.6, "mean": 0.6}, "n_test": 3}},
    }
    analysis = {
        "benign_malignant": {"source": "regression", "accuracy": 0.5, "auc": None, "n_benign": 2, "folds": {}},
        "sam": {"end_weight": 0.5, "nonend_weight": 1.5, "nonend_to_end_ratio": 3.0, "n_nodules": 4, "by_depth": {}},
    }
    summary = summary_metrics(mae, analysis)
    assert summary == {
        "mae": {"malignancy": 0.7, "mean": 0.7},
        "baseline_mae": {"mean": 0.8},
        "sam": {"nonend_to_end_ratio": 3.0},
        "benign_malignant": {"auc": None, "accuracy": 0.5},  # an undefined AUC stays, as null
    }
    assert list(summary) == ["mae", "baseline_mae", "sam", "benign_malignant"]  # pooled MAE first
