"""`nodule-net mae-table`: the evaluate stage's MAE metrics file as a Markdown table."""

from __future__ import annotations

import argparse
import json

from nodule_net.evaluation.metrics import format_mae_table


def run(args: argparse.Namespace) -> None:
    """Print the final, auxiliary and baseline MAE of ``args.path`` (a ``metrics/mae.json``)."""
    with open(args.path) as f:
        print(format_mae_table(json.load(f)))
