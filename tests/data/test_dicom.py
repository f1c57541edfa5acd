"""Reading DICOM: damaged and stray files are set aside one by one; phantom files are valid CT Images."""

import re
import shutil
import subprocess

import numpy as np
import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian

from nodule_net.data.dicom import (
    HU_LIMITS,
    DicomError,
    check_slice,
    find_series_dir,
    index_series,
    read_hu,
    series_may_exist,
    slice_files,
)

_NO_TOOL = (
    "{tool} is not installed (Debian package {package}); `make install` installs it when run as root with apt-get"
)
needs_dciodvfy = pytest.mark.skipif(
    shutil.which("dciodvfy") is None, reason=_NO_TOOL.format(tool="dciodvfy", package="dicom3tools")
)
needs_dcmdump = pytest.mark.skipif(
    shutil.which("dcmdump") is None, reason=_NO_TOOL.format(tool="dcmdump", package="dcmtk")
)


@pytest.fixture
def series(tiny_phantom, tiny_scans, tmp_path):
    """(scan, folder) of a copy of LIDC-IDRI-0001's phantom series, free to damage."""
    scan = tiny_scans[0]
    folder = tmp_path / "series"
    shutil.copytree(tiny_phantom / scan.patient_id / scan.study_uid / scan.series_uid, folder)
    return scan, folder


def _truncate(path, keep):
    path.write_bytes(path.read_bytes()[:keep])


@pytest.mark.slow
def test_truncated_deflated_file_is_set_aside_with_its_reason(series):
    scan, folder = series
    files = sorted(folder.glob("*.dcm"))
    victim = files[1]
    ds = pydicom.dcmread(victim)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(victim, enforce_file_format=True)
    _truncate(victim, victim.stat().st_size // 2)  # cut inside the compressed stream: zlib.error
    index = index_series(folder, scan.series_uid)
    assert list(index.unreadable) == [victim]
    assert victim.name in index.unreadable[victim] and "re-download" in index.unreadable[victim]
    assert len(index.slices) == len(files) - 1  # every other slice still indexed
    # A nodule that needs that slice learns why it is missing.
    k = scan.file_names.index(victim.name)
    with pytest.raises(DicomError, match=rf"slice {k} .*cannot be read: .*{re.escape(victim.name)}"):
        slice_files(index, scan.slice_zvals, np.array([k]), "nodule X", scan.file_names)


def test_truncated_uncompressed_file_fails_to_decode_naming_it(series):
    scan, folder = series
    files = sorted(folder.glob("*.dcm"))
    in_pixels, in_header = files[0], files[2]
    _truncate(in_pixels, in_pixels.stat().st_size - 1000)  # the header is whole, the pixels are not
    _truncate(in_header, 400)
    index = index_series(folder, scan.series_uid)
    assert list(index.unreadable) == [in_header]
    assert len(index.slices) == len(files) - 1
    with pytest.raises(DicomError, match=rf"{re.escape(in_pixels.name)}: cannot decode pixel data"):
        read_hu(in_pixels)


def test_stray_non_dicom_file_is_set_aside_not_the_series(series):
    scan, folder = series
    (folder / "x.dcm").write_text("notes about this scan\n")
    index = index_series(folder, scan.series_uid)
    assert list(index.unreadable) == [folder / "x.dcm"]
    assert "not a DICOM file" in index.unreadable[folder / "x.dcm"]
    assert len(index.slices) == len(list(folder.glob("*.dcm"))) - 1


def test_a_series_with_no_readable_file_is_an_error(series):
    scan, folder = series
    for path in folder.glob("*.dcm"):
        path.write_text("not DICOM")
    with pytest.raises(DicomError, match="holds no readable slice"):
        index_series(folder, scan.series_uid)


def test_duplicate_positions_keep_the_lower_instance_number_and_are_recorded(series):
    scan, folder = series
    original = sorted(folder.glob("*.dcm"))[0]
    ds = pydicom.dcmread(original)
    ds.InstanceNumber = ds.InstanceNumber + 1000
    ds.save_as(folder / "zz_dup.dcm")
    index = index_series(folder, scan.series_uid)
    z = float(ds.ImagePositionPatient[2])
    assert index.slices[z].path == original
    assert index.duplicates == [{"z": z, "kept": original.name, "dropped": ["zz_dup.dcm"]}]


def test_series_may_exist_reads_listings_only(tiny_phantom, tiny_scans, tmp_path):
    scan = tiny_scans[0]
    ids = (scan.patient_id, scan.study_uid, scan.series_uid)
    assert series_may_exist(tiny_phantom, *ids)
    assert not series_may_exist(tmp_path, *ids)  # no patient folder
    (tmp_path / scan.patient_id / "1.2.3" / "4.5.6").mkdir(parents=True)
    assert not series_may_exist(tmp_path, *ids)  # UID-named layout without this study
    (tmp_path / scan.patient_id / scan.study_uid).mkdir()
    assert not series_may_exist(tmp_path, *ids)  # ... or without this series
    newer = tmp_path / "newer" / scan.patient_id / "01-01-2000-NA-30178" / "3000566.000000-03192"
    newer.mkdir(parents=True)
    assert series_may_exist(tmp_path / "newer", *ids)  # only headers can tell


def test_newer_tcia_layout_is_found_past_an_unreadable_first_file(series, tmp_path):
    scan, folder = series
    root = tmp_path / "root"
    nested = root / scan.patient_id / "01-01-2000-NA-30178" / "3000566.000000-03192"
    shutil.copytree(folder, nested)
    (nested / "000.dcm").write_text("not DICOM")  # sorts first
    assert find_series_dir(root, scan.patient_id, scan.study_uid, scan.series_uid) == nested


# ------------------------------------------------ decoded slices: their matrix, slope and HU values


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf, 3e38, HU_LIMITS[0] - 1, HU_LIMITS[1] + 1])
def test_check_slice_refuses_values_no_ct_holds(value):
    hu = np.full((4, 4), -1000.0, np.float32)
    hu[1, 2] = value
    with pytest.raises(DicomError, match=r"^x\.dcm: .*; re-download it or remove it\.$"):
        check_slice(hu, "x.dcm")


@pytest.mark.parametrize("value", [-3024.0, -2048.0, 3071.0, 31743.0, *HU_LIMITS])
def test_check_slice_accepts_what_real_ct_holds(value):
    """Padding outside the reconstruction circle (-3024, -2048 HU), a 12-bit scale's top, extended-scale metal."""
    hu = np.full((4, 4), -1000.0, np.float32)
    hu[0, 0] = value
    check_slice(hu, "x.dcm", shape=(4, 4))


def test_check_slice_refuses_a_matrix_the_annotations_do_not_assume():
    with pytest.raises(
        DicomError,
        match=r"^x\.dcm: a 256 × 256 slice, but the annotations and the crop assume "
        r"512 × 512; ",
    ):
        check_slice(np.zeros((256, 256), np.float32), "x.dcm", shape=(512, 512))
    with pytest.raises(DicomError, match=r"^x\.dcm: 3 frames of 8 × 8, not one slice; "):
        check_slice(np.zeros((3, 8, 8), np.float32), "x.dcm")
    check_slice(np.zeros((256, 256), np.float32), "x.dcm")  # no matrix asked for: any one


def _first_slice(folder):
    return sorted(folder.glob("*.dcm"))[0]


@pytest.mark.parametrize(
    "slope, message",
    [
        (0, r"RescaleSlope 0 makes every pixel -1024 HU; "),  # every pixel would be the intercept
        ("1e+35", r"holds \d\.\d+e\+3\d HU, outside the "),  # stored values up to a few thousand: about 3e38 HU
    ],
)
def test_read_hu_refuses_a_slope_that_gives_no_ct_slice(series, slope, message):
    _, folder = series
    path = _first_slice(folder)
    ds = pydicom.dcmread(path)
    ds.RescaleSlope = slope
    ds.save_as(path)
    with pytest.raises(DicomError, match=rf"^{re.escape(str(path))}: {message}"):
        read_hu(path)


def test_read_hu_checks_the_matrix_it_is_given(series):
    _, folder = series
    path = _first_slice(folder)
    ds = pydicom.dcmread(path)
    ds.Rows = ds.Columns = 256
    ds.PixelData = np.full((256, 256), 1024, np.int16).tobytes()
    ds.save_as(path)
    assert read_hu(path).shape == (256, 256)  # as predict reads its own series
    with pytest.raises(DicomError, match=r"a 256 × 256 slice, but the annotations and the crop assume 512 × 512"):
        read_hu(path, shape=(512, 512))


# ------------------------------------------------ the phantom's files, as other toolkits see them


def _one_series(tiny_phantom, tiny_scans):
    scan = tiny_scans[0]
    return sorted((tiny_phantom / scan.patient_id / scan.study_uid / scan.series_uid).glob("*.dcm"))


@needs_dciodvfy
def test_phantom_files_are_valid_ct_images_for_dciodvfy(tiny_phantom, tiny_scans):
    files = _one_series(tiny_phantom, tiny_scans)
    assert len(files) >= 8
    for path in files:
        out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        report = out.stdout + out.stderr
        assert "CTImage" in report, report  # recognised as the CT Image IOD
        errors = [line for line in report.splitlines() if line.startswith("Error")]
        assert errors == [], f"{path.name}: {errors}"


@needs_dcmdump
def test_dcmtk_reads_phantom_files_and_their_pixels(tiny_phantom, tiny_scans, tmp_path):
    path = _one_series(tiny_phantom, tiny_scans)[0]
    # +W writes the pixel data DCMTK decoded to a raw file: it must be the stored values.
    out = subprocess.run(["dcmdump", "+W", str(tmp_path), str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "Little Endian Explicit" in out.stdout and "CTImageStorage" in out.stdout
    (raw,) = tmp_path.glob("*.raw")
    stored = np.frombuffer(raw.read_bytes(), dtype="<i2").reshape(512, 512)
    np.testing.assert_array_equal(stored - 1024, read_hu(path))
