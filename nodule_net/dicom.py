"""Reading an LIDC-IDRI DICOM tree: find a series, index its headers by z, decode HU slices.

Works on a TCIA download in either layout pylidc knows —
``ROOT/LIDC-IDRI-dddd/<StudyUID>/<SeriesUID>/*.dcm`` (older) or any folder hierarchy
below ``ROOT/LIDC-IDRI-dddd`` (newer) — and on our phantom, which uses the older one.
Headers are read without pixels; pixels are decoded only for slices a nodule uses.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

# z positions in LIDC are given to 0.01 mm or better; pylidc stores them as floats.
Z_TOLERANCE_MM = 1e-2

_HEADER_TAGS = ["SeriesInstanceUID", "StudyInstanceUID", "ImagePositionPatient", "InstanceNumber"]


class DicomError(ValueError):
    """A problem with the DICOM data of one scan; the message names the path and what to do."""


@dataclass(frozen=True)
class SliceRef:
    path: Path
    z: float
    instance_number: int


def _dicom_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() == ".dcm" and not p.name.startswith("."))


def _read_header(path: Path) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError) as err:
        raise DicomError(f"{path}: not a readable DICOM file ({err}); re-download it or remove it.") from err


def find_series_dir(root: str | os.PathLike, patient_id: str, study_uid: str, series_uid: str) -> Path:
    """The folder that holds one series' files, searched under ``root/patient_id``."""
    root = Path(root)
    if not root.is_dir():
        raise DicomError(f"DICOM root {root} does not exist; set data.lidc_root (or data.phantom_root) to it.")
    base = root / patient_id
    if not base.is_dir():
        raise DicomError(f"{base}: no folder for patient {patient_id} under the DICOM root.")
    direct = base / study_uid / series_uid
    if direct.is_dir():
        return direct
    for folder, _, names in os.walk(base):
        files = _dicom_files(Path(folder)) if any(n.lower().endswith(".dcm") for n in names) else []
        if not files:
            continue
        header = _read_header(files[0])
        if str(header.get("SeriesInstanceUID", "")).strip() == series_uid:
            return Path(folder)
    raise DicomError(f"{base}: no DICOM series {series_uid} of patient {patient_id} found below it.")


def index_series(folder: str | os.PathLike, series_uid: str) -> dict[float, SliceRef]:
    """Map each z position of a series to the file that holds it (headers only).

    Where several slices share one z, keep the lower InstanceNumber, as pylidc does.
    Files of other series in the same folder are ignored.
    """
    folder = Path(folder)
    by_z: dict[float, SliceRef] = {}
    for path in _dicom_files(folder):
        header = _read_header(path)
        if str(header.get("SeriesInstanceUID", "")).strip() != series_uid:
            continue
        try:
            z = float(header.ImagePositionPatient[2])
            instance = int(header.InstanceNumber)
        except (AttributeError, IndexError, TypeError, ValueError) as err:
            raise DicomError(f"{path}: missing ImagePositionPatient or InstanceNumber ({err}).") from err
        ref = SliceRef(path, z, instance)
        if z not in by_z or instance < by_z[z].instance_number:
            by_z[z] = ref
    if not by_z:
        raise DicomError(f"{folder}: holds no slice of series {series_uid}.")
    return by_z


def slice_files(index: dict[float, SliceRef], zvals: np.ndarray, needed: np.ndarray, what: str) -> dict[int, Path]:
    """Files of the slices ``needed`` (indices into ``zvals``), matched by z within tolerance.

    ``what`` names the nodule for the error raised when a slice is missing.
    """
    zs = np.array(sorted(index))
    files = {}
    for k in needed:
        z = float(zvals[k])
        nearest = zs[np.argmin(np.abs(zs - z))]
        if abs(nearest - z) > Z_TOLERANCE_MM:
            folder = next(iter(index.values())).path.parent
            raise DicomError(f"{what}: slice {k} at z={z:.2f} mm is missing from {folder}; the series is incomplete.")
        files[int(k)] = index[nearest].path
    return files


def read_hu(path: str | os.PathLike) -> np.ndarray:
    """One slice in Hounsfield units, (rows, columns) float32, via RescaleSlope/Intercept."""
    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array.astype(np.float32)
        slope = float(getattr(ds, "RescaleSlope", 1.0))
        intercept = float(getattr(ds, "RescaleIntercept", 0.0))
    except Exception as err:  # pydicom raises many types for damaged pixel data
        raise DicomError(f"{path}: cannot decode pixel data ({type(err).__name__}: {err}); re-download it.") from err
    return pixels * slope + intercept
