"""DVC stage `evaluate`: every fold's model on its test fold → MAE JSON and per-nodule predictions.

Params: folds (which models to load), train.device.
"""

from __future__ import annotations

import argparse
import json


from nodule_net.evaluate import evaluate_folds
from nodule_net.files import atomic_path, write_text_atomic
from nodule_net.params import load_params, user_errors_exit
from nodule_net.split import read_splits
from nodule_net.store import read_dataset
from nodule_net.checkpoint import model_path
from nodule_net.device import resolve_device


@user_errors_exit
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", required=True, help="the extracted nodule dataset (HDF5)")
    parser.add_argument("--splits", required=True, help="the folds written by the split stage (JSON)")
    parser.add_argument("--models", required=True, help="folder of per-fold model folders")
    parser.add_argument("--metrics", required=True, help="where to write the MAE metrics (JSON)")
    parser.add_argument("--predictions", required=True, help="where to write per-nodule predictions (CSV)")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    params = load_params(args.params)

    data = read_dataset(args.dataset)
    models = {int(k): model_path(args.models, int(k)) for k in params["folds"]}
    metrics, predictions = evaluate_folds(
        data, read_splits(args.splits), models, resolve_device(str(params["train"]["device"]))
    )
    with atomic_path(args.predictions) as tmp:
        predictions.to_csv(tmp, index=False, float_format="%.6g")
    write_text_atomic(args.metrics, json.dumps(metrics, indent=2) + "\n")
    summary = f"mean MAE {metrics['mae']['mean']:.3f} (train-mean baseline {metrics['baseline_mae']['mean']:.3f}"
    if "aux_mae" in metrics:
        summary += f", auxiliary {metrics['aux_mae']['mean']:.3f}"
    print(summary + f") over {len(predictions)} test nodules → {args.metrics}")


if __name__ == "__main__":
    main()
