"""The one benign/malignant label rule: what training and Table 5 each used, on every mean rating LIDC can hold."""

from __future__ import annotations

import itertools

import numpy as np
import torch

from nodule_net.attributes import N_ATTRIBUTES, attribute_index, normalise
from nodule_net.data.batches import targets_for
from nodule_net.evaluation.analysis import malignancy_labels
from nodule_net.model.loss import MALIGNANT_ABOVE, benign_malignant_labels
from synthetic_nodules import make_dataset

MAL = attribute_index("malignancy")


def lidc_mean_ratings() -> np.ndarray:
    """Every mean malignancy rating of 1 to 4 readers' integer ratings 1..5, as the dataset computes it."""
    means = {float(np.mean(r)) for n in range(1, 5) for r in itertools.combinations_with_replacement(range(1, 6), n)}
    return np.array(sorted(means))


def training_scale(ratings: np.ndarray) -> torch.Tensor:
    """Mean malignancy ratings (N,) as training's targets hold them: normalised, float32."""
    dataset = make_dataset(n_nodules=len(ratings))
    dataset.ratings[:, MAL] = ratings
    return torch.from_numpy(targets_for(dataset, None)[:, MAL])


def test_both_former_rules_agree_with_the_one_rule_on_every_lidc_mean() -> None:
    ratings = lidc_mean_ratings()
    assert len(ratings) == 25 and ratings.min() == 1 and ratings.max() == 5 and 3.0 in ratings
    # Training: normalised float32 targets, cutoff 0.5, tolerance 1e-4 on that scale.
    targets = training_scale(ratings)
    malignant, counted = benign_malignant_labels(targets)
    assert torch.equal(malignant, targets > MALIGNANT_ABOVE)
    assert torch.equal(counted, (targets - MALIGNANT_ABOVE).abs() > 1e-4)
    # Table 5: mean ratings in float64, cutoff 3, tolerance 1e-6 on the rating scale, NaN for excluded.
    former = (ratings > 3.0).astype(np.float64)
    former[np.isclose(ratings, 3.0, rtol=0, atol=1e-6)] = np.nan
    np.testing.assert_array_equal(malignancy_labels(ratings), former)
    # And the two agree with each other: exactly the means of 3 are left out.
    np.testing.assert_array_equal(counted.numpy(), ratings != 3.0)
    np.testing.assert_array_equal(malignant.numpy(), ratings > 3.0)


def test_the_cutoff_is_rating_3_on_the_training_scale() -> None:
    assert MALIGNANT_ABOVE == 0.5 == normalise(np.full(N_ATTRIBUTES, 3.0))[MAL]
    malignant, counted = benign_malignant_labels(np.array([0.25, 0.5, 0.5 + 1 / 16, 0.5 + 1e-5]))
    np.testing.assert_array_equal(malignant, [False, False, True, True])
    np.testing.assert_array_equal(counted, [True, False, True, False])  # within float32 rounding of 3: neither
