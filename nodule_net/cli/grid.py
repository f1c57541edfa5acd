"""`nodule-net grid`: queue the paper's experiments as named DVC experiments of this repository."""

from __future__ import annotations

import argparse

from nodule_net.experiments.grid import queue_grid


def run(args: argparse.Namespace) -> None:
    """Queue the grid (or the experiments ``--exp`` names) with the ``-S`` overrides, or print the commands."""
    queue_grid(".", args.overrides, args.dry_run, names=args.exp)
