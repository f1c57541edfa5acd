"""Phantom → extract round trip, the HDF5 contract, and bad input."""

import json
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import pydicom
import pytest
import yaml
from pydicom.uid import DeflatedExplicitVRLittleEndian

from nodule_net.attributes import PYLIDC_FIELDS
from nodule_net.config import ExtractConfig
from nodule_net.data.dicom import DicomError, read_hu
from nodule_net.data.extract import extract
from nodule_net.data.lidc import import_pylidc, scan_nodules
from nodule_net.data.preprocess import nodule_patch
from nodule_net.io.store import SCHEMA_VERSION, read_dataset, write_dataset


@pytest.mark.slow
def test_round_trip_gives_every_nodule_with_its_slices(tiny_extracted, tiny_scans):
    data, stats = tiny_extracted
    expected = [n for s in tiny_scans for n in scan_nodules(s.scan_id)]
    assert list(data.nodule_id) == [n.nodule_id for n in expected]
    assert len(data) == 5 and stats["nodules"] == 5 and stats["skipped"]["nodules"] == 0
    for n, nodule in enumerate(expected):
        np.testing.assert_array_equal(data.slice_index[data.offsets[n] : data.offsets[n + 1]], nodule.positive_slices)
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
        for name, shape in [
            ("n_readers", (n,)),
            ("nodule_id", (n,)),
            ("patient_id", (n,)),
            ("scan_id", (n,)),
            ("spacing_mm", (n, 3)),
            ("bbox", (n, 6)),
            ("slice_index", (s,)),
        ]:
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


def test_duplicate_z_keeps_lower_instance_number_and_is_counted(tiny_phantom, tiny_scans, tmp_path, caplog):
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
    data, stats = extract(root, [scan], ExtractConfig(), source="phantom", progress=False)
    assert data.slices(0).max() < 2000
    z = float(scan.slice_zvals[k])
    assert stats["duplicate_slice_positions"] == {
        "count": 1,
        "scans": {f"{scan.patient_id}/s{scan.scan_id}": [{"z": z, "kept": original.name, "dropped": ["dup_high.dcm"]}]},
    }
    assert any("more than one slice" in r.message and "dup_high.dcm" in r.message for r in caplog.records)
    # ... and the same slice with a lower InstanceNumber wins.
    ds.InstanceNumber = 0
    ds.save_as(folder / "dup_low.dcm")
    data, stats = extract(root, [scan], ExtractConfig(), source="phantom", progress=False)
    assert data.slices(0)[0].min() > 1900
    (entry,) = stats["duplicate_slice_positions"]["scans"][f"{scan.patient_id}/s{scan.scan_id}"]
    assert entry["kept"] == "dup_low.dcm" and entry["dropped"] == [original.name, "dup_high.dcm"]


def test_missing_root_is_fatal_and_named(tiny_scans, tmp_path):
    with pytest.raises(DicomError, match=str(tmp_path / "nowhere")):
        extract(tmp_path / "nowhere", tiny_scans, ExtractConfig(), source="lidc", progress=False)


def _copy(tiny_phantom, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(tiny_phantom, root)
    return root


@pytest.mark.slow
def test_root_with_some_patients_lists_the_missing_and_extracts_the_rest(
    tiny_phantom, tiny_scans, tmp_path, monkeypatch, caplog
):
    import nodule_net.data.extract as extract_module
    from nodule_net.data.lidc import resolve_patients, scans_for_patients

    requested = scans_for_patients(resolve_patients(12), "first")  # the tiny phantom holds 2 of them
    clustered = []  # pylidc's clustering is the slow part of a scan: never for a missing one
    real = extract_module.scan_nodules
    monkeypatch.setattr(
        extract_module, "scan_nodules", lambda scan_id, **kw: clustered.append(scan_id) or real(scan_id, **kw)
    )
    data, stats = extract(tiny_phantom, requested, ExtractConfig(), source="lidc", progress=False)
    assert len(data) == 5 and sorted(clustered) == [s.scan_id for s in tiny_scans]
    present = {s.patient_id for s in tiny_scans}
    assert stats["missing"] == {
        "patients": sorted({s.patient_id for s in requested} - present),
        "scans": [f"{s.patient_id}/s{s.scan_id}" for s in requested if s.patient_id not in present],
    }
    assert len(stats["missing"]["patients"]) == 10 and stats["skipped"]["details"] == []
    # One line says it all; no warning per missing scan.
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"2 of 12 patients and 2 of 12 scans found under {tiny_phantom}; the 10 missing patients and 10 missing "
        "scans are listed in the dataset statistics (missing)."
    ]


def test_missing_series_of_a_present_patient_is_listed(tiny_phantom, tiny_scans, tmp_path):
    root = _copy(tiny_phantom, tmp_path)
    first = tiny_scans[0]
    shutil.rmtree(root / first.patient_id / first.study_uid)
    (root / first.patient_id / "1.2.3" / "4.5.6").mkdir(parents=True)  # another study of theirs
    data, stats = extract(root, tiny_scans, ExtractConfig(), source="lidc", progress=False)
    assert len(data) == 4  # LIDC-IDRI-0003's four nodules
    assert stats["missing"] == {"patients": [], "scans": [f"{first.patient_id}/s{first.scan_id}"]}
    assert stats["skipped"]["scans"] == 0


def test_root_without_any_requested_patient_is_fatal_and_named(tiny_scans, tmp_path):
    (tmp_path / "LIDC-IDRI-0999").mkdir()
    with pytest.raises(DicomError, match=rf"None of the 2 requested scans .* under {re.escape(str(tmp_path))};"):
        extract(tmp_path, tiny_scans, ExtractConfig(), source="lidc", progress=False)


def _series_file(root, scan, k):
    return root / scan.patient_id / scan.study_uid / scan.series_uid / scan.file_names[k]


@pytest.mark.slow
def test_corrupt_dcm_skips_the_nodules_that_need_it_naming_the_file(tiny_phantom, tiny_scans, tmp_path):
    root = _copy(tiny_phantom, tmp_path)
    scan = tiny_scans[1]
    nodules = scan_nodules(scan.scan_id)
    k = int(nodules[0].positive_slices[0])
    users = [n.nodule_id for n in nodules if k in n.positive_slices]
    bad = _series_file(root, scan, k)
    bad.write_bytes(b"not a dicom file at all")
    data, stats = extract(root, tiny_scans, ExtractConfig(), source="lidc", progress=False)
    assert len(data) == 5 - len(users)  # the scan's other nodules are still extracted
    assert stats["skipped"]["files"] == 1 and stats["skipped"]["nodules"] == len(users)
    details = stats["skipped"]["details"]
    assert {"file": str(bad), "reason": details[0]["reason"]} in details
    for d in details:
        assert bad.name in d["reason"] and "re-download" in d["reason"]


@pytest.mark.slow
def test_truncated_deflated_dcm_is_a_skip_not_a_crash(tiny_phantom, tiny_scans, tmp_path):
    root = _copy(tiny_phantom, tmp_path)
    scan = tiny_scans[0]  # one nodule
    k = int(scan_nodules(scan.scan_id)[0].positive_slices[-1])
    bad = _series_file(root, scan, k)
    ds = pydicom.dcmread(bad)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(bad, enforce_file_format=True)
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])  # zlib.error on reading
    data, stats = extract(root, tiny_scans, ExtractConfig(), source="lidc", progress=False)
    assert len(data) == 4 and scan.scan_id not in data.scan_id.tolist()
    skipped = stats["skipped"]
    assert (skipped["files"], skipped["nodules"], skipped["scans"]) == (1, 1, 0)
    file_skip, nodule_skip = skipped["details"]
    assert file_skip["file"] == str(bad) and "error" in file_skip["reason"]
    assert nodule_skip["nodule"] == f"{scan.patient_id}/s{scan.scan_id}/n0"
    assert f"slice {k}" in nodule_skip["reason"] and "cannot be read" in nodule_skip["reason"]


@pytest.mark.slow
def test_truncated_uncompressed_dcm_skips_its_nodule(tiny_phantom, tiny_scans, tmp_path):
    root = _copy(tiny_phantom, tmp_path)
    scan = tiny_scans[0]
    k = int(scan_nodules(scan.scan_id)[0].positive_slices[-1])
    bad = _series_file(root, scan, k)
    bad.write_bytes(bad.read_bytes()[:-5000])  # the header is whole, the pixel data is not
    data, stats = extract(root, tiny_scans, ExtractConfig(), source="lidc", progress=False)
    assert len(data) == 4 and scan.scan_id not in data.scan_id.tolist()
    (detail,) = stats["skipped"]["details"]
    assert detail["nodule"] == f"{scan.patient_id}/s{scan.scan_id}/n0"
    assert f"{bad}: cannot decode pixel data" in detail["reason"]


def test_stray_non_dicom_file_is_a_skipped_file_and_the_scan_extracts(tiny_phantom, tiny_scans, tmp_path):
    root = _copy(tiny_phantom, tmp_path)
    scan = tiny_scans[1]
    stray = root / scan.patient_id / scan.study_uid / scan.series_uid / "x.dcm"
    stray.write_text("reader notes\n")
    data, stats = extract(root, tiny_scans, ExtractConfig(), source="lidc", progress=False)
    assert len(data) == 5
    assert stats["skipped"]["files"] == 1 and stats["skipped"]["nodules"] == 0 and stats["skipped"]["scans"] == 0
    (detail,) = stats["skipped"]["details"]
    assert detail["file"] == str(stray) and "not a DICOM file" in detail["reason"]


def test_newer_tcia_layout_extracts(tiny_phantom, tiny_scans, tmp_path):
    root = _copy(tiny_phantom, tmp_path)
    for scan in tiny_scans:  # TCIA's newer folder names: dates and descriptions, not UIDs
        patient = root / scan.patient_id
        study = patient / "01-01-2000-NA-30178"
        (patient / scan.study_uid).rename(study)
        (study / scan.series_uid).rename(study / "3000566.000000-03192")
    data, stats = extract(root, tiny_scans, ExtractConfig(), source="lidc", progress=False)
    assert len(data) == 5 and stats["missing"] == {"patients": [], "scans": []}


@pytest.mark.slow
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


@pytest.mark.integration
def test_stage_script_reports_user_errors_in_one_line(tmp_path):
    values = yaml.safe_load(Path("params.yaml").read_text())  # the project's, with one mistake
    values["data"].update(source="lidc", lidc_root=None)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(values))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.extract",
            "--phantom-root",
            str(tmp_path),
            "--out",
            str(tmp_path / "n.h5"),
            "--stats",
            str(tmp_path / "s.json"),
            "--params",
            str(params),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("error: ") and "data.lidc_root" in line
    assert not (tmp_path / "n.h5").exists()


def test_pad_reader_ratings_fills_absent_readers():
    from nodule_net.data.extract import pad_reader_ratings

    small = pad_reader_ratings([np.full((1, 9), 3.0), np.full((2, 9), 4.0)])
    assert small.shape == (2, 4, 9)  # LIDC's four reader slots at least
    assert (small[0, 0] == 3).all() and np.isnan(small[0, 1:]).all()
    assert (small[1, :2] == 4).all() and np.isnan(small[1, 2:]).all()
    assert pad_reader_ratings([np.ones((6, 9))]).shape == (1, 6, 9)  # a cluster of 6 annotations


# ------------------------------------------------ odd slices: each decoded slice is checked


def _another_matrix(ds):
    ds.Rows = ds.Columns = 256
    ds.PixelData = np.full((256, 256), 1024 + 40, np.int16).tobytes()


def _zero_slope(ds):
    ds.RescaleSlope = 0


def _garbage_slope(ds):
    ds.RescaleSlope = "1e+35"


@pytest.mark.slow
@pytest.mark.parametrize(
    "damage, reason",
    [
        (_another_matrix, "a 256 × 256 slice, but the annotations and the crop assume 512 × 512"),
        (_zero_slope, "RescaleSlope 0 makes every pixel -1024 HU"),
        (_garbage_slope, "HU, outside the"),
    ],
)
def test_an_odd_slice_skips_its_nodule_naming_the_file_and_the_value(
    tiny_phantom, tiny_scans, tmp_path, damage, reason
):
    root = _copy(tiny_phantom, tmp_path)
    scan = tiny_scans[0]  # one nodule
    k = int(scan_nodules(scan.scan_id)[0].positive_slices[2])
    bad = _series_file(root, scan, k)
    ds = pydicom.dcmread(bad)
    damage(ds)
    ds.save_as(bad)
    data, stats = extract(root, tiny_scans, ExtractConfig(), source="lidc", progress=False)
    assert len(data) == 4 and scan.scan_id not in data.scan_id.tolist()
    (detail,) = stats["skipped"]["details"]
    assert detail["nodule"] == f"{scan.patient_id}/s{scan.scan_id}/n0"
    assert detail["reason"].startswith(f"{bad}: ") and reason in detail["reason"]
    assert detail["reason"].endswith("re-download it or remove it.")
    assert (stats["skipped"]["nodules"], stats["skipped"]["files"], stats["skipped"]["scans"]) == (1, 0, 0)


# ------------------------------------------------ a reader's flawed rating (NaN in reader_ratings, from lidc.py)


def _flawed_scan_nodules(monkeypatch, attribute, readers):
    """``scan_nodules`` whose LIDC-IDRI-0001 nodule has ``attribute`` flawed (NaN) for those readers."""
    import nodule_net.data.extract as extract_module
    from nodule_net.attributes import attribute_index

    real = extract_module.scan_nodules
    a = attribute_index(attribute)

    def flawed(scan_id, **kw):
        nodules = real(scan_id, **kw)
        if nodules[0].patient_id == "LIDC-IDRI-0001":
            nodule = nodules[0]
            nodule.reader_ratings = nodule.reader_ratings.copy()
            nodule.reader_ratings[readers, a] = np.nan
            nodule.rating_flaws = [
                {"nodule": nodule.nodule_id, "annotation": 3761 + r, "attribute": attribute, "value": 7.0}
                for r in readers
            ]
        return nodules

    monkeypatch.setattr(extract_module, "scan_nodules", flawed)


@pytest.mark.slow
def test_a_flawed_rating_is_logged_listed_and_left_out_of_the_mean(
    tiny_phantom, tiny_scans, tiny_extracted, monkeypatch, caplog
):
    scan = tiny_scans[0]
    (nodule,) = scan_nodules(scan.scan_id)
    _flawed_scan_nodules(monkeypatch, "subtlety", [0])
    data, stats = extract(tiny_phantom, tiny_scans, ExtractConfig(), source="phantom", progress=False)
    flaw = {"nodule": nodule.nodule_id, "annotation": 3761, "attribute": "subtlety", "value": 7.0}
    assert stats["rating_flaws"] == {"count": 1, "details": [flaw]}
    assert stats["skipped"]["details"] == []
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"{nodule.nodule_id}: annotation 3761 rates subtlety 7, outside 1–5; treated as missing, the mean is over "
        "the other readers"
    ]
    n = list(data.nodule_id).index(nodule.nodule_id)
    assert data.ratings[n, 0] == pytest.approx(nodule.reader_ratings[1:, 0].mean())
    assert data.n_readers[n] == 4 and np.isnan(data.reader_ratings[n, 0, 0])
    np.testing.assert_array_equal(data.ratings[n, 1:], tiny_extracted[0].ratings[n, 1:])  # other attributes as before
    np.testing.assert_array_equal(data.images, tiny_extracted[0].images)


@pytest.mark.slow
def test_a_nodule_without_any_valid_rating_of_an_attribute_is_skipped(tiny_phantom, tiny_scans, monkeypatch):
    scan = tiny_scans[0]
    (nodule,) = scan_nodules(scan.scan_id)
    _flawed_scan_nodules(monkeypatch, "internal_structure", [0, 1, 2, 3])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "Mean of empty slice" from a nodule that has none
        data, stats = extract(tiny_phantom, tiny_scans, ExtractConfig(), source="phantom", progress=False)
    assert len(data) == 4 and nodule.nodule_id not in data.nodule_id.tolist()
    assert stats["rating_flaws"]["count"] == 4
    assert stats["skipped"]["details"] == [
        {
            "nodule": nodule.nodule_id,
            "reason": (
                f"{nodule.nodule_id}: no valid internal_structure rating among its 4 readers (annotations 3761, "
                "3762, 3763, 3764 rate it outside 1–4 or not at all); left out of the dataset, as its mean would be "
                "undefined."
            ),
        }
    ]
    assert stats["skipped"]["nodules"] == 1
