"""Mean absolute error on the original rating scales (paper §3.3, eq. 9).

Pure numpy; callers de-normalise the model's [0, 1] scores first with
:func:`nodule_net.attributes.denormalise`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from nodule_net.attributes import ABBREVIATIONS, ATTRIBUTES, attribute_index


def mae_per_attribute(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(K,) mean over nodules of |predicted − truth|; both (N, K) on the same scale."""
    predicted, truth = np.asarray(predicted, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    if predicted.shape != truth.shape or predicted.ndim != 2 or len(predicted) == 0:
        raise ValueError(
            f"Predictions {predicted.shape} and ground truth {truth.shape} must be the same non-empty (N, K) shape."
        )
    return np.abs(predicted - truth).mean(axis=0)


def mae_report(predicted: np.ndarray, truth: np.ndarray, attributes: Sequence[str] = ATTRIBUTES) -> dict[str, float]:
    """``{attribute: MAE, ..., "mean": mean over attributes}`` on the original scales."""
    per_attribute = mae_per_attribute(predicted, truth)
    report = {name: float(v) for name, v in zip(attributes, per_attribute, strict=True)}
    report["mean"] = float(per_attribute.mean())
    return report


def train_mean_predictor(train_truth: np.ndarray, n_test: int) -> np.ndarray:
    """The baseline: predict the training set's mean rating for every test nodule → (n_test, K)."""
    return np.repeat(np.asarray(train_truth, dtype=np.float64).mean(axis=0, keepdims=True), n_test, axis=0)


# Rows of `format_mae_table`, in the order a reader compares them.
MAE_ROWS = (("mae", "final"), ("aux_mae", "auxiliary (ASCMM)"), ("baseline_mae", "train-mean baseline"))


def format_mae_table(metrics: dict) -> str:
    """``metrics/mae.json`` (pooled numbers) as a Markdown table in the paper's column order."""
    present = [key for key, _ in MAE_ROWS if key in metrics]
    if not present:
        raise ValueError("Not an MAE metrics file: it has none of " + ", ".join(k for k, _ in MAE_ROWS) + ".")
    columns = [a for a in ATTRIBUTES if a in metrics[present[0]]]
    header = [ABBREVIATIONS[attribute_index(a)] for a in columns] + ["Mean"]
    lines = ["| predictions | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    for key, label in MAE_ROWS:
        if key in metrics:
            values = [metrics[key][a] for a in columns] + [metrics[key]["mean"]]
            lines.append(f"| {label} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    return "\n".join(lines)


# Columns after the attributes in `format_mae_comparison`: the summary's groups that hold a mean only.
COMPARISON_MEANS = (("aux_mae", "Aux"), ("baseline_mae", "Baseline"))
MISSING = "-"  # not predicted (as DVC prints it)


def format_mae_comparison(summaries: Mapping[str, dict]) -> str:
    """Experiments side by side, one row each (``{name: metrics}``, each a ``metrics/summary.json`` or
    ``metrics/mae.json``): the final MAE per attribute in the paper's column order and its mean, then
    the means of the auxiliary (ASCMM) predictions and of the train-mean baseline.

    A Markdown table with aligned columns, then two legend lines; ``-`` where a model predicts no such value.
    """
    if not summaries:
        raise ValueError("No experiments to compare; name at least one.")
    for name, metrics in summaries.items():
        if "mae" not in metrics:
            raise ValueError(f"Experiment {name} has no `mae` metrics; did its evaluate stage run?")
    columns = [a for a in ATTRIBUTES if any(a in m["mae"] for m in summaries.values())]
    header = ["experiment", *(ABBREVIATIONS[attribute_index(a)] for a in columns), "Mean"]
    header += [label for _, label in COMPARISON_MEANS]
    rows = []
    for name, metrics in summaries.items():
        values = [metrics["mae"].get(a) for a in [*columns, "mean"]]
        values += [metrics.get(key, {}).get("mean") for key, _ in COMPARISON_MEANS]
        rows.append([name, *(MISSING if v is None else f"{v:.3f}" for v in values)])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        """Names left-aligned, numbers right-aligned, each padded to its column's width."""
        padded = [cells[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|"
    legend = [
        "MAE on the original rating scales, pooled over the test folds; Mean: over the attributes the model scores;",
        f"Aux: the ASCMM auxiliary predictions' mean; Baseline: the train-mean predictor's mean; {MISSING}: none.",
    ]
    return "\n".join([line(header), rule, *map(line, rows), "", *legend])
