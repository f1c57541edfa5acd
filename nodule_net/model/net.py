"""The attention-enhanced cross-task network of Fu et al. (paper §2), and its ablations.

Ordered bottom-up: segment helpers, backbones, the three attention modules (SAM,
ASCMM, CAAM), the prediction head, then :class:`NoduleNet`. The per-attribute layers of
ASCMM, CAAM and the heads are each one :class:`StackedLinear` (one batched matmul for
the 9 attributes); :mod:`nodule_net.model.reference` keeps their per-attribute form, and old
per-attribute state dicts load into this one.

Every forward takes a *packed* batch: the slices of B nodules concatenated along the
batch axis, ``images`` (S, H, W), plus ``segment_ids`` (S,) saying which nodule
each slice belongs to (non-decreasing, 0..B-1). The 2D variants never pad in z —
a nodule is as deep as it is (1–45 slices in LIDC); per-nodule softmax, means and
weighted sums run per segment, so a packed batch gives the same outputs as the
nodules one at a time (paper §2: "slices in the batch dimension").
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nodule_net.config import ModelConfig


class ModelOutput(NamedTuple):
    """What :meth:`NoduleNet.forward` returns; scores are normalised to [0, 1]."""

    scores: Tensor  # (B, K) final predictions
    aux_scores: Tensor | None  # (B, K) ASCMM auxiliary predictions (caam_ascmm, full)
    slice_weights: Tensor | None  # (S,) SAM weights, summing to 1 per nodule (sam, full)
    caam_weights: Tensor | None  # (B, K, K) raw CAAM weights; row t weighs attributes for t


def sigmoid_fp32(logits: Tensor) -> Tensor:
    """``sigmoid(logits)`` in float32 whatever the logits' dtype (in fp32: the plain sigmoid).

    Under bf16 autocast (``train.precision: bf16``) the linear layers hand over bf16 logits,
    and a bf16 sigmoid rounds to exactly 1 above a logit of ≈ 7, where a benign nodule's
    BCE (``model.malignancy: classify``) becomes log 0 (clamped to 100, with a gradient of
    ≈ 1e12); float32 keeps 1 − p down to ≈ 1e-7.
    """
    return torch.sigmoid(logits if logits.dtype == torch.float32 else logits.float())


# --- segment helpers: per-nodule reductions over a packed batch --------------------------


def segment_count(segment_ids: Tensor, n_segments: int) -> Tensor:
    """(B,) number of slices per nodule."""
    ones = torch.ones_like(segment_ids, dtype=torch.float32)
    return torch.zeros(n_segments, device=segment_ids.device).index_add_(0, segment_ids, ones)


def segment_softmax(logits: Tensor, segment_ids: Tensor, n_segments: int) -> Tensor:
    """Softmax of ``logits`` (S,) within each segment (paper eq. 2, per nodule)."""
    # Subtract the per-segment max for stability, as torch.softmax does.
    seg_max = torch.full((n_segments,), float("-inf"), device=logits.device, dtype=logits.dtype)
    seg_max = seg_max.scatter_reduce(0, segment_ids, logits.detach(), reduce="amax", include_self=True)
    exp = torch.exp(logits - seg_max[segment_ids])  # (S,)
    denom = torch.zeros(n_segments, device=logits.device, dtype=logits.dtype).index_add(0, segment_ids, exp)
    return exp / denom[segment_ids]


def segment_sum(values: Tensor, segment_ids: Tensor, n_segments: int) -> Tensor:
    """Sum of ``values`` (S, D) within each segment → (B, D)."""
    out = values.new_zeros((n_segments, values.shape[1]))
    return out.index_add(0, segment_ids, values)


def segment_mean(values: Tensor, segment_ids: Tensor, n_segments: int) -> Tensor:
    """Mean of ``values`` (S, D) within each segment → (B, D); the attention-free pooling."""
    counts = segment_count(segment_ids, n_segments).to(values.dtype)
    return segment_sum(values, segment_ids, n_segments) / counts[:, None]


# --- backbones ---------------------------------------------------------------------------


class Backbone(nn.Module):
    """VGG-like CNN, no BatchNorm or dropout (paper §2.1 and the authors' code).

    2D: stages of 3×3 convs (stride 1, pad 1, bias) + ReLU with 2×2 maxpool between
    stages, then global average pooling: (S, 1, H, W) → (S, 256). ``dims=3`` builds the
    same widths with 3×3×3 convs for the ``3d`` ablation (§3.3): (B, 1, D, H, W) → (B, 256).
    """

    def __init__(self, widths: tuple[int, ...], convs_per_stage: tuple[int, ...], dims: int = 2) -> None:
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        pool = nn.MaxPool2d if dims == 2 else nn.MaxPool3d
        layers: list[nn.Module] = []
        in_ch = 1
        for stage, (width, n_convs) in enumerate(zip(widths, convs_per_stage, strict=True)):
            if stage > 0:
                layers.append(pool(2))
            for _ in range(n_convs):
                layers += [conv(in_ch, width, 3, stride=1, padding=1, bias=True), nn.ReLU(inplace=True)]
                in_ch = width
        self.features = nn.Sequential(*layers)
        self.out_features = in_ch

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)  # (N, 256, 8, 8[, 8]) for 64² inputs
        return x.flatten(2).mean(dim=2)  # (N, 256) global average pooling


# --- attention modules -------------------------------------------------------------------


class SliceAttention(nn.Module):
    """Slice attention module, SAM (paper §2.2.1, eqs. 1–3).

    Scores each slice's GAP vector with FC 256→128, ReLU, FC 128→1, softmaxes the
    scores over the nodule's slices and returns the weighted sum (the content vector).
    """

    def __init__(self, in_features: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden, 1)

    def forward(self, x: Tensor, segment_ids: Tensor, n_segments: int) -> tuple[Tensor, Tensor]:
        logits = self.fc2(self.act(self.fc1(x))).squeeze(1)  # (S,)
        if n_segments == 1:  # one nodule, the paper's step: a plain softmax and one matmul, fewer kernels
            weights = torch.softmax(logits, dim=0)  # (S,)
            return weights[None] @ x, weights  # (1, 256), (S,)
        weights = segment_softmax(logits, segment_ids, n_segments)  # (S,)
        content = segment_sum(weights[:, None] * x, segment_ids, n_segments)  # (B, 256)
        return content, weights


class StackedLinear(nn.Module):
    """K independent ``nn.Linear(in_features, out_features)`` layers, one per attribute, batched.

    ``weight`` (K, out, in) and ``bias`` (K, out): slice k is attribute k's layer in
    ``nn.Linear``'s own layout, so per-attribute weights (per-attribute model files,
    :mod:`nodule_net.model.reference`) stack into it unchanged. One matmul per layer instead of
    K keeps a one-nodule training step from being a stream of tiny kernels (docs/speed.md).
    """

    def __init__(self, n_layers: int, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_layers, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(n_layers, out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Paper §3.2 per attribute, as for K separate layers: Xavier-uniform weights with
        fan_in = in, fan_out = out (bound √(6 / (in + out))), zero biases."""
        for weight in self.weight.data:  # (out, in) each: xavier_uniform_ reads the fans from that shape
            nn.init.xavier_uniform_(weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Attribute k's layer on ``x[..., k, :]``: (..., K, in) → (..., K, out)."""
        y = torch.einsum("...ki,koi->...ko", x, self.weight)
        return y if self.bias is None else y + self.bias

    def shared(self, x: Tensor) -> Tensor:
        """Every attribute's layer on the same ``x``: (..., in) → (..., K, out), one matmul."""
        bias = None if self.bias is None else self.bias.flatten()
        return F.linear(x, self.weight.flatten(0, 1), bias).unflatten(-1, self.weight.shape[:2])

    def extra_repr(self) -> str:
        k, out_features, in_features = self.weight.shape
        return f"n_layers={k}, in_features={in_features}, out_features={out_features}, bias={self.bias is not None}"


def stack_legacy_keys(state_dict: dict[str, Tensor], prefix: str, layout: dict[str, str]) -> None:
    """Rewrite a per-attribute (pre-:class:`StackedLinear`) state dict into the stacked layout, in place.

    ``layout`` maps each stacked layer's name to its old per-attribute module path, ``{k}``
    standing for the attribute: with ``{"fc1": "units.{k}.fc1"}``, ``<prefix>units.3.fc1.weight``
    becomes slice 3 of ``<prefix>fc1.weight``. Keys already stacked are left alone.
    """
    for name, old in layout.items():
        for param in ("weight", "bias"):
            keys: list[str] = []
            while (key := f"{prefix}{old.format(k=len(keys))}.{param}") in state_dict:
                keys.append(key)
            if keys:
                state_dict[f"{prefix}{name}.{param}"] = torch.stack([state_dict.pop(key) for key in keys])


class _AttributeLayers(nn.Module):
    """A module of :class:`StackedLinear` layers that also loads old, per-attribute weights.

    ``legacy_layout``: see :func:`stack_legacy_keys`. Overriding ``_load_from_state_dict``
    (as torch's own modules do for their old layouts) applies it wherever a state dict is
    loaded: model files, checkpoints, :mod:`nodule_net.model.reference` weights.
    """

    legacy_layout: ClassVar[dict[str, str]] = {}

    def _load_from_state_dict(self, state_dict: dict[str, Tensor], prefix: str, *args, **kwargs) -> None:
        stack_legacy_keys(state_dict, prefix, self.legacy_layout)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class AttributeSpecialisation(_AttributeLayers):
    """Attribute-specific content modulation module, ASCMM (paper §2.2.2, eq. 4).

    One FC 256→256 per attribute turns the content vector into that attribute's
    specialised vector; with ``aux=True`` an FC 256→1 without bias and a sigmoid (no
    activation in between, as in the authors' code) give the auxiliary score that the
    λ-weighted loss supervises. ``aux=False`` is the ``caam`` ablation: the specialised
    vectors exist but nothing supervises them directly.
    """

    legacy_layout: ClassVar[dict[str, str]] = {"specialise": "specialise.{k}", "aux": "aux.{k}"}

    def __init__(self, n_attributes: int, features: int, aux: bool) -> None:
        super().__init__()
        self.specialise = StackedLinear(n_attributes, features, features)
        self.aux = StackedLinear(n_attributes, features, 1, bias=False) if aux else None

    def forward(self, content: Tensor) -> tuple[Tensor, Tensor | None]:
        specialised = self.specialise.shared(content)  # (B, K, 256)
        if self.aux is None:
            return specialised, None
        return specialised, sigmoid_fp32(self.aux(specialised).squeeze(-1))  # (B, K, 256), (B, K)


class CrossAttributeAttention(_AttributeLayers):
    """Cross-attribute attention module, CAAM (paper §2.2.2, eqs. 5–6).

    Attribute t's unit (FC 256→128, ReLU, FC 128→1) scores each of the K specialised
    vectors; the raw, unnormalised scores weight their sum (the paper has no softmax here,
    nor does the authors' code). The K units run as one batched layer.
    """

    legacy_layout: ClassVar[dict[str, str]] = {"fc1": "units.{k}.fc1", "fc2": "units.{k}.fc2"}

    def __init__(self, n_attributes: int, features: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = StackedLinear(n_attributes, features, hidden)
        self.act = nn.ReLU()
        self.fc2 = StackedLinear(n_attributes, hidden, 1)

    def forward(self, specialised: Tensor) -> tuple[Tensor, Tensor]:
        hidden = self.act(self.fc1.shared(specialised))  # (B, K_j, K_t, 128): unit t on vector j
        weights = self.fc2(hidden).squeeze(-1).transpose(1, 2)  # (B, K_t, K_j)
        return weights @ specialised, weights  # (B, K, 256), (B, K, K)


class PredictionHead(_AttributeLayers):
    """Score regression (paper §2.3): per attribute FC 256→256, ReLU, FC 256→1 (no bias), sigmoid."""

    legacy_layout: ClassVar[dict[str, str]] = {"fc1": "fc1.{k}", "fc2": "fc2.{k}"}

    def __init__(self, n_attributes: int, features: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = StackedLinear(n_attributes, features, hidden)
        self.act = nn.ReLU()
        self.fc2 = StackedLinear(n_attributes, hidden, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` (B, K, 256), one vector per attribute branch, or (B, 256) shared by all → (B, K)."""
        hidden = self.fc1(x) if x.dim() == 3 else self.fc1.shared(x)  # (B, K, 256)
        return sigmoid_fp32(self.fc2(self.act(hidden)).squeeze(-1))


# --- the network -------------------------------------------------------------------------


def _init_weights(module: nn.Module) -> None:
    """Paper §3.2: He (Kaiming-normal) conv weights, Glorot (Xavier-uniform) FC weights, zero biases."""
    if isinstance(module, StackedLinear):
        module.reset_parameters()  # the same laws, per attribute
        return
    if isinstance(module, (nn.Conv2d, nn.Conv3d)):
        nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    elif isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
    else:
        return
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def pad_volumes(images: Tensor, segment_ids: Tensor, n_segments: int, depth: int) -> Tensor:
    """Scatter packed slices (S, H, W) into zero-padded volumes (B, 1, depth, H, W), centred in z."""
    counts = segment_count(segment_ids, n_segments).long()  # (B,)
    if int(counts.max()) > depth:
        raise ValueError(
            f"A nodule has {int(counts.max())} slices but the 3d variant pads to model.depth_3d={depth}; "
            "raise model.depth_3d to at least the deepest nodule."
        )
    starts = torch.cumsum(counts, 0) - counts  # (B,) first packed row of each nodule
    pad_before = (depth - counts) // 2  # centring keeps z-reversal augmentation symmetric
    z = torch.arange(len(segment_ids), device=images.device) - starts[segment_ids] + pad_before[segment_ids]
    volumes = images.new_zeros((n_segments, depth, *images.shape[1:]))
    volumes[segment_ids, z] = images
    return volumes[:, None]  # (B, 1, D, H, W)


def centre_in_depth(images: Tensor, mask: Tensor, depth: int) -> Tensor:
    """One nodule's M real slices (the first M of ``images`` (D, H, W), ``mask`` (D,)) centred
    in a zero volume (depth, H, W), as :func:`pad_volumes` places them; a gather, so M may
    differ between the nodules of a :func:`torch.func.vmap`."""
    if images.shape[0] > depth:
        raise ValueError(
            f"A nodule has {images.shape[0]} slices but the 3d variant pads to model.depth_3d={depth}; "
            "raise model.depth_3d to at least the deepest nodule."
        )
    count = mask.sum()
    source = torch.arange(depth, device=images.device) - (depth - count) // 2  # (depth,) slice read at each z
    inside = (source >= 0) & (source < count)
    return images[source.clamp(0, images.shape[0] - 1)] * inside[:, None, None].to(images.dtype)


class NoduleNet(nn.Module):
    """Fu et al.'s multi-attribute network and its ablations, selected by ``config.variant``.

    - ``none``: backbone → mean over slices → per-attribute heads (attention-free baseline)
    - ``sam``: SAM pooling instead of the mean
    - ``caam``: mean → per-attribute FC 256→256 → CAAM → heads (no auxiliary loss)
    - ``caam_ascmm``: mean → ASCMM (with auxiliary scores) → CAAM → heads
    - ``full``: SAM → ASCMM → CAAM → heads (the proposed model)
    - ``3d``: 3D backbone on volumes zero-padded to ``depth_3d`` slices → heads

    Modules a variant does not use are not built (``None``), so they hold no parameters.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        k, c = config.n_outputs, config.widths[-1]
        dims = 3 if config.variant == "3d" else 2
        self.backbone = Backbone(config.widths, config.convs_per_stage, dims=dims)
        self.sam = SliceAttention(c, config.sam_hidden) if config.uses_sam else None
        self.ascmm = AttributeSpecialisation(k, c, aux=config.uses_aux) if config.uses_caam else None
        self.caam = CrossAttributeAttention(k, c, config.caam_hidden) if config.uses_caam else None
        self.head = PredictionHead(k, c, config.head_hidden)
        self.apply(_init_weights)

    def forward(self, images: Tensor, segment_ids: Tensor, n_nodules: int | None = None) -> ModelOutput:
        """``images`` (S, H, W) normalised slices of B nodules; ``segment_ids`` (S,) in 0..B-1."""
        b = int(segment_ids.max()) + 1 if n_nodules is None else n_nodules
        if self.config.variant == "3d":
            content = self.backbone(pad_volumes(images, segment_ids, b, self.config.depth_3d))  # (B, 256)
            return self._from_content(content, None)
        features = self.backbone(images[:, None])  # (S, 256)
        slice_weights = None
        if self.sam is not None:
            content, slice_weights = self.sam(features, segment_ids, b)  # (B, 256), (S,)
        elif b == 1:  # one nodule, the paper's step: a plain mean
            content = features.mean(dim=0, keepdim=True)  # (1, 256)
        else:
            content = segment_mean(features, segment_ids, b)  # (B, 256)
        return self._from_content(content, slice_weights)

    def forward_padded(self, images: Tensor, mask: Tensor) -> ModelOutput:
        """One nodule zero-padded in z, for :func:`torch.func.vmap` over folds (``nodule_net.training.side_by_side``).

        ``images`` (D, H, W): the nodule's M normalised slices first, then D − M padding
        slices; ``mask`` (D,) bool, True on the M real slices. The outputs equal
        ``forward`` on the M slices alone (B = 1; ``slice_weights`` (D,) is 0 on padding):
        the backbone works per slice, and the padding forms a second segment whose SAM
        softmax and sums are its own and discarded. No shape depends on M, so folds whose
        nodules differ in depth can be stepped in one batched call.
        """
        if self.config.variant == "3d":
            content = self.backbone(centre_in_depth(images, mask, self.config.depth_3d)[None, None])  # (1, 256)
            return self._from_content(content, None)
        segment_ids = (~mask).long()  # 0: the nodule, 1: padding
        features = self.backbone(images[:, None])  # (D, 256)
        slice_weights = None
        if self.sam is not None:
            content, slice_weights = self.sam(features, segment_ids, 2)  # (2, 256), (D,)
            slice_weights = slice_weights * mask
        else:
            # segment_mean would divide the empty padding segment by 0 when D == M.
            content = segment_sum(features, segment_ids, 2) / mask.sum().to(features.dtype)
        return self._from_content(content[:1], slice_weights)

    def _from_content(self, content: Tensor, slice_weights: Tensor | None) -> ModelOutput:
        """Everything after slice pooling: ``content`` (B, 256) → [ASCMM → CAAM →] heads."""
        aux_scores = caam_weights = None
        if self.ascmm is not None and self.caam is not None:  # built together (config.uses_caam)
            specialised, aux_scores = self.ascmm(content)  # (B, K, 256), (B, K) | None
            branches, caam_weights = self.caam(specialised)  # (B, K, 256), (B, K, K)
        else:
            branches = content  # (B, 256): every attribute's head sees the content
        return ModelOutput(self.head(branches), aux_scores, slice_weights, caam_weights)
