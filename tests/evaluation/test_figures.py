"""Figs. 5–7: PNG files that are small and identical byte for byte when drawn again."""

from __future__ import annotations

import numpy as np
import pytest

from nodule_net.attributes import ABBREVIATIONS
from nodule_net.evaluation.figures import draw_attribute_relations, draw_predictions, draw_slice_attention, lung_window

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_BYTES = 100_000  # they are tracked by git beside the metrics


def nodule(depth: int, seed: int) -> np.ndarray:
    """(depth, 64, 64) HU: noisy parenchyma with a soft-tissue disc, as the phantom draws."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:64, :64] - 31.5
    volume = rng.normal(-850, 20, (depth, 64, 64))
    volume[:, yy**2 + xx**2 < 15**2] = 40
    return volume.astype(np.float32)


def draw_all(folder) -> list:
    volumes = [nodule(5, 0), nodule(3, 1), nodule(12, 2)]
    weights = [np.full(len(v), 1 / len(v)) for v in volumes]
    draw_slice_attention(volumes, weights, ["a (5)", "b (3)", "c (12)"], folder / "fig5.png")
    matrix = np.random.default_rng(3).uniform(-1, 1, (9, 9))
    matrix[1, 2] = np.nan
    draw_attribute_relations(
        [("a", np.abs(matrix), "magnitude"), ("b", matrix, "weight"), ("d", matrix, "correlation")],
        ABBREVIATIONS,
        folder / "fig6.png",
    )
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
