"""From the ragged dataset to packed, normalised, augmented training batches.

Pure numpy/torch functions (augmentation, normalisation, packing) first; the batch
iterator that combines them last. The whole dataset is in memory (DESIGN.md: one
contiguous read), so there is no DataLoader: on a 2-core CPU its workers would only
compete with the model for the cores.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np
import torch

from nodule_net.attributes import attribute_index, normalise
from nodule_net.store import NoduleDataset


class Batch(NamedTuple):
    """Several nodules packed along the slice axis (see :mod:`nodule_net.model`)."""

    images: torch.Tensor  # (S, H, W) float32, normalised
    segment_ids: torch.Tensor  # (S,) int64, nodule of each slice, 0..B-1
    targets: torch.Tensor  # (B, K) float32, ratings normalised to [0, 1]
    index: np.ndarray  # (B,) dataset indices of the nodules


def normalisation_stats(data: NoduleDataset, indices: Sequence[int]) -> tuple[float, float]:
    """Mean and std of all pixels of the given nodules (paper §3.2: the training set's)."""
    pixels = np.concatenate([data.slices(int(n)).ravel() for n in indices]).astype(np.float64)
    std = float(pixels.std())
    if std == 0.0:
        raise ValueError("The training nodules' pixels are all equal (std 0); the dataset looks empty or broken.")
    return float(pixels.mean()), std


def augment(volume: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random flip, rot90 and z-reversal of one nodule ``volume`` (M, H, W) (paper §3.2).

    The same flip and rotation apply to every slice. A vertical flip combined with
    rot90 k=0..3 reaches all 8 in-plane symmetries, horizontal flips included.
    """
    if rng.random() < 0.5:
        volume = volume[:, ::-1, :]  # vertical flip
    volume = np.rot90(volume, k=int(rng.integers(4)), axes=(1, 2))
    if rng.random() < 0.5:
        volume = volume[::-1]  # reverse slice order
    return np.ascontiguousarray(volume)


def targets_for(data: NoduleDataset, attribute: str | None) -> np.ndarray:
    """(N, K) training targets in [0, 1]: all 9 attributes, or only ``attribute``."""
    targets = normalise(data.ratings)
    if attribute is not None:
        targets = targets[:, [attribute_index(attribute)]]
    return targets.astype(np.float32)


def pack(volumes: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate nodules (M_i, H, W) into (S, H, W) plus their segment ids (S,)."""
    images = torch.from_numpy(np.concatenate(volumes).astype(np.float32, copy=False))
    depths = torch.tensor([len(v) for v in volumes])
    segment_ids = torch.repeat_interleave(torch.arange(len(volumes)), depths)
    return images, segment_ids


def iterate_batches(
    data: NoduleDataset,
    indices: Sequence[int],
    targets: np.ndarray,
    mean: float,
    std: float,
    batch_nodules: int,
    rng: np.random.Generator | None = None,
    augment_volumes: bool = False,
) -> Iterator[Batch]:
    """Yield packed batches of ``batch_nodules`` nodules.

    With ``rng`` the order is shuffled (paper: every epoch) and, if ``augment_volumes``,
    each nodule is augmented; without it the order is as given and nothing is random
    (evaluation).
    """
    if batch_nodules < 1:
        raise ValueError(f"train.batch_nodules={batch_nodules} must be at least 1 nodule per batch.")
    order = np.asarray(indices, dtype=np.int64)
    if rng is not None:
        order = rng.permutation(order)
    for start in range(0, len(order), batch_nodules):
        index = order[start : start + batch_nodules]
        volumes = [(data.slices(int(n)).astype(np.float32) - mean) / std for n in index]
        if augment_volumes and rng is not None:
            volumes = [augment(v, rng) for v in volumes]
        images, segment_ids = pack(volumes)
        yield Batch(images, segment_ids, torch.from_numpy(targets[index]), index)
