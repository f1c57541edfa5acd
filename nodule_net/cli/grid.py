"""`nodule-net grid`: queue the paper's experiments as named DVC experiments of this repository, or submit
them to Slurm (``--slurm``: :mod:`nodule_net.experiments.slurm`)."""

from __future__ import annotations

import argparse

from nodule_net.experiments.grid import queue_grid


def run(args: argparse.Namespace) -> None:
    """Queue the grid (or the experiments ``--exp`` names) with the ``-S`` overrides, or print the commands;
    with ``--slurm``, submit them as a Slurm array job (or show its status)."""
    if not args.slurm:
        if args.status or args.slurm_dir:
            raise ValueError(f"{'--status' if args.status else '--slurm-dir'} goes with --slurm; add it.")
        queue_grid(".", args.overrides, args.dry_run, names=args.exp)
        return
    from nodule_net.experiments import slurm

    if args.status:
        if args.dry_run or args.overrides or args.exp or args.sbatch:
            raise ValueError("--slurm --status shows HEAD's Slurm grid and takes no other option but --slurm-dir.")
        slurm.print_status(".", args.slurm_dir)
    else:
        slurm.submit_grid(".", args.overrides, args.sbatch, args.dry_run, names=args.exp, slurm_dir=args.slurm_dir)
