"""`nodule-net mae-table`: the evaluate stage's MAE as a Markdown table, of the workspace or of DVC experiments.

Without ``--exp`` it reads ``metrics/mae.json`` (final, auxiliary and baseline rows). With
``--exp A B ...`` it puts experiments side by side, one row each, from ``dvc exp show --json``:
the per-attribute columns that `dvc exp show` cannot fit in a terminal.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nodule_net.evaluation.metrics import format_mae_comparison, format_mae_table
from nodule_net.experiments.records import exp_show, latest_by_name, parse_exp_show


def _mae_metrics(metrics: dict) -> dict | None:
    """The metrics file (path → JSON, as ``dvc exp show`` lists them) that holds the pooled ``mae``."""
    return next((data for data in metrics.values() if isinstance(data, dict) and "mae" in data), None)


def compare_experiments(repo: str | Path, names: list[str]) -> dict[str, dict]:
    """``{name: metrics}`` of HEAD's finished experiments ``names``, in the order given; a branch
    name or 7-digit commit of HEAD (e.g. ``main``) gives the baseline's own metrics."""
    entries = exp_show(repo)
    known: dict[str, tuple[str, dict | None]] = {}  # name → (state, its metrics)
    for entry in entries:
        if entry.get("rev") != "workspace":
            files = ((entry.get("data") or {}).get("metrics") or {}).items()
            baseline = _mae_metrics({path: (m or {}).get("data") for path, m in files})
            for key in (entry.get("name"), entry["rev"][:7]):
                if key:
                    known[key] = ("success", baseline)
    for name, record in latest_by_name(parse_exp_show(entries)).items():
        known[name] = (record.state, _mae_metrics(record.metrics))
    chosen = {}
    for name in names:
        if name not in known:
            raise ValueError(
                f"No experiment or baseline named {name} in `dvc exp show` of {repo} (known: {', '.join(known)})."
            )
        state, metrics = known[name]
        if state != "success" or metrics is None:
            raise ValueError(f"Experiment {name} is {state} and has no MAE metrics yet; wait for it or run it again.")
        chosen[name] = metrics
    return chosen


def run(args: argparse.Namespace) -> None:
    """Print ``args.path`` (a ``metrics/mae.json``) as a table, or the experiments ``args.exp`` side by side."""
    if args.exp:
        print(format_mae_comparison(compare_experiments(args.repo, args.exp)))
        return
    with open(args.path) as f:
        print(format_mae_table(json.load(f)))
