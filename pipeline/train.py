"""DVC stage `train@<fold>`: train cross-validation folds, side by side, in parallel processes or one after another.

Params: seed, lambda, folds, model.*, train.* (train.folds_together: auto = side by side on
a CUDA GPU; train.fold_processes: auto = one process per fold on a CPU). For every fold it writes
what `train@<fold>` writes: <models>/fold<k>/model.pt, the dvclive folder <live>/fold<k>
(curves and best-epoch summary) and the resumable checkpoint <checkpoints>/fold<k>.pt, so
`evaluate`, `dvc plots` and `dvc metrics diff` see the same files and keys.

With --fold k it writes fold k's model and curves only. Side by side or in processes it
still trains every fold (they train at once) and leaves their finished checkpoints behind, so the next
`--fold j` finds fold j trained and only writes its outputs: `train@k` stages can keep
their per-fold outs with this script as their command.
"""

from __future__ import annotations

import argparse
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

from dvclive import Live

from nodule_net.cli.errors import user_errors_exit
from nodule_net.config import load_params
from nodule_net.data.split import fold_indices, read_splits
from nodule_net.io.checkpoint import extract_record, model_path
from nodule_net.io.files import check_writable
from nodule_net.io.store import read_dataset
from nodule_net.model.net import NoduleNet
from nodule_net.runtime.device import device_label
from nodule_net.runtime.progress import progress_line
from nodule_net.training.fit import save_model
from nodule_net.training.plan import TrainingPlan, train_folds
from nodule_net.training.run import EpochRecord

# files.atomic_path writes a file whole beside its previous version before the rename replaces it.
ATOMIC_COPIES = 2


def _disk(path: Path) -> int:
    """The device id of the filesystem ``path`` will be written to (its nearest existing folder's)."""
    return next(folder for folder in path.parents if folder.exists()).stat().st_dev


def check_room(needs: dict[Path, int]) -> None:
    """:func:`check_writable` for every path, each against the bytes of all the paths on its disk."""
    disks = {path: _disk(path) for path in needs}
    per_disk: Counter[int] = Counter()
    for path, need in needs.items():
        per_disk[disks[path]] += need
    for path, disk in disks.items():
        check_writable(path, per_disk[disk])


def finished_line(fold: int, checkpoint: Path, epochs: int, together: bool) -> str:
    """Why fold ``fold``'s finished checkpoint is loaded, not trained: ``together``, the folds
    trained at once in an earlier ``train@`` stage; else a run of this fold finished before."""
    if together:
        return (
            f"fold {fold} was trained together with the other folds by an earlier train@ stage "
            f"({epochs}/{epochs} epochs in {checkpoint}); writing its outputs."
        )
    return f"fold {fold}: {checkpoint} holds a finished run ({epochs}/{epochs} epochs); writing its outputs."


@user_errors_exit(interrupted="interrupted; `dvc repro` resumes from the last epoch")
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", required=True, help="the extracted nodule dataset (HDF5)")
    parser.add_argument("--splits", required=True, help="the folds written by the split stage (JSON)")
    parser.add_argument("--models", required=True, help="folder of per-fold model folders")
    parser.add_argument("--checkpoints", required=True, help="folder of per-fold checkpoints (outside DVC's outs)")
    parser.add_argument("--live", required=True, help="folder of per-fold dvclive folders")
    parser.add_argument("--fold", type=int, help="write only this fold's model and curves (default: every fold's)")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    params = load_params(args.params)
    model_config, train_config, folds = params.model, params.train, params.folds
    if args.fold is not None and args.fold not in folds:
        raise ValueError(f"--fold {args.fold} is not among the params' folds {folds}.")
    written = folds if args.fold is None else [args.fold]
    data = read_dataset(args.dataset)
    splits = read_splits(args.splits)
    fold_parts = {k: fold_indices(splits, k, data.nodule_id) for k in folds}
    checkpoints = {k: Path(args.checkpoints) / f"fold{k}.pt" for k in folds}
    # Side by side or in processes, the first train@k trains every fold that is not finished yet.
    plan = TrainingPlan.for_checkpoints(data, fold_parts, model_config, train_config, checkpoints, written)
    # The weights' size (not on the meta device: initialising there imports torch._dynamo, seconds).
    weights = sum(p.numel() * p.element_size() for p in NoduleNet(model_config).parameters())
    # Before any epoch: a checkpoint holds the model, the best model and Adam's two moments; every fold's
    # checkpoint stays until the end, and each file needs room for its temporary copy too.
    check_room(
        {checkpoints[k]: ATOMIC_COPIES * 4 * weights for k in plan.folds}
        | {model_path(args.models, k): ATOMIC_COPIES * weights for k in written}
    )
    for k in written:
        check_writable(Path(args.live) / f"fold{k}" / "metrics.json")
    if (summary := plan.summary(train_config.epochs)) is not None:
        progress_line(summary)
    # One train@k stage of folds that train at once: the first stage trained them all.
    together = args.fold is not None and plan.engine != "sequential" and len(plan.folds) > 1
    for k in plan.load:
        progress_line(finished_line(k, checkpoints[k], train_config.epochs, together))

    with ExitStack() as stack:
        lives = {
            k: stack.enter_context(Live(str(Path(args.live) / f"fold{k}"), dvcyaml=None, save_dvc_exp=False))
            for k in written
        }

        def log(fold: int, record: EpochRecord) -> None:
            if (live := lives.get(fold)) is not None:
                live.step = record.epoch
                live.log_metric("train_loss", record.train_loss)
                live.log_metric("val_mae", record.val_mae)
                live.next_step()

        results = train_folds(
            data, fold_parts, model_config, train_config, plan, checkpoints, on_epoch=log, dataset_path=args.dataset
        )
        for k in written:
            lives[k].summary["best_epoch"] = results[k].best_epoch
            lives[k].summary["best_val_mae"] = results[k].best_val_mae
            # Provenance for `nodule-net report`: what train.device resolved to in this stage.
            lives[k].summary["device"] = device_label(plan.device)
    for k in written:
        save_model(model_path(args.models, k), results[k], model_config, k, extract_record(data.attrs))
        progress_line(f"fold {k}: best validation MAE {results[k].best_val_mae:.4f} at epoch {results[k].best_epoch}")


if __name__ == "__main__":
    main()
