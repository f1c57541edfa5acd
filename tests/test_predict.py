"""`nodule-net predict` equals `evaluate` on phantom nodules; its geometry; each bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pydicom
import pytest
import torch
from test_train import TINY

from nodule_net.attributes import ATTRIBUTES
from nodule_net.checkpoint import model_path
from nodule_net.cli import main
from nodule_net.evaluate import evaluate_folds
from nodule_net.model import ModelConfig
from nodule_net.phantom import series_dir
from nodule_net.predict import Series, box_from_centre, read_series, voxel_from_mm
from nodule_net.split import fold_indices, kfold_split
from nodule_net.store import write_dataset
from nodule_net.train import TrainConfig, fit, save_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tiny_extracted, tmp_path_factory):
    """Two tiny fold models on the tiny phantom's 5 nodules and the evaluate stage's predictions."""
    data = tiny_extracted[0]
    models = tmp_path_factory.mktemp("models")
    splits = kfold_split(data.nodule_id, data.patient_id, n_folds=2, seed=0, val_fraction=0.2)
    for fold in range(2):
        config = ModelConfig(variant="full", **TINY)
        result = fit(data, fold_indices(splits, fold, data.nodule_id), config, TrainConfig(epochs=1), fold,
                     progress=False)
        save_model(model_path(models, fold), result, config, fold)
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
            data.ratings[list(data.nodule_id).index(nodule_id), ATTRIBUTES.index("texture")])


def test_predict_from_the_series_and_stored_box_equals_evaluate(trained, tiny_phantom, tiny_scans, capsys) -> None:
    data, models, predictions = trained
    for n, nodule_id in enumerate(data.nodule_id):
        scan = next(s for s in tiny_scans if s.scan_id == data.scan_id[n])
        folder = series_dir(tiny_phantom, scan)
        series = read_series(folder)
        # The phantom writes only nodule slices ± 1: map pylidc's slice indices to the folder's.
        stored = data.slice_index[data.offsets[n]:data.offsets[n + 1]]
        ks = [int(np.argmin(np.abs(series.z - scan.slice_zvals[k]))) for k in stored]
        i0, i1, j0, j1 = (int(v) for v in data.bbox[n][:4])
        box = [i0, i1, j0, j1, min(ks), max(ks) + 1]
        result = _predict(capsys, str(folder), "--box", *map(str, box), "--slices", *map(str, ks),
                          "--models", str(models))
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
    return Series(index=None, uid="1.2", z=np.arange(10) * 2.5 - 100, shape=(512, 512), spacing=(0.7, 0.7),
                  origin=np.array([-179.2, -179.2, -100.0]), row_direction=np.array([1.0, 0, 0]),
                  column_direction=np.array([0, 1.0, 0]))


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
    outside = _run_error(capsys, str(first), "--centre-voxel", "600", "10", "0", "--diameter-mm", "5",
                         "--models", str(models))
    assert "outside the volume" in outside
    assert "outside the series" in _run_error(capsys, str(first), "--centre-mm", "0", "0", "9999",
                                              "--diameter-mm", "5", "--models", str(models))
    assert "hold no slice" in _run_error(capsys, str(first), "--box", "250", "270", "250", "270", "1", "1",
                                         "--models", str(models))
    assert "outside the volume" in _run_error(capsys, str(first), "--box", "600", "620", "10", "20", "0", "1",
                                              "--models", str(models))
    assert "exactly one location" in _run_error(capsys, str(first), "--models", str(models))
    assert "no nodule 'nope'" in _run_error(capsys, "--dataset", str(models / "nodules.h5"), "--nodule-id",
                                            "nope", "--models", str(models))
