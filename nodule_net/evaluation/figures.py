"""The paper's pictures of §4 as small, byte-for-byte reproducible PNGs (Figs. 5, 6, 7).

Drawing only: callers (``nodule_net.evaluation.evaluate``) choose the nodules and compute the
numbers (``nodule_net.evaluation.analysis``). Figures are drawn on a bare ``matplotlib.figure.Figure``
with the Agg canvas (no pyplot, so no global state) and written by Pillow with a 256-colour
palette, or 8-bit grey for the CT pictures, with no metadata chunk: the same inputs give the same bytes on
every run, and files stay well under 100 KB (they are tracked by git).

Sizes are in inches at ``DPI`` and fonts in points, chosen for the PNG's natural size (the README
shows it unscaled, at most ~850 px wide): a DejaVu Sans digit is 0.73 em high, so 8 pt at 100 dpi
is 8 px.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Colormap, Normalize, to_rgba
from matplotlib.figure import Figure
from PIL import Image

from nodule_net.config import ModelConfig
from nodule_net.io.files import atomic_path

# Lung window (level −600 HU, width 1500 HU), the usual one for reading nodules.
LUNG_WINDOW_LEVEL, LUNG_WINDOW_WIDTH = -600.0, 1500.0
MAX_SLICES_SHOWN = 8  # Fig. 5 columns; deeper nodules show their first 8 slices
DPI = 100
MISSING = "0.6"  # grey for undefined (NaN) matrix entries, darker than any near-zero colour
TEXT, TITLE = 8.0, 9.0  # pt: cell values and labels (digits ≥ 8 px high); panel and figure titles
# Fig. 6: |r| on a sequential map from white (0), signed values on a diverging map white at 0;
# green is far from both ends of red–blue, so a magnitude is not read as a sign.
SEQUENTIAL, DIVERGING = "Greens", "RdBu_r"
CELL = 0.36  # in: one matrix cell of Fig. 6, room for "−.52" or "−1" at TEXT pt
LEVELS = 64  # colours per Fig. 6 map: steps of 1/32 on [−1, 1], too fine to see, few enough to keep exact


def lung_window() -> tuple[float, float]:
    """(vmin, vmax) in HU of the lung window."""
    return LUNG_WINDOW_LEVEL - LUNG_WINDOW_WIDTH / 2, LUNG_WINDOW_LEVEL + LUNG_WINDOW_WIDTH / 2


def _palette(image: Image.Image, keep: Sequence[tuple[int, int, int]]) -> Image.Image:
    """``image`` (RGB) on 256 colours: ``keep`` exactly, the rest by median cut (deterministic),
    every pixel on its nearest one.

    Median cut alone spends its colours on antialiased text and shifts flat areas such as a
    heatmap cell, whose colour is its value; Pillow's own mapping onto a given palette is
    approximate, so the nearest colour is found here.
    """
    rest = np.reshape(image.quantize(256 - len(keep)).getpalette() or [], (-1, 3))[: 256 - len(keep)]
    palette = np.concatenate([np.reshape(np.asarray(keep, dtype=np.int64), (-1, 3)), rest])  # (P, 3)
    pixels = np.asarray(image, dtype=np.int64).reshape(-1, 3)  # (H·W, 3)
    packed = pixels[:, 0] << 16 | pixels[:, 1] << 8 | pixels[:, 2]  # (H·W,) one integer per colour
    codes, inverse = np.unique(packed, return_inverse=True)  # (U,) distinct colours
    colours = np.stack([codes >> 16, (codes >> 8) & 255, codes & 255], axis=1)  # (U, 3)
    nearest = ((colours[:, None, :] - palette[None]) ** 2).sum(axis=2).argmin(axis=1)  # (U,)
    indexed = Image.frombytes("P", image.size, nearest[inverse].astype(np.uint8).tobytes())
    indexed.putpalette(palette.astype(np.uint8).flatten().tolist())
    return indexed


def save_png(
    fig: Figure, path: str | os.PathLike, grey: bool = False, keep: Sequence[tuple[int, int, int]] = ()
) -> None:
    """Write ``fig`` as PNG atomically: 8-bit palette (``keep``: RGB colours it holds exactly)
    or 8-bit grey, no metadata chunk."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    image = Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba(), "raw", "RGBA", 0, 1)
    with atomic_path(path) as tmp:
        (image.convert("L") if grey else _palette(image.convert("RGB"), keep)).save(tmp, format="PNG")


def _axes(fig: Figure, left: float, bottom: float, width: float, height: float) -> Axes:
    """Axes at a rectangle given in inches from the figure's lower left corner."""
    w, h = fig.get_size_inches()
    return fig.add_axes((left / w, bottom / h, width / w, height / h))


# --- Fig. 5 -------------------------------------------------------------------------------


def slice_attention_figure(
    volumes: Sequence[np.ndarray], weights: Sequence[np.ndarray], labels: Sequence[str]
) -> Figure:
    """Fig. 5: one row per nodule, its slices (M, H, W) in HU in the lung window, each
    captioned with its SAM weight (weights (M,) sum to 1 per nodule, as in the paper)."""
    if not volumes:
        raise ValueError("Fig. 5 has no nodules to draw: it needs SAM weights of nodules of at least 3 slices.")
    columns = min(MAX_SLICES_SHOWN, max(len(v) for v in volumes))
    side, gap, label, caption, top, margin = 0.95, 0.06, 0.24, 0.24, 0.5, 0.1
    row = label + side + caption + gap
    fig = Figure(dpi=DPI, figsize=(2 * margin + columns * side + (columns - 1) * gap, top + row * len(volumes)))
    height = fig.get_size_inches()[1]
    vmin, vmax = lung_window()
    for r, (volume, w, text) in enumerate(zip(volumes, weights, labels, strict=True)):
        bottom = height - top - (r + 1) * row + caption + gap
        if len(volume) > columns:
            text += f", first {columns} shown"
        fig.text(margin / fig.get_size_inches()[0], (bottom + side + 0.05) / height, text, fontsize=TEXT)
        for c in range(min(columns, len(volume))):
            ax = _axes(fig, margin + c * (side + gap), bottom, side, side)
            ax.set_axis_off()
            ax.imshow(volume[c], cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.text(0.5, -0.05, f"{w[c]:.2f}", transform=ax.transAxes, ha="center", va="top", fontsize=TITLE)
    fig.suptitle(
        "Fig. 5: SAM weight of each slice (a nodule's weights sum to 1)\nlung window W 1500 / L −600 HU",
        fontsize=TITLE,
        y=1 - 0.06 / height,
        va="top",
    )
    return fig


def draw_slice_attention(
    volumes: Sequence[np.ndarray], weights: Sequence[np.ndarray], labels: Sequence[str], path: str | os.PathLike
) -> None:
    """Fig. 5 (:func:`slice_attention_figure`) as a grey PNG at ``path``."""
    save_png(slice_attention_figure(volumes, weights, labels), path, grey=True)


# --- Fig. 6 -------------------------------------------------------------------------------


class Panel(NamedTuple):
    """One heatmap of Fig. 6."""

    title: str  # starting with the paper's letter: "a) …"
    matrix: np.ndarray  # (K, K), entry (i, j) = attribute j for attribute i
    signed: bool  # in [−1, 1] (diverging map centred at 0), else a magnitude in [0, 1]


def relation_panels(attention: Mapping) -> tuple[list[Panel], str]:
    """Fig. 6's panels from ``metrics/attention.json`` and a caption saying which are the paper's.

    The paper's b, d are the CAAM-only model, c, e the one with CAAM and ASCMM; an experiment
    trains one variant, so it has (a) and one of those pairs, or (a) alone without CAAM.
    """

    def matrix(key: str) -> np.ndarray:
        return np.asarray(attention[key], dtype=float)  # JSON's null (undefined) becomes NaN

    panels = [Panel("a) radiologists' |r| (mean ratings)", matrix("radiologist_correlation"), False)]
    common = f"cell (i, j) = attribute j for attribute i; {attention['n_nodules']} test nodules; grey: undefined"
    if "caam_weights_normalised" not in attention:
        return panels, f"{common}\nthis variant has no CAAM, so no panels b–e"
    variant = attention["variant"]
    config = ModelConfig(variant=variant)
    modules = " + ".join(
        m for m, used in (("SAM", config.uses_sam), ("CAAM", True), ("ASCMM", config.uses_aux)) if used
    )
    weights, profiles = ("c", "e") if config.uses_aux else ("b", "d")
    panels += [
        Panel(f"{weights}) CAAM weights, row ÷ its max |w|", matrix("caam_weights_normalised"), True),
        Panel(f"{profiles}) CAAM weight-profile correlation", matrix("caam_profile_correlation"), True),
    ]
    return panels, f"{common}\nvariant {variant} ({modules}): the paper's {weights} and {profiles}"


def _relation_cmap(signed: bool) -> Colormap:
    """Fig. 6's colour map, in ``LEVELS`` steps so that the PNG's palette holds every one."""
    return matplotlib.colormaps[DIVERGING if signed else SEQUENTIAL].resampled(LEVELS).with_extremes(bad=MISSING)


def _relation_colours() -> list[tuple[int, int, int]]:
    """The RGB colours of Fig. 6's cells and colour bars (both maps, undefined grey), and text."""
    colours = [_relation_cmap(signed)(np.arange(LEVELS)) for signed in (False, True)]
    named = np.array([to_rgba(c) for c in (MISSING, "black", "white")])
    rgb = np.rint(255 * np.concatenate([*colours, named])[:, :3]).astype(int)
    return [(r, g, b) for r, g, b in rgb.tolist()]


def cell_text(value: float) -> str:
    """A matrix entry as the paper's Fig. S2 prints it: 2 decimals, no leading zero, ±1 for ±1.00."""
    text = f"{value:.2f}"
    text = {"1.00": "1", "-1.00": "-1", "-0.00": "0.00"}.get(text, text)
    return text.replace("0.", ".", 1).replace("-", "−")


def _heatmap(ax: Axes, panel: Panel, abbreviations: Sequence[str], norm: Normalize) -> matplotlib.image.AxesImage:
    cmap = _relation_cmap(panel.signed)
    image = ax.imshow(np.ma.masked_invalid(panel.matrix), cmap=cmap, norm=norm, interpolation="nearest")
    ticks = np.arange(len(abbreviations))
    ax.set_xticks(ticks, abbreviations, fontsize=TEXT)
    ax.set_yticks(ticks, abbreviations, fontsize=TEXT)
    ax.tick_params(length=0, pad=2)
    ax.set_title(panel.title, fontsize=TITLE, loc="left", pad=4)
    for (i, j), value in np.ndenumerate(panel.matrix):
        if np.isfinite(value):
            r, g, b, _ = cmap(norm(value))
            dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
            ax.text(j, i, cell_text(value), ha="center", va="center", fontsize=TEXT, color="white" if dark else "black")
    return image


def attribute_relations_figure(attention: Mapping) -> Figure:
    """Fig. 6 from ``metrics/attention.json``: (a) on top, the CAAM panels (b/c, d/e) below.

    A row's panels share one colour bar: [0, 1] for the magnitude, [−1, 1] centred at 0 for
    the signed weights and correlations.
    """
    panels, caption = relation_panels(attention)
    abbreviations = attention["abbreviations"]
    rows = [r for r in ([p for p in panels if not p.signed], [p for p in panels if p.signed]) if r]
    side = CELL * max(len(abbreviations), 6)
    ticks, gap, bar_gap, bar, bar_ticks = 0.38, 0.25, 0.12, 0.14, 0.5  # widths: labels, gaps, colour bar
    title, below, between, top, margin = 0.3, 0.25, 0.15, 0.7, 0.1  # heights, and the margin
    widths = [len(r) * (ticks + side) + (len(r) - 1) * gap + bar_gap + bar + bar_ticks for r in rows]
    width = max(2 * margin + max(widths), 5.6)  # a lone panel (a) still has room for the caption
    height = top + len(rows) * (title + side + below) + (len(rows) - 1) * between + margin
    fig = Figure(dpi=DPI, figsize=(width, height))
    for n, (row, row_width) in enumerate(zip(rows, widths, strict=True)):
        bottom = height - top - (n + 1) * (title + side) - n * (below + between)
        left = (width - row_width) / 2 + ticks
        low, high = (-1.0, 1.0) if row[0].signed else (0.0, 1.0)
        norm = Normalize(low, high)
        for panel in row:
            image = _heatmap(_axes(fig, left, bottom, side, side), panel, abbreviations, norm)
            left += side + gap + ticks
        colour_bar = fig.colorbar(image, cax=_axes(fig, left - gap - ticks + bar_gap, bottom, bar, side))
        colour_bar.set_ticks(np.linspace(low, high, 5).tolist())
        colour_bar.ax.tick_params(labelsize=TEXT)
    fig.suptitle(
        f"Fig. 6: relations between attributes\n{caption}",
        fontsize=TITLE,
        y=1 - 0.06 / height,
        va="top",
    )
    return fig


def draw_attribute_relations(attention: Mapping, path: str | os.PathLike) -> None:
    """Fig. 6 (:func:`attribute_relations_figure`) as a PNG at ``path``."""
    save_png(attribute_relations_figure(attention), path, keep=_relation_colours())


# --- Fig. 7 -------------------------------------------------------------------------------


def predictions_figure(
    slices: Sequence[np.ndarray],
    truth: np.ndarray,
    predicted: np.ndarray,
    abbreviations: Sequence[str],
    labels: Sequence[str],
    probability_row: int | None = None,
) -> Figure:
    """Fig. 7: each nodule's middle slice (H, W) in HU under its label, above its ground-truth
    (GT) and predicted (P) scores, ``truth`` and ``predicted`` (n, K) on the original scales.

    ``probability_row``: the row whose P is a classifier's P(malignant), printed as such.
    """
    n_lines = 1 + len(abbreviations) + (probability_row is not None)
    column, side, label, table, top, margin = 2.45, 1.8, 0.42, 0.15 * n_lines + 0.1, 0.5, 0.1
    height = top + label + side + 0.1 + table + margin
    fig = Figure(dpi=DPI, figsize=(2 * margin + column * len(slices), height))
    vmin, vmax = lung_window()
    for col, (image, text) in enumerate(zip(slices, labels, strict=True)):
        ax = _axes(fig, margin + col * column + (column - side) / 2, height - top - label - side, side, side)
        ax.imshow(image, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(text, fontsize=TEXT, pad=4)
        lines = [f"{'':4}{'GT':>5}{'P':>6}"]
        for k, name in enumerate(abbreviations):
            p = f"{predicted[col, k]:.2f}" if k == probability_row else f"{predicted[col, k]:.1f}"
            lines.append(f"{name:4}{truth[col, k]:5.1f}{p:>6}")
        if probability_row is not None:
            lines.append(f"P of {abbreviations[probability_row]}: P(malignant)")
        ax.text(
            0.5,
            -0.05,
            "\n".join(lines),
            family="DejaVu Sans Mono",
            fontsize=TEXT + 0.5,
            ha="center",
            va="top",
            transform=ax.transAxes,
        )
    scores = "its scores" if probability_row is None else "its scores except P(malignant)"
    fig.suptitle(
        "Fig. 7: middle slice, ground-truth (GT) and predicted (P) scores of three test nodules\n"
        f"error: a nodule's mean |P − GT| over {scores}",
        fontsize=TITLE,
        y=1 - 0.06 / height,
        va="top",
    )
    return fig


def draw_predictions(
    slices: Sequence[np.ndarray],
    truth: np.ndarray,
    predicted: np.ndarray,
    abbreviations: Sequence[str],
    labels: Sequence[str],
    path: str | os.PathLike,
    probability_row: int | None = None,
) -> None:
    """Fig. 7 (:func:`predictions_figure`) as a grey PNG at ``path``."""
    save_png(predictions_figure(slices, truth, predicted, abbreviations, labels, probability_row), path, grey=True)
