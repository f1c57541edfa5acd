"""`nodule-net report`: the paper's tables and figures from this repository's finished DVC experiments."""

from __future__ import annotations

import argparse

from nodule_net.experiments.report import main_report


def run(args: argparse.Namespace) -> None:
    """Write ``report.md`` and its figures into ``--out`` and say where."""
    main_report(args.out, args.exp, args.all)
