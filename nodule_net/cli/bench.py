"""`nodule-net bench`: training and inference speed on this machine, and the protocol's projected time."""

from __future__ import annotations

import argparse

from nodule_net.training.bench import bench_command


def run(args: argparse.Namespace) -> None:
    """Run the bench on ``--device`` and print its report (or JSON)."""
    print(bench_command(args.device, args.quick, args.json, args.threads, args.precision))
