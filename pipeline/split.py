"""DVC stage `split`: seeded k-fold cross-validation folds (paper §3.3) → a JSON of nodule ids.

Params: seed, folds (k = its length), split.group_by_patient, split.val_fraction.
"""

from __future__ import annotations

import argparse

from nodule_net.cli.errors import user_errors_exit
from nodule_net.config import load_params
from nodule_net.data.split import kfold_split, write_splits
from nodule_net.io.files import check_writable
from nodule_net.io.store import read_dataset


@user_errors_exit
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", required=True, help="the extracted nodule dataset (HDF5)")
    parser.add_argument("--out", required=True, help="where to write the folds (JSON)")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    params = load_params(args.params)  # checks that folds is [0, ..., k-1]
    folds = params.folds

    data = read_dataset(args.dataset)
    check_writable(args.out, len(data) * 64)  # a JSON of nodule ids
    splits = kfold_split(
        data.nodule_id,
        data.patient_id,
        n_folds=len(folds),
        seed=params.seed,
        group_by_patient=params.split.group_by_patient,
        val_fraction=params.split.val_fraction,
    )
    write_splits(args.out, splits)
    sizes = ", ".join(f"{k}: {len(f['train'])}/{len(f['val'])}/{len(f['test'])}" for k, f in enumerate(splits["folds"]))
    print(f"{len(data)} nodules in {len(folds)} folds (train/val/test) {sizes} → {args.out}")


if __name__ == "__main__":
    main()
