"""The training loss (paper eq. 8) and the one benign/malignant label rule (Table 5).

The loss sums squared errors over nodules and attributes, as the authors' code does:
``λ·Σ(aux − y)² + Σ(final − y)²`` on ratings normalised to [0, 1]. A benign/malignant
classifier (``model.malignancy: classify``) replaces its malignancy term by the binary
cross-entropy of P(malignant) against the nodule's label, summed over nodules too.

The label rule is the one the evaluation's Table 5 uses as well
(:func:`nodule_net.evaluation.analysis.malignancy_labels`): a mean malignancy rating above
3 is malignant, below 3 benign, exactly 3 counts for neither.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from nodule_net.attributes import MALIGNANCY_CUTOFF, N_ATTRIBUTES, attribute_index, normalise
from nodule_net.model.net import ModelOutput

# The benign/malignant cutoff on malignancy's [0, 1] training scale (rating 3 → 0.5).
MALIGNANT_ABOVE = float(normalise(np.full(N_ATTRIBUTES, MALIGNANCY_CUTOFF))[attribute_index("malignancy")])
# Mean ratings are means of 1 to 4 readers' integer ratings, so one that is not exactly the cutoff lies at
# least 1/4 of a rating (1/16 on the training scale) from it: the tolerance only absorbs float32 rounding.
CUTOFF_TOLERANCE = 1e-4

Values = TypeVar("Values", torch.Tensor, np.ndarray)


def benign_malignant_labels(malignancy: Values) -> tuple[Values, Values]:
    """Normalised mean malignancy (N,), a tensor or an array → malignant (N,) bool and counted (N,) bool.

    ``counted`` is False for a nodule rated exactly at the cutoff, which is neither benign nor malignant.
    """
    return malignancy > MALIGNANT_ABOVE, abs(malignancy - MALIGNANT_ABOVE) > CUTOFF_TOLERANCE


def _attribute_loss(scores: torch.Tensor, targets: torch.Tensor, classify_column: int | None) -> torch.Tensor:
    """Σ squared errors over (B, K); ``classify_column`` instead adds its masked, summed BCE."""
    if classify_column is None:
        return ((scores - targets) ** 2).sum()
    regressed = [k for k in range(targets.shape[1]) if k != classify_column]
    loss = ((scores[:, regressed] - targets[:, regressed]) ** 2).sum()
    malignant, counted = benign_malignant_labels(targets[:, classify_column])
    bce = F.binary_cross_entropy(scores[:, classify_column], malignant.to(targets.dtype), reduction="none")  # (B,)
    # where(), not a product with the mask, so a rated-3 nodule adds exactly no gradient.
    return loss + torch.where(counted, bce, torch.zeros_like(bce)).sum()


def loss_fn(
    output: ModelOutput, targets: torch.Tensor, lambda_aux: float, classify_column: int | None = None
) -> torch.Tensor:
    """Eq. 8 with summed squared errors: λ·Σ(aux − y)² + Σ(final − y)² over ``targets`` (B, K) in [0, 1].

    With ``classify_column`` (``model.malignancy: classify``) that output is P(malignant):
    its term is the binary cross-entropy against the benign/malignant label, summed over
    nodules like the squared errors, nodules rated exactly 3 masked out; the auxiliary
    (ASCMM) malignancy output gets the same BCE and mask.
    """
    loss = _attribute_loss(output.scores, targets, classify_column)
    if output.aux_scores is not None:
        loss = loss + lambda_aux * _attribute_loss(output.aux_scores, targets, classify_column)
    return loss
