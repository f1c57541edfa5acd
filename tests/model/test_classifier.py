"""`model.malignancy: classify` (Table 5): masked BCE loss, validation criterion, config checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nodule_net.attributes import ATTRIBUTES
from nodule_net.config import ModelConfig
from nodule_net.model.loss import loss_fn
from nodule_net.model.net import ModelOutput
from nodule_net.training.run import validation_mae

MAL = ATTRIBUTES.index("malignancy")


def outputs(requires_grad: bool = False) -> tuple[ModelOutput, torch.Tensor]:
    """Three nodules with mean malignancy 3, 4 and 2 (normalised 0.5, 0.75, 0.25); scores off by 0.1 elsewhere."""
    targets = torch.full((3, 9), 0.5)
    targets[:, MAL] = torch.tensor([0.5, 0.75, 0.25])
    scores = (targets + 0.1).clone()
    scores[:, MAL] = torch.tensor([0.3, 0.8, 0.4])  # P(malignant)
    aux = (targets - 0.2).clone()
    aux[:, MAL] = torch.tensor([0.9, 0.5, 0.5])
    return ModelOutput(scores.requires_grad_(requires_grad), aux.requires_grad_(requires_grad), None, None), targets


def test_classifier_loss_is_squared_error_plus_summed_bce_without_rated_3() -> None:
    out, targets = outputs()
    # final: 3 nodules × 8 attributes × 0.1² + BCE(0.8, 1) + BCE(0.4, 0); aux: × 0.2² + BCE(0.5, 1) + BCE(0.5, 0)
    final = 24 * 0.01 - math.log(0.8) - math.log(0.6)
    aux = 24 * 0.04 - 2 * math.log(0.5)
    assert loss_fn(out, targets, 0.1, MAL).item() == pytest.approx(final + 0.1 * aux, rel=1e-5)
    # Regression mode: the malignancy column is a squared error like the rest.
    regress = 24 * 0.01 + 0.2**2 + 0.05**2 + 0.15**2 + 0.1 * (24 * 0.04 + 0.4**2 + 0.25**2 + 0.25**2)
    assert loss_fn(out, targets, 0.1).item() == pytest.approx(regress, rel=1e-5)


def test_classifier_loss_gives_no_gradient_through_nodules_rated_3() -> None:
    out, targets = outputs(requires_grad=True)
    loss_fn(out, targets, 0.1, MAL).backward()
    assert out.scores.grad[0, MAL].item() == 0.0 and out.aux_scores.grad[0, MAL].item() == 0.0
    assert out.scores.grad[1, MAL].item() == pytest.approx(-1 / 0.8)  # d BCE(p, 1)/dp = −1/p
    assert out.scores.grad[2, MAL].item() == pytest.approx(1 / 0.6)  # d BCE(p, 0)/dp = 1/(1 − p)
    assert out.aux_scores.grad[1, MAL].item() == pytest.approx(0.1 * -1 / 0.5)
    # The rated-3 nodule's malignancy output does not enter the loss at all, even saturated.
    moved, _ = outputs()
    moved.scores[0, MAL] = 1.0
    assert loss_fn(moved, targets, 0.1, MAL).item() == pytest.approx(loss_fn(out, targets, 0.1, MAL).item())


def test_validation_criterion_of_a_classifier_is_mae_of_the_other_8_plus_mean_bce() -> None:
    targets = np.zeros((3, 9), dtype=np.float32)
    targets[:, MAL] = [0.5, 1.0, 0.0]
    predicted = targets + 0.25
    predicted[:, MAL] = [0.9, 0.7, 0.2]
    # rating ranges of the 8 regressed attributes: 4 3 5 4 4 4 4 4 → mean MAE 0.25 × 4 = 1
    expected = 1.0 + (-math.log(0.7) - math.log(0.8)) / 2
    assert validation_mae(predicted, targets, ATTRIBUTES, MAL) == pytest.approx(expected, rel=1e-5)
    assert validation_mae(predicted[:, [MAL]], targets[:, [MAL]], ("malignancy",), 0) == pytest.approx(
        expected - 1.0, rel=1e-5
    )  # a malignancy-only classifier: the BCE alone


def test_config_knows_the_classified_column_and_rejects_bad_settings() -> None:
    assert ModelConfig().classify_column is None
    assert ModelConfig(malignancy="classify").classify_column == MAL
    assert ModelConfig(malignancy="classify", attribute="malignancy").classify_column == 0
    with pytest.raises(ValueError, match=r"model\.malignancy"):
        ModelConfig(malignancy="probability")
    with pytest.raises(ValueError, match=r"model\.attribute"):
        ModelConfig(malignancy="classify", attribute="calcification")
