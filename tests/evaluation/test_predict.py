"""`nodule-net predict` equals `evaluate` on phantom nodules; its geometry; each bad input."""

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
from nodule_net.data.split import fold_indices, kfold_split
from nodule_net.evaluation.evaluate import evaluate_folds
from nodule_net.evaluation.predict import box_from_centre
from nodule_net.io.checkpoint import extract_record, model_path
from nodule_net.io.store import write_dataset
from nodule_net.training.fit import fit, save_model
from synthetic_nodules import TINY

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tiny_extracted, tmp_path_factory):
    """Two tiny fold models on the tiny phantom's 5 nodules and the evaluate stage's predictions."""
    data = tiny_extracted[0]
    models = tmp_path_factory.mktemp("models")
    splits = kfold_split(data.nodule_id, data.patient_id, n_folds=2, seed=0, val_fraction=0.2)
    for fold in range(2):
        config = ModelConfig(variant="full", **TINY)
        result = fit(
            data, fold_indices(splits, fold, data.nodule_id), config, TrainConfig(epochs=1), fold, progress=False
        )
        save_model(model_path(models, fold), result, config, fold, extract_record(data.attrs))
    _, predictions = evaluate_folds(data, splits, {k: model_path(models, k) for k in range(2)}, torch.device("cpu"))
    write_dataset(models / "nodules.h5", data)
    return data, models, predictions.set_index("nodule_id")


def _predict(capsys, *args: str) -> dict:
    main(["predict", *args, "--json", "--params", "no-such-params.yaml"])  # ExtractConfig defaults, as the fixture
    return json.loads(capsys.readouterr().out)


def _assert_equals_evaluate(result: dict, row) -> None:
    fold = str(int(row["fold"]))
    for a in ATTRIBUTES:
        assert result["scores"][a]["folds"][fold] == pytest.approx(row[f"pred_{a}"], abs=2e-5)
    expected = [float(w) for w in row["sam_weights"].split(";")]
    np.testing.assert_allclose(result["sam_weights"]["folds"][fold], expected, atol=2e-5)
    assert len(result["sam_weights"]["mean"]) == int(row["n_slices"])


def test_predict_by_nodule_id_equals_evaluate(trained, capsys) -> None:
    data, models, predictions = trained
    h5 = models / "nodules.h5"
    for nodule_id in data.nodule_id:
        result = _predict(capsys, "--dataset", str(h5), "--nodule-id", nodule_id, "--models", str(models))
        _assert_equals_evaluate(result, predictions.loc[nodule_id])
        assert result["models"]["folds"] == [0, 1]
        spread = result["scores"]["texture"]
        assert spread["min"] <= spread["mean"] <= spread["max"]
        assert spread["std"] == pytest.approx(np.std(list(spread["folds"].values())))
        assert len(result["caam"]["top"]) == 5 and result["truth"]["texture"] == pytest.approx(
            data.ratings[list(data.nodule_id).index(nodule_id), ATTRIBUTES.index("texture")]
        )


def test_predict_from_the_series_and_stored_box_equals_evaluate(trained, tiny_phantom, tiny_scans, capsys) -> None:
    data, models, predictions = trained
    for n, nodule_id in enumerate(data.nodule_id):
        scan = next(s for s in tiny_scans if s.scan_id == data.scan_id[n])
        folder = series_dir(tiny_phantom, scan)
        series = read_series(folder)
        # The phantom writes only nodule slices ± 1: map pylidc's slice indices to the folder's.
        stored = data.slice_index[data.offsets[n] : data.offsets[n + 1]]
        ks = [int(np.argmin(np.abs(series.z - scan.slice_zvals[k]))) for k in stored]
        i0, i1, j0, j1 = (int(v) for v in data.bbox[n][:4])
        box = [i0, i1, j0, j1, min(ks), max(ks) + 1]
        result = _predict(
            capsys, str(folder), "--box", *map(str, box), "--slices", *map(str, ks), "--models", str(models)
        )
        _assert_equals_evaluate(result, predictions.loc[nodule_id])
        assert result["input"]["z_mm"] == pytest.approx(list(scan.slice_zvals[stored]), abs=0.01)


def test_human_readable_output(trained, capsys) -> None:
    data, models, _ = trained
    h5 = models / "nodules.h5"
    main(["predict", "--dataset", str(h5), "--nodule-id", data.nodule_id[0], "--models", str(models)])
    out = capsys.readouterr().out
    assert "2 folds (0, 1)" in out and "texture (Tex)" in out and "SAM weight per slice" in out
    assert "strongest CAAM relations" in out


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
    """(series folder, --box, --slices) of nodule 0, as the test above builds them."""
    scan = next(s for s in tiny_scans if s.scan_id == data.scan_id[0])
    folder = series_dir(tiny_phantom, scan)
    series = read_series(folder)
    stored = data.slice_index[data.offsets[0] : data.offsets[1]]
    ks = [int(np.argmin(np.abs(series.z - scan.slice_zvals[k]))) for k in stored]
    i0, i1, j0, j1 = (int(v) for v in data.bbox[0][:4])
    return str(folder), [str(v) for v in (i0, i1, j0, j1, min(ks), max(ks) + 1)], [str(k) for k in ks]


def test_predict_crops_as_the_models_were_trained_and_names_a_params_file_that_differs(
    trained, tiny_phantom, tiny_scans, tmp_path, capsys, caplog
) -> None:
    data, models, predictions = trained
    saved = torch.load(model_path(models, 0), weights_only=True)
    assert saved["extract"] == {"clevel": 0.5, "extent_fraction": 0.8, "image_side": 64}  # the dataset's
    folder, box, ks = _first_nodule_box(data, tiny_phantom, tiny_scans)
    params = _params_file(tmp_path, image_side=32)
    with caplog.at_level(logging.WARNING):
        main(["predict", folder, "--box", *box, "--slices", *ks, "--models", str(models), "--params", params, "--json"])
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
    (line,) = [r.getMessage() for r in caplog.records]
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
    err = _run_error(capsys, folder, "--box", "-5000", "10", "-5000", "10", "1", "3", "--models", str(models))
    assert "box [-5000, 10, -5000, 10, 1, 3]" in err and "mostly outside" in err and "512 × 512" in err
    huge = _run_error(
        capsys, folder, "--centre-voxel", "256", "256", "1", "--diameter-mm", "5000", "--models", str(models)
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
            "1",
            "2",
            "--models",
            str(models),
            "--json",
            "--params",
            "no-such-params.yaml",
        ]
    )
    assert json.loads(capsys.readouterr().out)["input"]["box"] == [0, 4, 250, 270, 1, 2]


@pytest.mark.parametrize("name", ["tpu", "cuda:x", "cuda:7", "cuda"])
def test_a_bad_device_names_the_flag(trained, tiny_phantom, tiny_scans, capsys, monkeypatch, name) -> None:
    _, models, _ = trained
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on a machine with a GPU
    folder = str(series_dir(tiny_phantom, tiny_scans[0]))
    err = _run_error(
        capsys, folder, "--box", "250", "270", "250", "270", "0", "2", "--models", str(models), "--device", name
    )
    assert f"--device {name}" in err and "train.device" not in err
