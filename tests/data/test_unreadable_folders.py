"""Unreadable patient, study and series folders: a skipped scan with its reason, never a traceback.

The suite runs as root, and root ignores permission bits (capabilities CAP_DAC_OVERRIDE and
CAP_DAC_READ_SEARCH). Rather than imitate the refusal function by function, each test takes
those two capabilities out of its thread's effective set while it reads the tree, so the
kernel refuses a ``chmod 000`` folder exactly as it does for any other user.
"""

import contextlib
import ctypes
import os
import shutil

import pytest

from nodule_net.config import ExtractConfig
from nodule_net.data.dicom import DicomError, find_series_dir, index_series, series_may_exist
from nodule_net.data.extract import extract
from nodule_net.data.lidc import scan_nodules

_CAPABILITY_VERSION_3 = 0x20080522  # linux/capability.h: 64-bit sets as two 32-bit words
_DAC_CAPABILITIES = (1 << 1) | (1 << 2)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _capabilities(call, data):
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, call)(ctypes.byref(_CapHeader(_CAPABILITY_VERSION_3, 0)), data) != 0:
        raise OSError(ctypes.get_errno(), f"{call} failed")


@contextlib.contextmanager
def permission_bits_apply():
    """Within the block, this thread's file access obeys permission bits, even as root."""
    data = (_CapData * 2)()
    _capabilities("capget", data)
    saved = data[0].effective
    data[0].effective &= ~_DAC_CAPABILITIES
    _capabilities("capset", data)
    try:
        yield
    finally:
        data[0].effective = saved
        _capabilities("capset", data)


@contextlib.contextmanager
def unreadable(folder):
    """``folder`` as ``chmod 000`` leaves it (restored afterwards, so that pytest can clean up)."""
    folder.chmod(0)
    try:
        with permission_bits_apply():
            yield folder
    finally:
        folder.chmod(0o755)


def test_the_simulation_is_the_kernels_refusal(tmp_path):
    (tmp_path / "f").mkdir()
    with unreadable(tmp_path / "f"), pytest.raises(PermissionError):
        os.listdir(tmp_path / "f")
    assert os.listdir(tmp_path / "f") == []  # and everything as before afterwards


@pytest.fixture
def root(tiny_phantom, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(tiny_phantom, root)
    return root


def _series(root, scan):
    return root / scan.patient_id / scan.study_uid / scan.series_uid


# --------------------------------------------------------------------------- nodule_net.data.dicom


def test_an_unreadable_series_folder_is_a_dicom_error_naming_it(root, tiny_scans):
    scan = tiny_scans[0]
    folder = _series(root, scan)
    with unreadable(folder), pytest.raises(DicomError) as err:
        index_series(folder, scan.series_uid)
    assert str(err.value).startswith(f"{folder}: cannot read this folder (Permission denied); ")
    assert "chmod -R u+rX" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("level", ["patient", "study"])
def test_an_unreadable_folder_on_the_way_to_the_series_is_named(root, tiny_scans, level):
    scan = tiny_scans[0]
    folder = root / scan.patient_id if level == "patient" else root / scan.patient_id / scan.study_uid
    ids = (scan.patient_id, scan.study_uid, scan.series_uid)
    with unreadable(folder):
        assert series_may_exist(root, *ids)  # only the scan's own work can tell: it is not "missing"
        with pytest.raises(DicomError, match=rf"^{folder}: cannot read this folder \(Permission denied\); "):
            find_series_dir(root, *ids)


def test_newer_layout_names_the_unreadable_folder_its_walk_could_not_enter(root, tiny_scans):
    scan = tiny_scans[0]
    patient = root / scan.patient_id
    study = patient / "01-01-2000-NA-30178"
    (patient / scan.study_uid).rename(study)
    (study / scan.series_uid).rename(study / "3000566.000000-03192")
    with unreadable(study):
        assert series_may_exist(root, scan.patient_id, scan.study_uid, scan.series_uid)
        # os.walk skips what it cannot list: today that reads as "no such series below it".
        with pytest.raises(DicomError, match=rf"^{study}: cannot read this folder \(Permission denied\); "):
            find_series_dir(root, scan.patient_id, scan.study_uid, scan.series_uid)


# --------------------------------------------------------------------------- extract


@pytest.mark.slow
@pytest.mark.parametrize("level", ["patient", "study", "series"])
def test_an_unreadable_folder_skips_its_scan_and_the_rest_extracts(root, tiny_scans, level):
    scan = tiny_scans[0]  # one nodule
    folder = {
        "patient": root / scan.patient_id,
        "study": root / scan.patient_id / scan.study_uid,
        "series": _series(root, scan),
    }[level]
    with unreadable(folder):
        data, stats = extract(root, tiny_scans, ExtractConfig(), source="lidc", progress=False)
    assert len(data) == 4 and scan.scan_id not in data.scan_id.tolist()
    assert stats["missing"] == {"patients": [], "scans": []}  # there, but unreadable: not "missing"
    (detail,) = stats["skipped"]["details"]
    assert detail["scan"] == f"{scan.patient_id}/s{scan.scan_id}"
    assert detail["nodules"] == len(scan_nodules(scan.scan_id)) == 1
    assert detail["reason"].startswith(f"{folder}: cannot read this folder (Permission denied); ")
    assert (stats["skipped"]["scans"], stats["skipped"]["nodules"], stats["skipped"]["files"]) == (1, 1, 0)


def test_an_unreadable_root_is_one_line_naming_it(root, tiny_scans):
    with unreadable(root), pytest.raises(DicomError) as err:
        extract(root, tiny_scans, ExtractConfig(), source="lidc", progress=False)
    assert str(err.value).startswith(f"DICOM root {root} cannot be read (Permission denied")
    assert "\n" not in str(err.value)
