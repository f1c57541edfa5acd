"""The paper's pictures of §4 as small, byte-for-byte reproducible PNGs (Figs. 5, 6, 7).

Drawing only: callers (``nodule_net.evaluation.evaluate``) choose the nodules and compute the
numbers (``nodule_net.evaluation.analysis``). Figures are drawn on a bare ``matplotlib.figure.Figure``
with the Agg canvas (no pyplot, so no global state) and written by Pillow with a 256-colour
palette, or 8-bit grey for the CT pictures, with no metadata chunk: the same inputs give the same bytes on
every run, and files stay well under 100 KB (they are tracked by git).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from nodule_net.io.files import atomic_path

# Lung window (level −600 HU, width 1500 HU), the usual one for reading nodules.
LUNG_WINDOW_LEVEL, LUNG_WINDOW_WIDTH = -600.0, 1500.0
MAX_SLICES_SHOWN = 8  # Fig. 5 columns; deeper nodules show their first 8 slices
DPI = 100
MISSING = "0.85"  # grey for undefined (NaN) matrix entries


def lung_window() -> tuple[float, float]:
    """(vmin, vmax) in HU of the lung window."""
    return LUNG_WINDOW_LEVEL - LUNG_WINDOW_WIDTH / 2, LUNG_WINDOW_LEVEL + LUNG_WINDOW_WIDTH / 2


def save_png(fig: Figure, path: str | os.PathLike, grey: bool = False) -> None:
    """Write ``fig`` as PNG atomically: 8-bit palette (or grey), no metadata chunk."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    image = Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba(), "raw", "RGBA", 0, 1)
    with atomic_path(path) as tmp:
        # A 256-colour palette (median cut, deterministic) is ample for colour maps and text.
        (image.convert("L") if grey else image.convert("RGB").quantize(256)).save(tmp, format="PNG")


def draw_slice_attention(
    volumes: Sequence[np.ndarray], weights: Sequence[np.ndarray], labels: Sequence[str], path: str | os.PathLike
) -> None:
    """Fig. 5: one row per nodule, its slices (M, H, W) in HU in the lung window, each
    captioned with its SAM weight (weights (M,) sum to 1 per nodule, as in the paper)."""
    if not volumes:
        raise ValueError(f"{path}: no nodules to draw for Fig. 5.")
    columns = min(MAX_SLICES_SHOWN, max(len(v) for v in volumes))
    fig = Figure(dpi=DPI, figsize=(0.3 + 0.85 * columns, 0.4 + 1.15 * len(volumes)))
    axes = fig.subplots(len(volumes), columns, squeeze=False)
    vmin, vmax = lung_window()
    for row, (volume, w, label) in enumerate(zip(volumes, weights, labels, strict=True)):
        for col, ax in enumerate(axes[row]):
            ax.set_axis_off()
            if col >= len(volume):
                continue
            ax.imshow(volume[col], cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.text(0.5, -0.04, f"{w[col]:.2f}", transform=ax.transAxes, ha="center", va="top", fontsize=7)
        axes[row, 0].text(0.0, 1.03, label, transform=axes[row, 0].transAxes, ha="left", va="bottom", fontsize=6)
    fig.suptitle("Slice attention (SAM) weight per slice; lung window W1500/L−600", fontsize=7)
    fig.subplots_adjust(left=0.02, right=0.98, top=0.86, bottom=0.06, wspace=0.05, hspace=0.45)
    save_png(fig, path, grey=True)


def draw_attribute_relations(
    panels: Sequence[tuple[str, np.ndarray, str]], abbreviations: Sequence[str], path: str | os.PathLike
) -> None:
    """Fig. 6: labelled heatmaps of (K, K) matrices, entry (i, j) = attribute j for attribute i.

    ``panels``: (title, matrix, kind) with kind ``"magnitude"`` ([0, 1], oranges — Fig. 6a),
    ``"weight"`` ([−1, 1], purple positive — 6b/c) or ``"correlation"`` ([−1, 1], orange
    positive — 6d/e). Every cell shows its value (as the paper's Fig. S2); NaN is grey.
    """
    styles = {"magnitude": ("Oranges", 0.0), "weight": ("PuOr", -1.0), "correlation": ("PuOr_r", -1.0)}
    fig = Figure(dpi=DPI, figsize=(3.3 * len(panels), 3.2))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    ticks = np.arange(len(abbreviations))
    for ax, (title, matrix, kind) in zip(axes, panels, strict=True):
        cmap, vmin = styles[kind]
        image = ax.imshow(
            np.ma.masked_invalid(matrix),
            cmap=matplotlib.colormaps[cmap].with_extremes(bad=MISSING),
            vmin=vmin,
            vmax=1.0,
        )
        ax.set_xticks(ticks, abbreviations, fontsize=6, rotation=90)
        ax.set_yticks(ticks, abbreviations, fontsize=6)
        ax.set_title(title, fontsize=7)
        for (i, j), value in np.ndenumerate(matrix):
            if np.isfinite(value):
                ax.text(
                    j,
                    i,
                    f"{value:.2f}".replace("0.", "."),
                    ha="center",
                    va="center",
                    fontsize=4,
                    color="white" if abs(value) > 0.6 else "black",
                )
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03).ax.tick_params(labelsize=5)
    fig.subplots_adjust(left=0.05, right=0.97, top=0.9, bottom=0.12, wspace=0.35)
    save_png(fig, path)


def draw_predictions(
    slices: Sequence[np.ndarray],
    truth: np.ndarray,
    predicted: np.ndarray,
    abbreviations: Sequence[str],
    labels: Sequence[str],
    path: str | os.PathLike,
    probability_row: int | None = None,
) -> None:
    """Fig. 7: each nodule's middle slice (H, W) in HU above its ground-truth (GT) and
    predicted (P) scores, ``truth`` and ``predicted`` (n, K) on the original scales.

    ``probability_row``: the row whose P is a classifier's P(malignant), printed as such.
    """
    fig = Figure(dpi=DPI, figsize=(1.75 * len(slices), 3.3))
    grid = fig.add_gridspec(2, len(slices), height_ratios=(1.0, 1.1))
    vmin, vmax = lung_window()
    for col, (image, label) in enumerate(zip(slices, labels, strict=True)):
        ax = fig.add_subplot(grid[0, col])
        ax.imshow(image, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(label, fontsize=5)
        lines = [f"{'':4}{'GT':>5}{'P':>6}"]
        for k, name in enumerate(abbreviations):
            p = f"{predicted[col, k]:.2f}" if k == probability_row else f"{predicted[col, k]:.1f}"
            lines.append(f"{name:4}{truth[col, k]:5.1f}{p:>6}")
        if probability_row is not None:
            lines.append(f"P of {abbreviations[probability_row]}: P(malignant)")
        text = fig.add_subplot(grid[1, col])
        text.set_axis_off()
        text.text(
            0.5,
            1.0,
            "\n".join(lines),
            family="DejaVu Sans Mono",
            fontsize=6.5,
            ha="center",
            va="top",
            transform=text.transAxes,
        )
    fig.suptitle("Middle slice, ground truth (GT) and predicted (P) scores", fontsize=7)
    fig.subplots_adjust(left=0.02, right=0.98, top=0.9, bottom=0.01, wspace=0.1, hspace=0.08)
    save_png(fig, path, grey=True)
