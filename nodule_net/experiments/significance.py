"""Paired comparisons of two models' per-nodule errors (paper §4.1: t-tests on absolute errors).

Pure functions of arrays. The paper compares each attention variant with the
attention-free baseline by t-tests on the absolute errors of the predictions; we use
the paired test (the same nodules, scored by both models: ``scipy.stats.ttest_rel``),
per attribute and for the mean error over attributes of each nodule, and add a paired
percentile bootstrap 95% interval of the difference in mean MAE (``scipy.stats.bootstrap``
on the per-nodule differences, resampling nodules). Several variants tested against one
baseline are a family of tests: :func:`holm` adjusts their p-values (Holm's step-down
correction, ``statsmodels.stats.multitest.multipletests``), which the paper does not do.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import stats

BOOTSTRAP_RESAMPLES = 10_000
# Differences spread less than this (rating units) count as constant: rounding noise, no variance.
CONSTANT_SPREAD = 1e-9
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95


class PairedErrors(NamedTuple):
    nodule_id: np.ndarray  # (N,) the nodules both models scored, sorted
    a: np.ndarray  # (N, K) absolute errors of model a, columns in ``attributes`` order
    b: np.ndarray  # (N, K) absolute errors of model b
    attributes: tuple[str, ...]


class Comparison(NamedTuple):
    """Model a against model b on the same nodules; differences are a − b (negative: a better)."""

    n: int  # nodules
    p_values: dict[str, float]  # attribute (and "mean") → two-sided p of the paired t-test
    differences: dict[str, float]  # attribute (and "mean") → mean over nodules of (a − b): the MAE difference
    mean_difference: float  # mean over nodules of (a − b) in per-nodule mean absolute error
    ci_low: float  # bootstrap 95% interval of ``mean_difference``
    ci_high: float


def absolute_errors(predictions: pd.DataFrame, attributes: Sequence[str]) -> pd.DataFrame:
    """|pred − true| per nodule (rows indexed by ``nodule_id``) for ``attributes`` (columns)."""
    errors = {a: (predictions[f"pred_{a}"] - predictions[f"true_{a}"]).abs().to_numpy() for a in attributes}
    return pd.DataFrame(errors, index=pd.Index(predictions["nodule_id"], name="nodule_id"))


def pair_errors(a: pd.DataFrame, b: pd.DataFrame, what: str = "the two experiments") -> PairedErrors:
    """Align two experiments' absolute errors (from :func:`absolute_errors`) by nodule id.

    Raises ``ValueError`` unless both scored exactly the same nodules, each once, and
    the same attributes: a paired test on different nodules would compare different things.
    """
    for name, frame in (("first", a), ("second", b)):
        if frame.index.has_duplicates:
            raise ValueError(f"{what}: the {name} scored a nodule more than once; its predictions.csv is broken.")
    only_a, only_b = a.index.difference(b.index), b.index.difference(a.index)
    if len(only_a) or len(only_b):
        example = (list(only_a) or list(only_b))[0]
        raise ValueError(
            f"{what} did not score the same nodules ({len(only_a)} only in the first, {len(only_b)} "
            f"only in the second, e.g. {example}); run both on the same dataset and folds."
        )
    attributes = [c for c in a.columns if c in b.columns]
    ids = np.sort(a.index.to_numpy())
    return PairedErrors(
        ids, a.loc[ids, attributes].to_numpy(np.float64), b.loc[ids, attributes].to_numpy(np.float64), tuple(attributes)
    )


def paired_ttest(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided p-value of the paired t-test of ``a`` against ``b`` (N,); NaN if undefined.

    Undefined for fewer than 2 pairs or (up to rounding) identical differences: no variance.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    d = a - b
    if len(d) < 2 or np.ptp(d) <= CONSTANT_SPREAD:
        return float("nan")
    return float(stats.ttest_rel(a, b).pvalue)


def bootstrap_interval(
    differences: np.ndarray,
    seed: int = BOOTSTRAP_SEED,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-nodule ``differences`` (N,).

    Resampling the differences resamples nodules with both models' errors together
    (a paired bootstrap). Seeded, so the same errors give the same interval.
    """
    d = np.asarray(differences, dtype=np.float64)
    if len(d) < 2:
        return float("nan"), float("nan")
    if np.ptp(d) <= CONSTANT_SPREAD:  # every resample has the same mean
        return float(d.mean()), float(d.mean())
    result = stats.bootstrap(
        (d,),
        np.mean,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        random_state=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def compare(paired: PairedErrors, seed: int = BOOTSTRAP_SEED) -> Comparison:
    """Paired t-tests per attribute and on the per-nodule mean error, and the bootstrap interval."""
    p = {attr: paired_ttest(paired.a[:, k], paired.b[:, k]) for k, attr in enumerate(paired.attributes)}
    differences = {attr: float((paired.a[:, k] - paired.b[:, k]).mean()) for k, attr in enumerate(paired.attributes)}
    mean_a, mean_b = paired.a.mean(axis=1), paired.b.mean(axis=1)  # (N,) mean over attributes per nodule
    p["mean"] = paired_ttest(mean_a, mean_b)
    difference = mean_a - mean_b
    differences["mean"] = float(difference.mean())
    low, high = bootstrap_interval(difference, seed)
    return Comparison(len(difference), p, differences, differences["mean"], low, high)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values of one family of tests (K,), in the same order.

    ``statsmodels.stats.multitest.multipletests(method="holm")``: the family-wise error
    rate stays at most α over the K tests. A NaN (no test possible) stays NaN and is not
    counted in the family: it tested nothing.
    """
    # Imported here: statsmodels takes seconds to load. It ships no type information.
    from statsmodels.stats.multitest import multipletests  # type: ignore[import-untyped]

    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(p.shape, np.nan)
    tested = ~np.isnan(p)
    if tested.any():
        # multipletests' Holm branch runs gc.collect(), which walks the whole heap: 0.4 s a call
        # with DVC and torch loaded. Frozen objects are skipped, so it sees only its own.
        gc.freeze()
        try:
            adjusted[tested] = multipletests(p[tested], method="holm")[1]
        finally:
            gc.unfreeze()
    return [float(v) for v in adjusted]
