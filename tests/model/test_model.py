"""The network: shapes per variant and depth, SAM normalisation, packing, gradients, init."""

from __future__ import annotations

import pytest
import torch

from nodule_net.attributes import N_ATTRIBUTES
from nodule_net.config import VARIANTS, ModelConfig
from nodule_net.model.net import NoduleNet, StackedLinear, pad_volumes, segment_mean, segment_softmax
from nodule_net.model.reference import ReferenceNoduleNet

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


@pytest.mark.slow
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
    torch.testing.assert_close(
        segment_mean(values, segment_ids, 3), torch.tensor([[2.0, 3.0], [7.0, 8.0], [10.0, 11.0]])
    )


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
    # Every per-attribute layer, slice by slice: Xavier-uniform with that slice's own fans,
    # i.e. U(±√(6 / (in + out))), std bound/√3, zero biases; and no two attributes alike.
    stacked = {name: m for name, m in model.named_modules() if isinstance(m, StackedLinear)}
    assert set(stacked) == {"ascmm.specialise", "ascmm.aux", "caam.fc1", "caam.fc2", "head.fc1", "head.fc2"}
    for name, layer in stacked.items():
        k, fan_out, fan_in = layer.weight.shape
        assert k == N_ATTRIBUTES
        bound = (6 / (fan_in + fan_out)) ** 0.5
        for w in layer.weight:
            assert w.abs().max().item() <= bound
            assert w.abs().max().item() > 0.9 * bound, name  # the whole range is used (≥ 128 draws)
            assert w.std().item() == pytest.approx(bound / 3**0.5, rel=0.15 if w.numel() < 1000 else 0.05), name
        assert not torch.equal(layer.weight[0], layer.weight[1])
        if layer.bias is not None:
            assert (layer.bias == 0).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"variant": "transformer"}, "model.variant"),
        ({"attribute": "colour"}, "Unknown attribute"),
        ({"widths": (32, 64)}, "same length"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ModelConfig(**kwargs)


# --- the batched attribute layers against the per-attribute reference -------------------------


def test_stacked_linear_equals_k_separate_linears() -> None:
    torch.manual_seed(0)
    linears = [torch.nn.Linear(5, 3) for _ in range(4)]
    layer = StackedLinear(4, 5, 3)
    with torch.no_grad():
        layer.weight.copy_(torch.stack([m.weight for m in linears]))
        layer.bias.copy_(torch.stack([m.bias for m in linears]))
    x = torch.randn(2, 6, 4, 5)  # (..., K, in): attribute k's own input
    torch.testing.assert_close(layer(x), torch.stack([m(x[..., k, :]) for k, m in enumerate(linears)], dim=-2))
    shared = torch.randn(7, 5)  # (..., in): the same input for every attribute
    torch.testing.assert_close(layer.shared(shared), torch.stack([m(shared) for m in linears], dim=-2))


def reference_and_batched(config: ModelConfig, seed: int = 0) -> tuple[ReferenceNoduleNet, NoduleNet]:
    """A per-attribute model and a batched one holding the same weights (loaded through the old-layout mapping)."""
    torch.manual_seed(seed)
    reference = ReferenceNoduleNet(config)
    batched = NoduleNet(config)
    batched.load_state_dict(reference.state_dict())
    return reference, batched


def stacked_grads(reference: ReferenceNoduleNet) -> dict[str, torch.Tensor]:
    """The reference's gradients in the batched layout, through the same mapping as its weights."""
    holder = NoduleNet(reference.config)
    holder.load_state_dict({name: p.grad for name, p in reference.named_parameters()})
    return {name: p.detach() for name, p in holder.named_parameters()}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("depths", [[4], [3, 1, 5]])
def test_batched_layers_equal_the_per_attribute_reference(variant: str, depths: list[int]) -> None:
    config = ModelConfig(variant=variant, depth_3d=8, sam_hidden=32, caam_hidden=32, head_hidden=64)
    reference, batched = reference_and_batched(config)
    images, segment_ids = packed(depths, size=16, seed=1)
    targets = torch.rand(len(depths), N_ATTRIBUTES, generator=torch.Generator().manual_seed(2))
    outputs = []
    for model in (reference, batched):
        out = model(images, segment_ids, len(depths))
        loss = ((out.scores - targets) ** 2).sum() + (
            0.1 * ((out.aux_scores - targets) ** 2).sum() if out.aux_scores is not None else 0
        )
        loss.backward()
        outputs.append(out)
    for field, ref in outputs[0]._asdict().items():
        assert (ref is None) == (getattr(outputs[1], field) is None)
        if ref is not None:
            torch.testing.assert_close(getattr(outputs[1], field), ref)
    expected = stacked_grads(reference)
    names = [name for name, _ in batched.named_parameters()]
    assert names == list(expected)  # every parameter has a counterpart in the reference
    for name, p in batched.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], msg=lambda m, name=name: f"{name}: {m}")


def test_old_layout_keys_map_onto_the_stacked_ones() -> None:
    reference, batched = reference_and_batched(ModelConfig(variant="full"))
    old = reference.state_dict()
    assert "ascmm.specialise.3.weight" in old and "caam.units.2.fc1.weight" in old and "head.fc1.4.weight" in old
    new = batched.state_dict()
    assert "head.fc1.weight" in new and not any(".units." in key or ".fc1.4." in key for key in new)
    assert torch.equal(new["ascmm.specialise.weight"][3], old["ascmm.specialise.3.weight"])
    assert torch.equal(new["ascmm.aux.weight"][8], old["ascmm.aux.8.weight"])
    assert torch.equal(new["caam.fc1.weight"][2], old["caam.units.2.fc1.weight"])
    assert torch.equal(new["caam.fc2.bias"][5], old["caam.units.5.fc2.bias"])
    assert torch.equal(new["head.fc1.bias"][4], old["head.fc1.4.bias"])
    assert torch.equal(new["head.fc2.weight"][0], old["head.fc2.0.weight"])
    assert len(old) == 2 * 10 + 4 + 27 + 36 + 27 and len(new) == 2 * 10 + 4 + 3 + 4 + 3
    assert "ascmm.specialise.3.weight" in old  # load_state_dict did not consume the caller's dict


def test_old_model_file_loads(tmp_path) -> None:
    """A model file written before the layers were batched (per-attribute keys) loads and predicts the same."""
    from dataclasses import asdict

    from nodule_net.evaluation.inference import load_model
    from nodule_net.io.checkpoint import save_model

    config = ModelConfig(variant="caam_ascmm", attribute=None)
    torch.manual_seed(3)
    reference = ReferenceNoduleNet(config).eval()
    save_model(tmp_path / "model.pt", reference.state_dict(), asdict(config), -500.0, 300.0, 0, 4, 0.5)
    loaded = load_model(tmp_path / "model.pt", torch.device("cpu"))
    images, segment_ids = packed([2, 5], size=16)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(images, segment_ids).scores, reference(images, segment_ids).scores)
    assert (loaded.mean, loaded.std) == (-500.0, 300.0)


def test_a_state_dict_with_a_missing_attribute_is_still_an_error() -> None:
    reference, batched = reference_and_batched(ModelConfig(variant="none"))
    state = reference.state_dict()
    del state["head.fc1.8.weight"]  # only 8 of 9 attributes: stacks to the wrong shape
    with pytest.raises(RuntimeError, match=r"head\.fc1\.weight"):
        batched.load_state_dict(state)
