"""Device-resident batches: the same nodules, pixels, augmentations and random stream as the
host-side pipeline they replaced (kept below as the reference), so resuming stays exact."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from nodule_net.data.batches import (
    Augmentation,
    apply_augmentation,
    iterate_batches,
    iterate_resident,
    normalisation_stats,
    resident_nodules,
    targets_for,
)
from synthetic_nodules import make_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


# --- the host-side pipeline as it was (numpy augmentation, one batch built per step) ---------


def reference_augment(volume: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.5:
        volume = volume[:, ::-1, :]  # vertical flip
    volume = np.rot90(volume, k=int(rng.integers(4)), axes=(1, 2))
    if rng.random() < 0.5:
        volume = volume[::-1]  # reverse slice order
    return np.ascontiguousarray(volume)


def reference_batches(data, indices, targets, mean, std, batch_nodules, rng=None, augment_volumes=False):
    order = np.asarray(indices, dtype=np.int64)
    if rng is not None:
        order = rng.permutation(order)
    for start in range(0, len(order), batch_nodules):
        index = order[start : start + batch_nodules]
        volumes = [(data.slices(int(n)).astype(np.float32) - mean) / std for n in index]
        if augment_volumes and rng is not None:
            volumes = [reference_augment(v, rng) for v in volumes]
        images = torch.from_numpy(np.concatenate(volumes).astype(np.float32, copy=False))
        segment_ids = torch.repeat_interleave(torch.arange(len(volumes)), torch.tensor([len(v) for v in volumes]))
        yield images, segment_ids, torch.from_numpy(targets[index]), index


class FixedDraws:
    """A stand-in rng that returns set decisions, to apply one known transform with the reference."""

    def __init__(self, aug: Augmentation) -> None:
        self.values = iter([0.0 if aug.flip else 0.9, aug.k, 0.0 if aug.reverse else 0.9])

    def random(self) -> float:
        return next(self.values)

    def integers(self, high: int) -> int:
        return next(self.values)


# --- tests -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("flip", "k", "reverse"), list(itertools.product([False, True], range(4), [False, True])))
def test_each_of_the_16_transforms_equals_numpy(flip: bool, k: int, reverse: bool) -> None:
    volume = np.random.default_rng(0).normal(size=(3, 5, 5)).astype(np.float32)  # no symmetry to hide a mistake
    aug = Augmentation(flip, k, reverse)
    expected = reference_augment(volume, FixedDraws(aug))
    np.testing.assert_array_equal(apply_augmentation(torch.from_numpy(volume), aug).numpy(), expected)


def test_the_16_transforms_are_distinct() -> None:
    volume = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(2, 4, 4)
    outs = {
        apply_augmentation(volume, Augmentation(*a)).contiguous().numpy().tobytes()
        for a in itertools.product([False, True], range(4), [False, True])
    }
    assert len(outs) == 16


@pytest.mark.parametrize("batch_nodules", [1, 3])
@pytest.mark.parametrize("augment_volumes", [True, False])
def test_batches_equal_the_host_pipeline_for_the_same_seed(batch_nodules: int, augment_volumes: bool) -> None:
    data = make_dataset(n_nodules=11, size=8, max_depth=5, seed=3)
    indices = np.array([9, 0, 4, 2, 7, 1, 10, 5])
    targets = targets_for(data, None)
    mean, std = normalisation_stats(data, indices)
    nodules = resident_nodules(data, indices, targets, mean, std)
    for epoch in range(3):  # each epoch its own stream, as fit draws them
        ours_rng, their_rng = np.random.default_rng([0, 2, epoch]), np.random.default_rng([0, 2, epoch])
        ours = list(iterate_resident(nodules, batch_nodules, ours_rng, augment_volumes))
        theirs = list(reference_batches(data, indices, targets, mean, std, batch_nodules, their_rng, augment_volumes))
        assert len(ours) == len(theirs) == -(-len(indices) // batch_nodules)
        for batch, (images, segment_ids, batch_targets, index) in zip(ours, theirs, strict=True):
            assert torch.equal(batch.images, images)  # bit-identical pixels: normalisation and transforms
            assert torch.equal(batch.segment_ids, segment_ids)
            assert torch.equal(batch.targets, batch_targets)
            np.testing.assert_array_equal(batch.index, index)
        # Both consumed exactly the same draws, so the next draw (a resumed epoch's) agrees too.
        assert ours_rng.random() == their_rng.random()


def test_augmentation_reaches_every_transform_over_an_epoch() -> None:
    data = make_dataset(n_nodules=200, size=4, max_depth=1, seed=0)
    nodules = resident_nodules(data, range(200), targets_for(data, None), 0.0, 1.0)
    seen = set()
    for batch in iterate_resident(nodules, 1, np.random.default_rng(0), augment_volumes=True):
        original = nodules.images[nodules.offsets[batch.index[0]] : nodules.offsets[batch.index[0] + 1]]
        matches = [
            a
            for a in itertools.product([False, True], range(4), [False, True])
            if torch.equal(apply_augmentation(original, Augmentation(*a)), batch.images)
        ]
        assert matches  # every batch is one of the 16 transforms of its nodule
        seen.add(matches[0][:2])  # one slice: z-reversal is invisible, so count the 8 in-plane ones
    assert len(seen) == 8


@pytest.mark.slow
def test_evaluation_batches_are_views_of_the_resident_tensor_in_order() -> None:
    data = make_dataset(n_nodules=7, size=8, max_depth=4, seed=1)
    targets = targets_for(data, None)
    nodules = resident_nodules(data, [6, 2, 3, 0], targets, -800.0, 100.0)
    torch.testing.assert_close(nodules.images[: data.n_slices[6]], torch.from_numpy((data.slices(6) + 800) / 100))
    assert nodules.offsets.tolist() == np.concatenate([[0], np.cumsum(data.n_slices[[6, 2, 3, 0]])]).tolist()
    batches = list(iterate_resident(nodules, 3))
    assert [b.index.tolist() for b in batches] == [[6, 2, 3], [0]]
    assert batches[0].images.data_ptr() == nodules.images.data_ptr()  # no copy: a slice of the resident tensor
    assert batches[1].images.data_ptr() == nodules.images[nodules.offsets[3]].data_ptr()
    assert batches[0].segment_ids.tolist() == np.repeat([0, 1, 2], data.n_slices[[6, 2, 3]]).tolist()
    np.testing.assert_array_equal(batches[1].targets.numpy(), targets[[0]])


def test_bad_batch_size_is_a_user_error() -> None:
    data = make_dataset(n_nodules=2, size=4, max_depth=1, seed=0)
    with pytest.raises(ValueError, match="batch_nodules"):
        iterate_batches(data, [0, 1], targets_for(data, None), 0.0, 1.0, 0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_batches_equal_cpu_batches_without_a_host_sync() -> None:
    data = make_dataset(n_nodules=9, size=8, max_depth=5, seed=4)
    targets = targets_for(data, None)
    cpu = resident_nodules(data, range(9), targets, -800.0, 100.0)
    gpu = resident_nodules(data, range(9), targets, -800.0, 100.0, "cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any device→host wait in the loop below raises
    try:
        gpu_batches = list(iterate_resident(gpu, 2, np.random.default_rng(5), augment_volumes=True))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for a, b in zip(iterate_resident(cpu, 2, np.random.default_rng(5), augment_volumes=True), gpu_batches, strict=True):
        assert torch.equal(a.images, b.images.cpu()) and torch.equal(a.segment_ids, b.segment_ids.cpu())
