import numpy as np
import pytest
import torch

from nodule_net.data.preprocess import crop, nodule_patch, positive_slices, resize_bilinear, square_box


@pytest.mark.parametrize(
    "box, expected",
    [
        # 8 × 4 box: side = 8 / 0.8 = 10, centred on rows 10..18 and columns 20..24.
        ((10, 18, 20, 24), (9, 19, 17, 27)),
        # 5 × 5: side = ceil(6.25) = 7.
        ((0, 5, 0, 5), (-1, 6, -1, 6)),
        # the larger extent is the columns: 3 × 16 → side 20.
        ((100, 103, 50, 66), (91, 111, 48, 68)),
    ],
)
def test_square_box_makes_larger_extent_80_percent(box, expected):
    r0, r1, c0, c1 = square_box(*box, extent_fraction=0.8)
    assert (r0, r1, c0, c1) == expected
    assert r1 - r0 == c1 - c0
    extent = max(box[1] - box[0], box[3] - box[2])
    assert extent <= 0.8 * (r1 - r0) < extent + 0.8  # smallest such side
    assert r0 <= box[0] and r1 >= box[1] and c0 <= box[2] and c1 >= box[3]


def test_square_box_rejects_bad_input():
    with pytest.raises(ValueError, match="extent_fraction"):
        square_box(0, 4, 0, 4, extent_fraction=1.5)
    with pytest.raises(ValueError, match="empty box"):
        square_box(4, 4, 0, 4)


def test_crop_pads_outside_the_image_with_fill():
    image = np.arange(16, dtype=np.float32).reshape(4, 4)
    out = crop(image, -1, 3, 2, 6, fill=-1000)
    assert out.shape == (4, 4)
    np.testing.assert_array_equal(out[0], [-1000] * 4)
    np.testing.assert_array_equal(out[1:, :2], image[0:3, 2:4])
    assert (out[:, 2:] == -1000).all()


def test_positive_slices_on_hand_made_mask():
    mask = np.zeros((5, 5, 6), dtype=bool)
    mask[2, 2, 1] = True
    mask[0:3, 1, 3] = True
    mask[4, 4, 4] = True
    np.testing.assert_array_equal(positive_slices(mask), [1, 3, 4])
    assert positive_slices(np.zeros((2, 2, 3), bool)).size == 0


@pytest.mark.parametrize("shape", [(10, 10), (7, 13), (98, 86), (64, 64)])
def test_resize_bilinear_matches_torch(shape):
    rng = np.random.default_rng(0)
    image = rng.normal(size=shape).astype(np.float32)
    ours = resize_bilinear(image, 64)
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(image)[None, None], size=(64, 64), mode="bilinear", align_corners=False
    )[0, 0].numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_nodule_patch_is_centred_and_sized():
    image = np.full((100, 100), -800, dtype=np.float32)
    image[40:48, 30:34] = 50  # an 8 × 4 "nodule" exactly filling its box
    patch = nodule_patch(image, (40, 48, 30, 34, 0, 1), extent_fraction=0.8, size=64)
    assert patch.shape == (64, 64)
    # The box is 80% of the square's height: the middle is nodule, the corners background.
    assert patch[32, 32] == pytest.approx(50)
    assert patch[0, 0] == pytest.approx(-800) and patch[63, 63] == pytest.approx(-800)
    rows = np.flatnonzero(patch[:, 32] > -375)
    assert abs(len(rows) - 0.8 * 64) <= 2
