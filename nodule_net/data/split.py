"""Seeded k-fold cross-validation over nodules (paper §3.3), written once and reused.

Each fold has a test part (one k-th of the nodules), and its remaining nodules are
divided into ``train`` and a ``val`` slice used for model selection — the test fold is
never looked at before evaluation. The split is data (a JSON of nodule ids), so every
method and every experiment sees identical folds (nnU-Net style).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np

from nodule_net.io.files import write_text_atomic

# Distinct stream ids so the split and training never draw the same random numbers from `seed`.
SPLIT_STREAM = 1


def _assign_groups(group_sizes: np.ndarray, n_bins: int) -> np.ndarray:
    """Greedily put groups (already in random order) into the bin with the fewest nodules so far."""
    totals = np.zeros(n_bins, dtype=np.int64)
    bins = np.empty(len(group_sizes), dtype=np.int64)
    for g, size in enumerate(group_sizes):
        bins[g] = int(np.argmin(totals))
        totals[bins[g]] += size
    return bins


def _groups(
    nodule_ids: Sequence[str] | np.ndarray, patient_ids: Sequence[str] | np.ndarray, by_patient: bool
) -> list[np.ndarray]:
    """Indices of nodules that must stay together: one nodule each, or one patient each."""
    if not by_patient:
        return [np.array([i]) for i in range(len(nodule_ids))]
    patients = np.asarray(patient_ids)
    return [np.flatnonzero(patients == p) for p in sorted(set(patients.tolist()))]


def _sample_val(groups: list[np.ndarray], fraction: float, rng: np.random.Generator) -> set[int]:
    """Random groups whose nodules make up about ``fraction`` of the total (at least one group)."""
    target = max(1, round(fraction * sum(len(g) for g in groups)))
    val: set[int] = set()
    for g in rng.permutation(len(groups)):
        if len(val) >= target:
            break
        val.update(groups[g].tolist())
    return val


def kfold_split(
    nodule_ids: Sequence[str] | np.ndarray,
    patient_ids: Sequence[str] | np.ndarray,
    n_folds: int,
    seed: int,
    group_by_patient: bool = False,
    val_fraction: float = 0.1,
) -> dict:
    """Split nodules into ``n_folds`` folds, each with train / val / test nodule ids.

    ``group_by_patient=False`` is the paper's protocol (nodules of one patient may be in
    both train and test); ``True`` keeps each patient in one fold, and also keeps the
    validation patients out of that fold's training part.
    """
    if n_folds < 2:
        raise ValueError(f"Cross-validation needs at least 2 folds, got {n_folds}; list more entries in `folds`.")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"split.val_fraction={val_fraction} must be strictly between 0 and 1.")
    if len(set(nodule_ids)) != len(nodule_ids):
        raise ValueError("Nodule ids are not unique; the dataset is broken — re-run `dvc repro extract`.")
    groups = _groups(nodule_ids, patient_ids, group_by_patient)
    if len(groups) < n_folds:
        raise ValueError(
            f"Only {len(groups)} {'patients' if group_by_patient else 'nodules'} for {n_folds} folds; "
            "use a larger dataset or fewer folds."
        )
    rng = np.random.default_rng([seed, SPLIT_STREAM])
    groups = [groups[g] for g in rng.permutation(len(groups))]
    fold_of_group = _assign_groups(np.array([len(g) for g in groups]), n_folds)
    ids = np.asarray(nodule_ids)
    folds = []
    for k in range(n_folds):
        test = {int(i) for g, f in zip(groups, fold_of_group, strict=True) if f == k for i in g}
        rest = [g for g, f in zip(groups, fold_of_group, strict=True) if f != k]
        val = _sample_val(rest, val_fraction, rng)
        train = {int(i) for g in rest for i in g} - val
        # Dataset order inside each list keeps the JSON diffable; training shuffles anyway.
        folds.append(
            {part: ids[sorted(members)].tolist() for part, members in (("train", train), ("val", val), ("test", test))}
        )
    return {
        "n_folds": n_folds,
        "seed": seed,
        "group_by_patient": group_by_patient,
        "val_fraction": val_fraction,
        "folds": folds,
    }


def write_splits(path: str | os.PathLike, splits: dict) -> None:
    write_text_atomic(path, json.dumps(splits, indent=1))


def read_splits(path: str | os.PathLike) -> dict:
    with open(path) as f:
        return json.load(f)


def fold_indices(splits: dict, fold: int, nodule_ids: Sequence[str] | np.ndarray) -> dict[str, np.ndarray]:
    """Dataset indices of fold ``fold``'s train / val / test nodules."""
    if not 0 <= fold < splits["n_folds"]:
        raise ValueError(f"Fold {fold} does not exist; the splits file has folds 0..{splits['n_folds'] - 1}.")
    position = {nid: i for i, nid in enumerate(nodule_ids)}
    out = {}
    for part, ids in splits["folds"][fold].items():
        missing = [nid for nid in ids if nid not in position]
        if missing:
            raise ValueError(
                f"Fold {fold} names {len(missing)} nodules absent from the dataset (e.g. {missing[0]!r}); "
                "the dataset changed after the split — re-run `dvc repro split`."
            )
        out[part] = np.array([position[nid] for nid in ids], dtype=np.int64)
    return out
