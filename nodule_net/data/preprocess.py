"""Pure array functions of the extraction protocol (paper §3.1): no I/O here.

square box around the consensus box → crop (padding outside the image) → bilinear resize.
"""

from __future__ import annotations

import math

import numpy as np

# HU used where the square box reaches past the image edge: air, as outside the body.
OUTSIDE_HU = -1000.0


def square_box(i0: int, i1: int, j0: int, j1: int, extent_fraction: float = 0.8) -> tuple[int, int, int, int]:
    """A square (r0, r1, c0, c1), half-open, centred on the box [i0, i1) × [j0, j1).

    Its side is the smallest integer such that the larger of the box's row/column extents
    is at most ``extent_fraction`` of it (paper: "the larger diameter in x or y was 80% of
    the final lateral dimension"). The square may reach outside the image.
    """
    if not 0 < extent_fraction <= 1:
        raise ValueError(f"extent_fraction must be in (0, 1], got {extent_fraction}.")
    if i1 <= i0 or j1 <= j0:
        raise ValueError(f"empty box rows [{i0}, {i1}) × columns [{j0}, {j1}).")
    extent = max(i1 - i0, j1 - j0)
    # The small epsilon keeps exact cases (extent 8 at 0.8 → side 10) from rounding up.
    side = math.ceil(extent / extent_fraction - 1e-9)
    r0 = (i0 + i1 - side) // 2
    c0 = (j0 + j1 - side) // 2
    return r0, r0 + side, c0, c0 + side


def crop(image: np.ndarray, r0: int, r1: int, c0: int, c1: int, fill: float = OUTSIDE_HU) -> np.ndarray:
    """``image[r0:r1, c0:c1]`` of a (H, W) image, with ``fill`` where the window leaves it."""
    out = np.full((r1 - r0, c1 - c0), fill, dtype=np.float32)
    h, w = image.shape
    sr0, sr1, sc0, sc1 = max(r0, 0), min(r1, h), max(c0, 0), min(c1, w)
    if sr0 < sr1 and sc0 < sc1:
        out[sr0 - r0 : sr1 - r0, sc0 - c0 : sc1 - c0] = image[sr0:sr1, sc0:sc1]
    return out


def resize_bilinear(image: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resampling of a (H, W) image to (size, size).

    Pixel centres are aligned as in ``torch.nn.functional.interpolate(mode="bilinear",
    align_corners=False)``: output pixel u samples input coordinate (u + 0.5)·H/size − 0.5,
    clamped to the image.
    """
    h, w = image.shape
    ys = np.clip((np.arange(size) + 0.5) * h / size - 0.5, 0, h - 1)
    xs = np.clip((np.arange(size) + 0.5) * w / size - 0.5, 0, w - 1)
    y0 = np.floor(ys).astype(int)
    x0 = np.floor(xs).astype(int)
    y1 = np.minimum(y0 + 1, h - 1)
    x1 = np.minimum(x0 + 1, w - 1)
    wy = (ys - y0)[:, None]
    wx = (xs - x0)[None, :]
    img = image.astype(np.float64)
    top = img[y0][:, x0] * (1 - wx) + img[y0][:, x1] * wx
    bottom = img[y1][:, x0] * (1 - wx) + img[y1][:, x1] * wx
    return (top * (1 - wy) + bottom * wy).astype(np.float32)


def positive_slices(cmask: np.ndarray) -> np.ndarray:
    """(M,) indices along the last axis of a (I, J, K) mask that hold any positive pixel."""
    return np.flatnonzero(np.asarray(cmask, dtype=bool).any(axis=(0, 1)))


def nodule_patch(image: np.ndarray, bbox: tuple[int, ...], extent_fraction: float, size: int) -> np.ndarray:
    """One slice of a nodule: square crop around ``bbox`` (i0, i1, j0, j1, …) resized to (size, size)."""
    i0, i1, j0, j1 = bbox[:4]
    r0, r1, c0, c1 = square_box(i0, i1, j0, j1, extent_fraction=extent_fraction)
    return resize_bilinear(crop(image, r0, r1, c0, c1), size)
