"""Figs. 5–7: PNG files that are small and identical byte for byte when drawn again, and what they show."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgba
from PIL import Image

from nodule_net.attributes import ABBREVIATIONS
from nodule_net.evaluation.evaluate import _fig7_nodules
from nodule_net.evaluation.figures import (
    DIVERGING,
    DPI,
    MISSING,
    SEQUENTIAL,
    TEXT,
    _relation_cmap,
    _relation_colours,
    attribute_relations_figure,
    cell_text,
    draw_attribute_relations,
    draw_predictions,
    draw_slice_attention,
    lung_window,
    predictions_figure,
    save_png,
    slice_attention_figure,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_BYTES = 100_000  # they are tracked by git beside the metrics
DIGIT_HEIGHT = 0.73  # em, DejaVu Sans
MATRICES = {"a": "radiologist_correlation", "b": "caam_weights_normalised", "d": "caam_profile_correlation"}


def nodule(depth: int, seed: int) -> np.ndarray:
    """(depth, 64, 64) HU: noisy parenchyma with a soft-tissue disc, as the phantom draws."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:64, :64] - 31.5
    volume = rng.normal(-850, 20, (depth, 64, 64))
    volume[:, yy**2 + xx**2 < 15**2] = 40
    return volume.astype(np.float32)


def attention(variant: str | None = "full") -> dict:
    """A metrics/attention.json of 9 attributes; without CAAM matrices when ``variant`` is None."""
    matrix = np.random.default_rng(3).uniform(-1, 1, (9, 9))
    matrix[1, 2] = np.nan
    result = {"abbreviations": list(ABBREVIATIONS), "n_nodules": 12, "radiologist_correlation": np.abs(matrix)}
    if variant is not None:
        result |= {"variant": variant, "caam_weights_normalised": matrix, "caam_profile_correlation": matrix.T}
    return result


def draw_all(folder) -> list:
    volumes = [nodule(5, 0), nodule(3, 1), nodule(12, 2)]
    weights = [np.full(len(v), 1 / len(v)) for v in volumes]
    draw_slice_attention(volumes, weights, ["a (5)", "b (3)", "c (12)"], folder / "fig5.png")
    draw_attribute_relations(attention(), folder / "fig6.png")
    truth = np.random.default_rng(4).uniform(1, 5, (3, 9))
    draw_predictions(
        [v[len(v) // 2] for v in volumes],
        truth,
        truth + 0.1,
        ABBREVIATIONS,
        ["a", "b", "c"],
        folder / "fig7.png",
        probability_row=8,
    )
    return [folder / name for name in ("fig5.png", "fig6.png", "fig7.png")]


def panel_axes(fig) -> dict:
    """The heatmap Axes of a Fig. 6 by the letter its title starts with."""
    return {ax.get_title(loc="left")[0]: ax for ax in fig.axes if ax.get_title(loc="left")}


@pytest.mark.slow
def test_figures_are_small_pngs_with_the_same_bytes_every_time(tmp_path) -> None:
    (tmp_path / "1").mkdir(), (tmp_path / "2").mkdir()
    first, second = draw_all(tmp_path / "1"), draw_all(tmp_path / "2")
    for a, b in zip(first, second, strict=True):
        data = a.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and 5_000 < len(data) <= MAX_BYTES, (a.name, len(data))
        assert data == b.read_bytes(), a.name
        assert b"Software" not in data and b"matplotlib" not in data


def test_lung_window_is_level_minus_600_width_1500() -> None:
    assert lung_window() == (-1350.0, 150.0)


def test_fig5_needs_a_nodule(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"Fig\. 5"):
        draw_slice_attention([], [], [], tmp_path / "fig5.png")


def test_fig5_says_when_a_deep_nodule_shows_only_its_first_slices() -> None:
    fig = slice_attention_figure([nodule(12, 2), nodule(3, 1)], [np.full(12, 1 / 12), np.full(3, 1 / 3)], ["c", "b"])
    texts = {t.get_text() for t in fig.texts}
    assert {"c, first 8 shown", "b"} <= texts
    weights = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert weights == ["0.08"] * 8 + ["0.33"] * 3


@pytest.mark.parametrize(
    ("value", "text"), [(0.5234, ".52"), (-0.5234, "−.52"), (1.0, "1"), (-0.999, "−1"), (-0.001, ".00"), (0.0, ".00")]
)
def test_cell_text_is_two_decimals_without_the_leading_zero(value: float, text: str) -> None:
    assert cell_text(value) == text


@pytest.mark.parametrize(
    ("variant", "letters", "named"),
    [
        ("caam", "abd", "variant caam (CAAM): the paper's b and d"),
        ("caam_ascmm", "ace", "the paper's c and e"),
        ("full", "ace", "variant full (SAM + CAAM + ASCMM): the paper's c and e"),
        (None, "a", "no panels b–e"),
    ],
)
def test_fig6_letters_its_panels_as_the_paper_does(variant: str | None, letters: str, named: str) -> None:
    fig = attribute_relations_figure(attention(variant))
    assert "".join(sorted(panel_axes(fig))) == letters
    assert named in fig.get_suptitle()


def test_fig6_signed_panels_share_one_diverging_map_centred_at_zero() -> None:
    images = {letter: ax.get_images()[0] for letter, ax in panel_axes(attribute_relations_figure(attention())).items()}
    for letter, image in images.items():
        signed = letter != "a"
        assert image.get_cmap().name.startswith(DIVERGING if signed else SEQUENTIAL), letter
        assert (image.norm.vmin, image.norm.vmax) == ((-1.0, 1.0) if signed else (0.0, 1.0)), letter
        assert image.get_cmap().get_bad().tolist() == list(to_rgba(MISSING)), letter
    assert images["c"].norm is images["e"].norm  # so that one colour bar reads both
    bars = [image.colorbar.norm for image in images.values() if image.colorbar is not None]
    assert len(bars) == 2 and bars[0] is images["a"].norm and bars[1] is images["e"].norm


@pytest.mark.slow
def test_fig6_png_keeps_every_cells_colour_exactly(tmp_path) -> None:
    fig = attribute_relations_figure(attention("full"))
    save_png(fig, tmp_path / "fig6.png", keep=_relation_colours())
    pixels = np.asarray(Image.open(tmp_path / "fig6.png").convert("RGB"), dtype=int)
    for letter, ax in panel_axes(fig).items():
        image = ax.get_images()[0]
        for (i, j), value in np.ndenumerate(image.get_array().filled(np.nan)):
            x, y = ax.transData.transform((j + 0.35, i + 0.35))  # a cell's corner, clear of its text
            expected = np.asarray(_relation_cmap(letter != "a")(image.norm(value))[:3]) * 255
            assert np.abs(pixels[pixels.shape[0] - 1 - int(y), int(x)] - expected).max() <= 2, (letter, i, j)


@pytest.mark.slow
def test_fig6_cells_show_values_that_fit_the_cell_and_none_where_undefined() -> None:
    fig = attribute_relations_figure(attention("caam"))
    renderer = FigureCanvasAgg(fig).get_renderer()
    for letter, ax in panel_axes(fig).items():
        texts = {(round(t.get_position()[1]), round(t.get_position()[0])): t for t in ax.texts}
        matrix = attention("caam")[MATRICES[letter]]
        assert set(texts) == {ij for ij, v in np.ndenumerate(matrix) if np.isfinite(v)}, letter
        assert texts[0, 0].get_text() == cell_text(matrix[0, 0])
        cell = ax.get_window_extent(renderer).width / len(ABBREVIATIONS)
        widest = max(t.get_window_extent(renderer).width for t in texts.values())
        assert widest < 0.9 * cell, (letter, widest, cell)
        assert min(t.get_fontsize() for t in texts.values()) * DPI / 72 * DIGIT_HEIGHT >= 8


def test_fig7_labels_each_nodule_by_its_error_percentile() -> None:
    # 11 nodules whose mean absolute error is row / 10, shuffled: ranks 1, 5 and 9 are picked.
    order = np.random.default_rng(0).permutation(11)
    truth = np.zeros((11, 2))
    predicted = np.repeat((order / 10)[:, None], 2, axis=1)
    predicted[:, 1] *= -1  # an absolute error, not a signed one
    ids = np.array([f"LIDC-IDRI-{i:04d}/s1/n0" for i in range(11)])
    picked = _fig7_nodules(truth, predicted, ids)
    rows = [int(np.flatnonzero(order == rank)[0]) for rank in (1, 5, 9)]
    assert picked == [
        (rows[0], f"10th percentile error (0.10):\n{ids[rows[0]]}"),
        (rows[1], f"50th percentile error (0.50):\n{ids[rows[1]]}"),
        (rows[2], f"90th percentile error (0.90):\n{ids[rows[2]]}"),
    ]


def test_fig7_keeps_the_gt_p_table_under_each_label() -> None:
    truth = np.array([[2.0, 4.5], [1.0, 3.0]])
    predicted = np.array([[2.5, 0.8], [1.0, 0.2]])
    labels = ["10th percentile error (0.25):\nx", "90th percentile error (0.50):\ny"]
    fig = predictions_figure([nodule(1, 0)[0]] * 2, truth, predicted, ["Sub", "Mal"], labels, probability_row=1)
    assert [ax.get_title() for ax in fig.axes] == labels
    table = fig.axes[0].texts[0].get_text().splitlines()
    assert table == ["       GT     P", "Sub   2.0   2.5", "Mal   4.5  0.80", "P of Mal: P(malignant)"]
    assert "except P(malignant)" in fig.get_suptitle()
    assert min(t.get_fontsize() for ax in fig.axes for t in ax.texts) >= TEXT
