"""The training curves as one PNG that needs no browser and no internet.

``dvc plots show`` draws dvclive's per-fold TSVs as Vega-Lite HTML whose scripts come from a
CDN, which a cluster or hospital network often cannot reach; this draws the same TSVs with
matplotlib and writes them as the other figures are (:func:`~nodule_net.evaluation.figures.save_png`:
same inputs, same bytes).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from nodule_net.evaluation.figures import DPI, TEXT, TITLE, save_png

FOLD_FOLDER = re.compile(r"fold(\d+)")  # <live_dir>/fold<k>/, one dvclive folder per fold
CURVE_FOLDER = Path("plots", "metrics")  # dvclive's place for a metric's TSV (step, value)
# The metrics the train stage logs per epoch, with their axis labels.
CURVES = {
    "train_loss": "training loss (per nodule)",
    "val_mae": "validation MAE (model selection)",
}


class FoldCurves(NamedTuple):
    """One fold's curves: ``CURVES`` name → (epochs (E,), values (E,)), and the epoch kept."""

    curves: dict[str, tuple[np.ndarray, np.ndarray]]
    best_epoch: int


def read_curve(path: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps (E,), values (E,)) of the dvclive TSV ``path`` of metric ``name``."""
    if not path.is_file():
        raise ValueError(f"{path}: no such dvclive curve; the fold has not logged an epoch yet (run `dvc repro`).")
    table = pd.read_csv(path, sep="\t")
    if not {"step", name} <= set(table.columns) or table.empty:
        raise ValueError(f"{path} is not a dvclive curve of {name} (columns step, {name}; one row per epoch).")
    return table["step"].to_numpy(np.int64), table[name].to_numpy(np.float64)


def read_fold(folder: Path) -> FoldCurves:
    """A fold's dvclive folder: its curves and the epoch whose model was kept, as the train
    stage recorded it in ``metrics.json`` or, while a fold is training, the first lowest
    validation MAE (the same rule: ties keep the earlier epoch)."""
    curves = {name: read_curve(folder / CURVE_FOLDER / f"{name}.tsv", name) for name in CURVES}
    summary = folder / "metrics.json"
    recorded = json.loads(summary.read_text()).get("best_epoch") if summary.is_file() else None
    steps, val = curves["val_mae"]
    return FoldCurves(curves, int(recorded) if recorded is not None else int(steps[np.argmin(val)]))


def training_curves_figure(folds: Mapping[int, FoldCurves]) -> Figure:
    """Two panels, training loss and validation MAE over epochs, one line per fold and a dot
    at each fold's kept epoch."""
    fig = Figure(dpi=DPI, figsize=(8.2, 3.6))
    axes = fig.subplots(1, len(CURVES))
    for ax, (name, label) in zip(axes, CURVES.items(), strict=True):
        for k, fold in folds.items():
            steps, values = fold.curves[name]
            ax.plot(steps, values, color=f"C{k % 10}", linewidth=1.4, label=f"fold {k}: epoch {fold.best_epoch}")
            kept = steps == fold.best_epoch
            ax.plot(steps[kept], values[kept], "o", color=f"C{k % 10}", markersize=6)
        ax.set_xlabel("epoch", fontsize=TEXT)
        ax.set_ylabel(label, fontsize=TEXT)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=TEXT)
        ax.grid(color="0.9", linewidth=0.6)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=TEXT, frameon=False)
    fig.suptitle(
        "Training curves per fold; ● and the legend: the epoch whose model was kept (lowest validation MAE)",
        fontsize=TITLE,
    )
    fig.subplots_adjust(left=0.08, right=0.98, top=0.9, bottom=0.24, wspace=0.28)
    return fig


def write_training_curves(
    live_dir: str | os.PathLike, path: str | os.PathLike, folds: Sequence[int] | None = None
) -> Path | None:
    """Draw ``<live_dir>/fold<k>/plots/metrics/{train_loss,val_mae}.tsv`` of the folds ``folds``
    (every fold folder when None) as one PNG at ``path``; None (nothing written) when none of
    them has a folder. A fold folder left by a run of other ``folds`` is not drawn.
    """
    found = [(FOLD_FOLDER.fullmatch(p.name), p) for p in Path(live_dir).glob("fold*") if p.is_dir()]
    folders = sorted((int(match[1]), p) for match, p in found if match and (folds is None or int(match[1]) in folds))
    if not folders:
        return None
    save_png(training_curves_figure({k: read_fold(p) for k, p in folders}), path)
    return Path(path)
