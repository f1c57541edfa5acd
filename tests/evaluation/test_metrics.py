"""MAE on the original rating scales, de-normalisation, the train-mean baseline."""

from __future__ import annotations

import numpy as np
import pytest

from nodule_net.attributes import ATTRIBUTES, denormalise
from nodule_net.evaluation.metrics import format_mae_comparison, mae_per_attribute, mae_report, train_mean_predictor


def test_denormalise_columns_uses_each_attributes_range() -> None:
    # internal structure spans 1–4, calcification 1–6, malignancy 1–5
    scores = np.array([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5], [1.0, 1.0, 1.0]])
    expected = np.array([[1.0, 1.0, 1.0], [2.5, 3.5, 3.0], [4.0, 6.0, 5.0]])
    np.testing.assert_allclose(denormalise(scores, ("internal_structure", "calcification", "malignancy")), expected)


def test_mae_by_hand() -> None:
    predicted = np.array([[1.0, 2.0], [3.0, 5.0], [2.0, 2.0]])
    truth = np.array([[2.0, 2.0], [3.0, 3.0], [4.5, 1.0]])
    # |errors|: column 0 → 1, 0, 2.5 (mean 3.5/3); column 1 → 0, 2, 1 (mean 1)
    np.testing.assert_allclose(mae_per_attribute(predicted, truth), [3.5 / 3, 1.0])
    report = mae_report(predicted, truth, ("subtlety", "malignancy"))
    assert report == pytest.approx({"subtlety": 3.5 / 3, "malignancy": 1.0, "mean": (3.5 / 3 + 1.0) / 2})


def test_mae_report_of_normalised_predictions_after_denormalising() -> None:
    truth = np.tile([3.0, 2.0, 4.0, 3.0, 3.0, 2.0, 1.0, 5.0, 3.0], (2, 1))
    scores = np.full((2, 9), 0.5)  # → midpoints 3, 2.5, 3.5, 3, 3, 3, 3, 3, 3
    report = mae_report(denormalise(scores, ATTRIBUTES), truth)
    expected = [0.0, 0.5, 0.5, 0.0, 0.0, 1.0, 2.0, 2.0, 0.0]
    assert [report[a] for a in ATTRIBUTES] == pytest.approx(expected)
    assert report["mean"] == pytest.approx(6.0 / 9)


def test_train_mean_predictor() -> None:
    train = np.array([[1.0, 5.0], [3.0, 2.0]])
    np.testing.assert_allclose(train_mean_predictor(train, 3), [[2.0, 3.5]] * 3)


def test_mae_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="same non-empty"):
        mae_per_attribute(np.zeros((3, 9)), np.zeros((3, 8)))


def test_mae_comparison_puts_experiments_side_by_side_in_the_papers_column_order() -> None:
    full = dict.fromkeys(ATTRIBUTES, 0.5) | {"mean": 0.5}
    table = format_mae_comparison(
        {
            "t1-full": {"mae": full, "aux_mae": {"mean": 0.6}, "baseline_mae": {"mean": 0.9}},
            "s2-malignancy": {"mae": {"malignancy": 0.25, "mean": 0.25}, "baseline_mae": {"mean": 0.75}},
        }
    )
    header, rule, first, second, blank, *legend = table.splitlines()
    assert header.split("|")[1:-1] == [
        " experiment    ",
        *(f" {a:>5} " for a in ("Sub", "IS", "Cal", "Sph", "Mar", "Lob", "Spi", "Tex", "Mal", "Mean", "Aux")),
        " Baseline ",
    ]
    assert len({len(line) for line in (header, rule, first, second)}) == 1  # aligned columns
    assert first.split("|")[1:-1] == [" t1-full       ", *[" 0.500 "] * 10, " 0.600 ", "    0.900 "]
    assert [c.strip() for c in second.split("|")[1:-1]] == ["s2-malignancy", *["-"] * 8, "0.250", "0.250", "-", "0.750"]
    assert blank == "" and len(legend) == 2 and "Baseline: the train-mean predictor" in legend[1]


def test_mae_comparison_names_the_experiment_without_mae() -> None:
    with pytest.raises(ValueError, match="Experiment t2-sam has no `mae` metrics"):
        format_mae_comparison({"t2-sam": {"sam": {"nonend_to_end_ratio": 1.0}}})
    with pytest.raises(ValueError, match="name at least one"):
        format_mae_comparison({})
