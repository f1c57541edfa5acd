"""Cross-validation folds: disjoint, covering, patient-grouped on request, seeded."""

from __future__ import annotations

import numpy as np
import pytest

from nodule_net.data.split import fold_indices, kfold_split, read_splits, write_splits


def ids(n_nodules: int, n_patients: int, seed: int = 0) -> tuple[list[str], list[str]]:
    patient = np.random.default_rng(seed).integers(0, n_patients, size=n_nodules)
    return [f"P{p:03d}/s1/n{i}" for i, p in enumerate(patient)], [f"P{p:03d}" for p in patient]


def patients_of(nodules: list[str]) -> set[str]:
    return {n.split("/")[0] for n in nodules}


@pytest.mark.parametrize("group_by_patient", [False, True])
def test_folds_are_disjoint_and_cover_every_nodule(group_by_patient: bool) -> None:
    nodules, patients = ids(103, 30)
    splits = kfold_split(nodules, patients, n_folds=5, seed=0, group_by_patient=group_by_patient, val_fraction=0.1)
    tests = [set(f["test"]) for f in splits["folds"]]
    assert sorted(n for t in tests for n in t) == sorted(nodules)  # each nodule tested exactly once
    for fold in splits["folds"]:
        train, val, test = set(fold["train"]), set(fold["val"]), set(fold["test"])
        assert not (train & val or train & test or val & test)
        assert train | val | test == set(nodules)
        assert len(val) >= 1


def test_paper_split_has_even_fold_sizes_and_a_tenth_for_validation() -> None:
    nodules, patients = ids(103, 30)
    splits = kfold_split(nodules, patients, n_folds=5, seed=3, val_fraction=0.1)
    assert sorted(len(f["test"]) for f in splits["folds"]) == [20, 20, 21, 21, 21]
    for fold in splits["folds"]:
        assert len(fold["val"]) == round(0.1 * (103 - len(fold["test"])))


def test_group_by_patient_keeps_each_patient_in_one_part() -> None:
    nodules, patients = ids(120, 25)
    splits = kfold_split(nodules, patients, n_folds=5, seed=0, group_by_patient=True, val_fraction=0.2)
    for fold in splits["folds"]:
        train, val, test = (patients_of(fold[p]) for p in ("train", "val", "test"))
        assert not (train & test or val & test or train & val)


def test_paper_split_does_mix_patients_so_the_grouping_test_can_fail() -> None:
    nodules, patients = ids(120, 25)
    splits = kfold_split(nodules, patients, n_folds=5, seed=0, group_by_patient=False)
    assert any(patients_of(f["train"]) & patients_of(f["test"]) for f in splits["folds"])


def test_split_is_seeded() -> None:
    nodules, patients = ids(60, 20)
    a = kfold_split(nodules, patients, n_folds=5, seed=7)
    b = kfold_split(nodules, patients, n_folds=5, seed=7)
    c = kfold_split(nodules, patients, n_folds=5, seed=8)
    assert a == b
    assert a["folds"] != c["folds"]


def test_roundtrip_and_fold_indices(tmp_path) -> None:
    nodules, patients = ids(30, 10)
    splits = kfold_split(nodules, patients, n_folds=3, seed=0)
    write_splits(tmp_path / "splits.json", splits)
    assert read_splits(tmp_path / "splits.json") == splits
    parts = fold_indices(splits, 1, nodules)
    assert [nodules[i] for i in parts["test"]] == splits["folds"][1]["test"]
    with pytest.raises(ValueError, match="re-run `dvc repro split`"):
        fold_indices(splits, 1, nodules[:-5])
    with pytest.raises(ValueError, match="Fold 3 does not exist"):
        fold_indices(splits, 3, nodules)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_folds": 1}, "at least 2 folds"),
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"n_folds": 40, "group_by_patient": True}, r"Only \d+ patients for 40 folds"),
    ],
)
def test_bad_arguments_raise_sentences(kwargs: dict, match: str) -> None:
    nodules, patients = ids(30, 10)
    with pytest.raises(ValueError, match=match):
        kfold_split(nodules, patients, **({"n_folds": 5, "seed": 0} | kwargs))
