"""`nodule-net lidc-stats`: the annotation database's statistics next to the paper's, as a table or JSON."""

from __future__ import annotations

import argparse
import json

from nodule_net.data.extract import describe_flaw
from nodule_net.data.lidc_stats import lidc_stats
from nodule_net.data.stats import PAPER, format_comparison


def run(args: argparse.Namespace) -> None:
    """Compute the statistics (with a progress bar unless ``--json``) and print them."""
    stats = lidc_stats(args.scans, args.workers, progress=not args.json, patients=args.patients)
    if args.json:
        print(json.dumps({"ours": stats, "paper": PAPER}, indent=2))
        return
    print(format_comparison(stats))
    print(f"\nclusters of more than 4 annotations (kept): {stats['clusters_over_4_annotations']}")
    print(f"reader ratings outside their scale (treated as missing): {stats['rating_flaws']['count']}")
    for flaw in stats["rating_flaws"]["details"]:
        print(f"  {describe_flaw(flaw)}")
    print(
        f"nodules without a valid rating of some attribute (extract leaves them out): {len(stats['unrated_nodules'])}"
    )
    for reason in stats["unrated_nodules"]:
        print(f"  {reason}")
