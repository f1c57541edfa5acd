"""DVC stage `evaluate`: every fold's model on its test fold → MAE and §4 analyses, predictions, figures.

Params: folds (which models to load), train.device. Writes the MAE metrics (Tables 1–3),
the analysis metrics (SAM end/non-end weights, CAAM–radiologist similarity, Table 5), their
summary (the few numbers DVC compares across experiments), the Fig. 6 matrices, per-nodule
predictions, the Fig. 5–7 PNGs and, from the train stage's dvclive folder (--live), the
training curves as a PNG. The analysis, summary, attention and figure paths default to
siblings of --metrics (metrics/analysis.json, metrics/summary.json, metrics/attention.json,
metrics/figures/).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from nodule_net.cli.errors import user_errors_exit
from nodule_net.config import load_params
from nodule_net.data.split import read_splits
from nodule_net.evaluation.curves import write_training_curves
from nodule_net.evaluation.evaluate import (
    analysis_metrics,
    mae_metrics,
    predict_folds,
    prediction_table,
    summary_metrics,
    write_figures,
)
from nodule_net.io.checkpoint import model_path
from nodule_net.io.files import atomic_path, check_writable, jsonable, write_text_atomic
from nodule_net.io.store import read_dataset
from nodule_net.runtime.device import resolve_device

TRAINING_CURVES = "training_curves.png"  # in the figures folder, beside Figs. 5–7


def _json(value) -> str:
    return json.dumps(jsonable(value), indent=2) + "\n"


def _matrices_json(value) -> str:
    """Like :func:`_json`, numbers to 6 significant digits and each innermost list on one line
    (a 9 × 9 matrix is 9 lines, readable in a git diff)."""
    text = json.dumps(jsonable(value, significant=6), indent=2)
    return re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text) + "\n"


@user_errors_exit
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", required=True, help="the extracted nodule dataset (HDF5)")
    parser.add_argument("--splits", required=True, help="the folds written by the split stage (JSON)")
    parser.add_argument("--models", required=True, help="folder of per-fold model folders")
    parser.add_argument("--metrics", required=True, help="where to write the MAE metrics (JSON)")
    parser.add_argument("--predictions", required=True, help="where to write per-nodule predictions (CSV)")
    parser.add_argument("--analysis", help="§4 analysis metrics (JSON; default: analysis.json beside --metrics)")
    parser.add_argument("--summary", help="the metrics DVC compares (JSON; default: summary.json beside --metrics)")
    parser.add_argument("--attention", help="Fig. 6 matrices (JSON; default: attention.json beside --metrics)")
    parser.add_argument("--figures", help="folder of the Fig. 5–7 PNGs (default: figures/ beside --metrics)")
    parser.add_argument("--live", help="the train stage's dvclive folder (fold<k>/plots/metrics/*.tsv) to draw")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    params = load_params(args.params)
    beside = Path(args.metrics).parent

    data = read_dataset(args.dataset)
    check_writable(args.predictions, len(data) * 1024)  # before the work; a CSV row of ~40 numbers per nodule
    check_writable(args.metrics, 10**6)  # the JSON metrics beside it
    models = {k: model_path(args.models, k) for k in params.folds}
    results = predict_folds(data, read_splits(args.splits), models, resolve_device(params.train.device))
    metrics = mae_metrics(data, results)
    predictions = prediction_table(data, results)
    analysis, attention = analysis_metrics(data, results)

    with atomic_path(args.predictions) as tmp:
        predictions.to_csv(tmp, index=False, float_format="%.6g")
    write_text_atomic(args.metrics, _json(metrics))
    write_text_atomic(args.analysis or beside / "analysis.json", _json(analysis))
    write_text_atomic(args.summary or beside / "summary.json", _json(summary_metrics(metrics, analysis)))
    write_text_atomic(args.attention or beside / "attention.json", _matrices_json(attention))
    figures = Path(args.figures or beside / "figures")
    written = write_figures(figures, data, results, attention)
    if args.live and (curves := write_training_curves(args.live, figures / TRAINING_CURVES, params.folds)):
        written.append(curves)
    for stale in set(figures.glob("*.png")) - set(written):  # e.g. Fig. 5 of an earlier SAM variant
        stale.unlink()

    summary = f"mean MAE {metrics['mae']['mean']:.3f} (train-mean baseline {metrics['baseline_mae']['mean']:.3f}"
    if "aux_mae" in metrics:
        summary += f", auxiliary {metrics['aux_mae']['mean']:.3f}"
    if "sam" in analysis:
        summary += f"; SAM non-end/end {analysis['sam']['nonend_to_end_ratio']:.2f}"
    if "benign_malignant" in analysis:
        summary += f"; benign/malignant AUC {analysis['benign_malignant']['auc']:.3f}"
    print(summary + f") over {len(predictions)} test nodules → {args.metrics}")


if __name__ == "__main__":
    main()
