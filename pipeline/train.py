"""DVC stage `train@<fold>`: train one cross-validation fold and keep its best-validation model.

Params: seed, lambda, model.*, train.*. Logs per-epoch train loss and validation MAE with
dvclive (for `dvc plots show`); checkpoints every epoch so an interrupted run resumes.
"""

from __future__ import annotations

import argparse

from dvclive import Live

from nodule_net.model import ModelConfig
from nodule_net.params import load_params, user_errors_exit
from nodule_net.split import fold_indices, read_splits
from nodule_net.store import read_dataset
from nodule_net.checkpoint import model_path
from nodule_net.train import EpochRecord, TrainConfig, fit, save_model


@user_errors_exit
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", required=True, help="the extracted nodule dataset (HDF5)")
    parser.add_argument("--splits", required=True, help="the folds written by the split stage (JSON)")
    parser.add_argument("--fold", type=int, required=True)
    parser.add_argument("--models", required=True, help="folder of per-fold model folders")
    parser.add_argument("--checkpoint", required=True, help="resumable checkpoint (kept outside DVC's outs)")
    parser.add_argument("--live", required=True, help="dvclive folder for this fold's curves")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    params = load_params(args.params)
    model_config = ModelConfig(**params["model"])
    train = params["train"]
    train_config = TrainConfig(
        epochs=int(train["epochs"]),
        lr=float(train["lr"]),  # float(): "1e-4" without a dot is a string to YAML 1.1
        betas=tuple(float(b) for b in train["betas"]),
        weight_decay=float(train["weight_decay"]),
        lambda_aux=float(params["lambda"]),
        batch_nodules=int(train["batch_nodules"]),
        augment=bool(train["augment"]),
        device=str(train["device"]),
        seed=int(params["seed"]),
    )

    data = read_dataset(args.dataset)
    parts = fold_indices(read_splits(args.splits), args.fold, data.nodule_id)
    with Live(args.live, dvcyaml=None, save_dvc_exp=False) as live:

        def log(record: EpochRecord) -> None:
            live.step = record.epoch
            live.log_metric("train_loss", record.train_loss)
            live.log_metric("val_mae", record.val_mae)
            live.next_step()

        result = fit(data, parts, model_config, train_config, args.fold, args.checkpoint, on_epoch=log)
        live.summary["best_epoch"] = result.best_epoch
        live.summary["best_val_mae"] = result.best_val_mae
    save_model(model_path(args.models, args.fold), result, model_config, args.fold)
    print(f"fold {args.fold}: best validation MAE {result.best_val_mae:.4f} at epoch {result.best_epoch}")


if __name__ == "__main__":
    main()
