"""From the ragged dataset to packed, normalised, augmented batches on the training device.

The nodules a run reads (a fold's training part, its validation part) are normalised once
and kept on the training device as one tensor of slices plus offsets
(:class:`ResidentNodules`, ≈ 250 MB for all of LIDC), so a step copies nothing from the
host: it takes views of that tensor, augments them there with torch ops, and packs them.
The random decisions (order, flips, rotations, z-reversals) are drawn on the host from
the epoch's seeded numpy stream in a fixed order (shuffle, then per nodule flip, rot90 k,
z-reversal), so the same seeds give the same batches on every device and engine, and
resuming stays exact (tests/data/test_batches.py). There is no DataLoader: on a 2-core CPU its workers would only
compete with the model for the cores, and on a GPU the data is already there.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np
import torch

from nodule_net.attributes import attribute_index, normalise
from nodule_net.io.store import NoduleDataset


class Batch(NamedTuple):
    """Several nodules packed along the slice axis (see :mod:`nodule_net.model.net`)."""

    images: torch.Tensor  # (S, H, W) float32, normalised
    segment_ids: torch.Tensor  # (S,) int64, nodule of each slice, 0..B-1
    targets: torch.Tensor  # (B, K) float32, ratings normalised to [0, 1]
    # The field shadows tuple.index, which a NamedTuple cannot help; nothing here calls tuple.index.
    index: np.ndarray  # type: ignore[assignment]  # (B,) dataset indices of the nodules


def batch_to(batch: Batch, device: torch.device) -> Batch:
    """``batch`` with its tensors on ``device`` (the nodule index stays a numpy array)."""
    return batch._replace(
        images=batch.images.to(device), segment_ids=batch.segment_ids.to(device), targets=batch.targets.to(device)
    )


class ResidentNodules(NamedTuple):
    """Some nodules of a dataset, normalised, on one device: one tensor of slices plus offsets."""

    images: torch.Tensor  # (S, H, W) float32, normalised, on the device
    offsets: np.ndarray  # (n+1,) int64 on the host: nodule i owns images[offsets[i]:offsets[i+1]]
    targets: torch.Tensor  # (n, K) float32 on the device
    index: np.ndarray  # type: ignore[assignment]  # (n,) dataset index of each nodule (shadows tuple.index)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def depths(self) -> np.ndarray:
        """(n,) slices per nodule."""
        return np.diff(self.offsets)


def normalisation_stats(data: NoduleDataset, indices: Sequence[int] | np.ndarray) -> tuple[float, float]:
    """Mean and std of all pixels of the given nodules (paper §3.2: the training set's)."""
    pixels = np.concatenate([data.slices(int(n)).ravel() for n in indices]).astype(np.float64)
    std = float(pixels.std())
    if std == 0.0:
        raise ValueError("The training nodules' pixels are all equal (std 0); the dataset looks empty or broken.")
    return float(pixels.mean()), std


def targets_for(data: NoduleDataset, attribute: str | None) -> np.ndarray:
    """(N, K) training targets in [0, 1]: all 9 attributes, or only ``attribute``."""
    targets = normalise(data.ratings)
    if attribute is not None:
        targets = targets[:, [attribute_index(attribute)]]
    return targets.astype(np.float32)


def resident_nodules(
    data: NoduleDataset,
    indices: Sequence[int] | np.ndarray,
    targets: np.ndarray,
    mean: float,
    std: float,
    device: torch.device | str = "cpu",
) -> ResidentNodules:
    """The nodules ``indices`` (n,) of ``data``, normalised by ``mean``/``std``, with their rows of ``targets``
    (N, K), on ``device``."""
    index = np.asarray(indices, dtype=np.int64)
    depths = data.n_slices[index]
    # float32 arithmetic on the host, element by element, so every engine and device gets the same pixels bit for bit.
    images = np.concatenate([data.slices(int(n)) for n in index]).astype(np.float32)
    images -= mean
    images /= std
    offsets = np.concatenate([[0], np.cumsum(depths)]).astype(np.int64)
    return ResidentNodules(
        torch.from_numpy(images).to(device), offsets, torch.from_numpy(targets[index]).to(device), index
    )


# --- augmentation (paper §3.2) -------------------------------------------------------------


class Augmentation(NamedTuple):
    """One nodule's random transform: vertical flip, then rot90 ``k`` times in-plane, then z-reversal."""

    flip: bool
    k: int  # 0..3
    reverse: bool


def draw_augmentation(rng: np.random.Generator) -> Augmentation:
    """The three draws of one nodule, in the stream's order (flip, rot90 k, z-reversal)."""
    flip = bool(rng.random() < 0.5)
    k = int(rng.integers(4))
    return Augmentation(flip, k, bool(rng.random() < 0.5))


def apply_augmentation(volume: torch.Tensor, aug: Augmentation) -> torch.Tensor:
    """``volume`` (M, H, W) transformed by ``aug``, on its own device; the same flip and
    rotation for every slice. A vertical flip with rot90 k = 0..3 reaches all 8 in-plane
    symmetries, horizontal flips included.

    As numpy defines rot90 over (H, W), k = 1 flips W then swaps H and W, k = 2 flips both,
    k = 3 flips H then swaps; flips commute, so the whole transform is one ``flip`` (one
    copy kernel, or none) and, for odd k, a transposed view.
    """
    flip_h = aug.flip != (aug.k in (2, 3))
    flip_w = aug.k in (1, 2)
    dims = [d for d, on in ((0, aug.reverse), (1, flip_h), (2, flip_w)) if on]
    out = volume.flip(dims) if dims else volume
    return out.transpose(1, 2) if aug.k % 2 else out


def augment(volume: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random flip, rot90 and z-reversal of one nodule ``volume`` (M, H, W), as a numpy array."""
    out = apply_augmentation(torch.from_numpy(np.ascontiguousarray(volume)), draw_augmentation(rng))
    return out.contiguous().numpy()


# --- batches -------------------------------------------------------------------------------


def iterate_resident(
    nodules: ResidentNodules,
    batch_nodules: int,
    rng: np.random.Generator | None = None,
    augment_volumes: bool = False,
) -> Iterator[Batch]:
    """Yield packed batches of ``batch_nodules`` nodules, on the nodules' device.

    With ``rng`` the order is shuffled (paper: every epoch) and, if ``augment_volumes``,
    each nodule is augmented; without it the order is as given and nothing is random
    (evaluation). A step launches at most one copy kernel per nodule (its augmentation)
    plus the packing ``cat``; targets and segment ids are sliced from tensors sent to the
    device once per pass, so nothing waits on the host.
    """
    if batch_nodules < 1:
        raise ValueError(f"train.batch_nodules={batch_nodules} must be at least 1 nodule per batch.")
    n = len(nodules)
    order = rng.permutation(n) if rng is not None else np.arange(n)  # the draw rng.permutation(indices) makes
    device = nodules.images.device
    depths = nodules.depths[order]
    starts = range(0, n, batch_nodules)
    # A nodule's segment id is its place in its batch; (S,) for the whole pass.
    segment_ids = torch.from_numpy(np.repeat(np.arange(n) % batch_nodules, depths)).to(device)
    targets = nodules.targets[torch.from_numpy(order).to(device)]  # (n, K) in this pass's order
    slice_starts = np.concatenate([[0], np.cumsum(depths)])
    offsets = nodules.offsets
    for s in starts:
        local = order[s : s + batch_nodules]
        if rng is None:  # consecutive nodules, untouched: one view of the resident tensor
            images = nodules.images[offsets[local[0]] : offsets[local[-1] + 1]]
        else:
            volumes = [nodules.images[offsets[i] : offsets[i + 1]] for i in local]
            if augment_volumes:
                volumes = [apply_augmentation(v, draw_augmentation(rng)) for v in volumes]
            images = volumes[0] if len(volumes) == 1 else torch.cat(volumes)
        e = min(s + batch_nodules, n)
        yield Batch(images, segment_ids[slice_starts[s] : slice_starts[e]], targets[s:e], nodules.index[local])


def iterate_batches(
    data: NoduleDataset,
    indices: Sequence[int] | np.ndarray,
    targets: np.ndarray,
    mean: float,
    std: float,
    batch_nodules: int,
    rng: np.random.Generator | None = None,
    augment_volumes: bool = False,
    device: torch.device | str = "cpu",
) -> Iterator[Batch]:
    """:func:`iterate_resident` over the nodules ``indices`` of ``data``, moved to ``device`` first.

    Training and inference build the :class:`ResidentNodules` once per run instead.
    """
    if batch_nodules < 1:
        raise ValueError(f"train.batch_nodules={batch_nodules} must be at least 1 nodule per batch.")
    return iterate_resident(
        resident_nodules(data, indices, targets, mean, std, device), batch_nodules, rng, augment_volumes
    )
