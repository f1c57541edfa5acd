"""The network: shapes per variant and depth, SAM normalisation, packing, gradients, init."""

from __future__ import annotations

import pytest
import torch

from nodule_net.attributes import N_ATTRIBUTES
from nodule_net.model import (
    VARIANTS,
    ModelConfig,
    NoduleNet,
    pad_volumes,
    segment_mean,
    segment_softmax,
)

VARIANTS_2D = tuple(v for v in VARIANTS if v != "3d")
# Heavy full-size forwards only on a few depths: 1 slice, 2, a typical 7, LIDC's deepest 45.
DEPTHS = [1, 2, 7, 45]

pytestmark = pytest.mark.usefixtures("one_thread")


def packed(depths: list[int], size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(sum(depths), size, size, generator=gen)
    segment_ids = torch.repeat_interleave(torch.arange(len(depths)), torch.tensor(depths))
    return images, segment_ids


@pytest.fixture(scope="module")
def models() -> dict[str, NoduleNet]:
    torch.manual_seed(0)
    return {v: NoduleNet(ModelConfig(variant=v)).eval() for v in VARIANTS}


@pytest.mark.parametrize("variant", VARIANTS_2D)
@pytest.mark.parametrize("depth", DEPTHS)
@torch.no_grad()
def test_shapes_2d(models: dict[str, NoduleNet], variant: str, depth: int) -> None:
    config = models[variant].config
    out = models[variant](*packed([depth]))
    assert out.scores.shape == (1, N_ATTRIBUTES)
    assert ((out.scores >= 0) & (out.scores <= 1)).all()  # sigmoid; may saturate in float32
    assert (out.aux_scores is not None) == config.uses_aux
    if config.uses_aux:
        assert out.aux_scores.shape == (1, N_ATTRIBUTES)
    assert (out.slice_weights is not None) == config.uses_sam
    if config.uses_sam:
        assert out.slice_weights.shape == (depth,)
    assert (out.caam_weights is not None) == config.uses_caam
    if config.uses_caam:
        assert out.caam_weights.shape == (1, N_ATTRIBUTES, N_ATTRIBUTES)


@torch.no_grad()
def test_shapes_3d_every_depth_in_one_packed_batch(models: dict[str, NoduleNet]) -> None:
    out = models["3d"](*packed(DEPTHS))
    assert out.scores.shape == (len(DEPTHS), N_ATTRIBUTES)
    assert out.aux_scores is None and out.slice_weights is None and out.caam_weights is None


def test_3d_rejects_nodules_deeper_than_its_padding() -> None:
    model = NoduleNet(ModelConfig(variant="3d", depth_3d=4))
    with pytest.raises(ValueError, match="depth_3d"):
        model(*packed([5], size=16))


def test_pad_volumes_centres_each_nodule() -> None:
    images = torch.arange(1, 6, dtype=torch.float32)[:, None, None].expand(5, 2, 2)  # slice value = 1..5
    volumes = pad_volumes(images, torch.tensor([0, 0, 1, 1, 1]), 2, depth=6)
    assert volumes.shape == (2, 1, 6, 2, 2)
    assert volumes[0, 0, :, 0, 0].tolist() == [0, 0, 1, 2, 0, 0]
    assert volumes[1, 0, :, 0, 0].tolist() == [0, 3, 4, 5, 0, 0]


@pytest.mark.parametrize("variant", ["sam", "full"])
@torch.no_grad()
def test_sam_weights_sum_to_one_per_nodule(models: dict[str, NoduleNet], variant: str) -> None:
    depths = [1, 3, 5, 2]
    images, segment_ids = packed(depths, size=32)
    weights = models[variant](images, segment_ids).slice_weights
    sums = torch.zeros(len(depths)).index_add_(0, segment_ids, weights)
    torch.testing.assert_close(sums, torch.ones(len(depths)))
    assert weights[0] == 1.0  # a 1-slice nodule gets all the weight
    assert (weights > 0).all()


def test_segment_softmax_and_mean_match_per_segment_reference() -> None:
    logits = torch.tensor([1.0, 2.0, 3.0, -1.0, 50.0, 0.5])
    segment_ids = torch.tensor([0, 0, 0, 1, 1, 2])
    expected = torch.cat([torch.softmax(logits[:3], 0), torch.softmax(logits[3:5], 0), torch.ones(1)])
    torch.testing.assert_close(segment_softmax(logits, segment_ids, 3), expected)
    values = torch.arange(12, dtype=torch.float32).reshape(6, 2)
    torch.testing.assert_close(segment_mean(values, segment_ids, 3), torch.tensor([[2.0, 3.0], [7.0, 8.0], [10.0, 11.0]]))


@pytest.mark.parametrize("variant", VARIANTS)
@torch.no_grad()
def test_packed_batch_equals_one_nodule_at_a_time(variant: str) -> None:
    torch.manual_seed(1)
    model = NoduleNet(ModelConfig(variant=variant, depth_3d=8)).eval()
    depths = [3, 1, 6, 2]
    images, segment_ids = packed(depths, size=16)
    together = model(images, segment_ids)
    starts = [0, 3, 4, 10, 12]
    for n in range(len(depths)):
        alone = model(images[starts[n] : starts[n + 1]], torch.zeros(depths[n], dtype=torch.long))
        torch.testing.assert_close(together.scores[n : n + 1], alone.scores)
        for field in ("aux_scores", "caam_weights"):
            if getattr(alone, field) is not None:
                torch.testing.assert_close(getattr(together, field)[n : n + 1], getattr(alone, field))
        if alone.slice_weights is not None:
            torch.testing.assert_close(together.slice_weights[starts[n] : starts[n + 1]], alone.slice_weights)


# Top-level modules each variant must build (and the rest must not exist).
USED = {
    "none": {"backbone", "head"},
    "sam": {"backbone", "sam", "head"},
    "caam": {"backbone", "ascmm", "caam", "head"},
    "caam_ascmm": {"backbone", "ascmm", "caam", "head"},
    "full": {"backbone", "sam", "ascmm", "caam", "head"},
    "3d": {"backbone", "head"},
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradients_reach_every_used_module(variant: str) -> None:
    torch.manual_seed(0)
    model = NoduleNet(ModelConfig(variant=variant, depth_3d=8))
    built = {name for name in ("backbone", "sam", "ascmm", "caam", "head") if getattr(model, name) is not None}
    assert built == USED[variant]
    assert (model.ascmm is not None and model.ascmm.aux is not None) == (variant in ("caam_ascmm", "full"))
    out = model(*packed([3, 2], size=16))
    loss = out.scores.sum() + (out.aux_scores.sum() if out.aux_scores is not None else 0)
    loss.backward()
    # Every learnable layer (weight tensors) must receive a non-zero gradient.
    for name, p in model.named_parameters():
        if name.endswith("weight"):
            assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"


def test_single_attribute_model_predicts_only_that_attribute() -> None:
    model = NoduleNet(ModelConfig(variant="full", attribute="malignancy"))
    out = model(*packed([2, 3], size=16))
    assert out.scores.shape == (2, 1) and out.aux_scores.shape == (2, 1) and out.caam_weights.shape == (2, 1, 1)
    assert model.config.attributes == ("malignancy",)


def test_init_follows_the_paper() -> None:
    torch.manual_seed(0)
    model = NoduleNet(ModelConfig(variant="full"))
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)) and module.bias is not None:
            assert (module.bias == 0).all()
    conv = model.backbone.features[-2]  # last 3×3 conv, 256→256: He std = sqrt(2 / (256·9))
    assert isinstance(conv, torch.nn.Conv2d)
    assert conv.weight.std().item() == pytest.approx((2 / (256 * 9)) ** 0.5, rel=0.05)
    fc = model.head.fc1[0]  # 256→256: Xavier-uniform bound sqrt(6 / 512)
    assert fc.weight.abs().max().item() <= (6 / 512) ** 0.5
    assert fc.weight.std().item() == pytest.approx((2 / 512) ** 0.5, rel=0.05)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"variant": "transformer"}, "model.variant"), ({"attribute": "colour"}, "Unknown attribute"),
     ({"widths": (32, 64)}, "same length")],
)
def test_config_rejects_bad_values(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ModelConfig(**kwargs)
