"""The per-attribute form of the network: each attribute's layers as their own ``nn.Linear``.

:mod:`nodule_net.model.net` computes ASCMM, CAAM and the prediction heads with one batched
matmul per layer (:class:`~nodule_net.model.net.StackedLinear`). This module keeps the
original form — 9 separate ``nn.Linear`` per layer, one Python call per attribute, SAM's
softmax always through the segment helpers — for two jobs:

- the tests check that the batched model equals it (outputs and gradients, all variants),
  with its weights copied over by the mapping that lets per-attribute model files load;
- ``nodule-net bench`` runs it beside the batched model, so every speed-up is a ratio
  measured in the same run.

Its state-dict layout is the per-attribute one (``ascmm.specialise.3.weight``,
``caam.units.2.fc1.weight``, ``head.fc1.4.weight``, ...); ``NoduleNet.load_state_dict``
accepts it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from nodule_net.config import ModelConfig
from nodule_net.model.net import Backbone, ModelOutput, pad_volumes, segment_mean, segment_softmax, segment_sum


class SliceAttention(nn.Module):
    """SAM (paper eqs. 1–3) with the per-segment softmax for any number of nodules."""

    def __init__(self, in_features: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden, 1)

    def forward(self, x: Tensor, segment_ids: Tensor, n_segments: int) -> tuple[Tensor, Tensor]:
        logits = self.fc2(self.act(self.fc1(x))).squeeze(1)  # (S,)
        weights = segment_softmax(logits, segment_ids, n_segments)  # (S,)
        content = segment_sum(weights[:, None] * x, segment_ids, n_segments)  # (B, 256)
        return content, weights


class AttributeSpecialisation(nn.Module):
    """ASCMM (paper eq. 4): per attribute FC 256→256, then (``aux``) FC 256→1 without bias + sigmoid."""

    def __init__(self, n_attributes: int, features: int, aux: bool) -> None:
        super().__init__()
        self.specialise = nn.ModuleList(nn.Linear(features, features) for _ in range(n_attributes))
        self.aux = nn.ModuleList(nn.Linear(features, 1, bias=False) for _ in range(n_attributes)) if aux else None

    def forward(self, content: Tensor) -> tuple[Tensor, Tensor | None]:
        specialised = torch.stack([fc(content) for fc in self.specialise], dim=1)  # (B, K, 256)
        if self.aux is None:
            return specialised, None
        aux = torch.cat([fc(specialised[:, t]) for t, fc in enumerate(self.aux)], dim=1)  # (B, K)
        return specialised, torch.sigmoid(aux)


class CrossAttributeUnit(nn.Module):
    """One CAAM unit (paper eqs. 5–6): scores all K specialised vectors; raw scores weight the sum."""

    def __init__(self, features: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(features, hidden)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden, 1)

    def forward(self, specialised: Tensor) -> tuple[Tensor, Tensor]:
        weights = self.fc2(self.act(self.fc1(specialised))).squeeze(2)  # (B, K)
        fused = (weights[:, :, None] * specialised).sum(dim=1)  # (B, 256)
        return fused, weights


class CrossAttributeAttention(nn.Module):
    """CAAM (paper §2.2.2): one unit per attribute."""

    def __init__(self, n_attributes: int, features: int, hidden: int) -> None:
        super().__init__()
        self.units = nn.ModuleList(CrossAttributeUnit(features, hidden) for _ in range(n_attributes))

    def forward(self, specialised: Tensor) -> tuple[Tensor, Tensor]:
        fused, weights = zip(*(unit(specialised) for unit in self.units), strict=True)
        return torch.stack(fused, dim=1), torch.stack(weights, dim=1)  # (B, K, 256), (B, K, K)


class PredictionHead(nn.Module):
    """Score regression (paper §2.3): per attribute FC 256→256, ReLU, FC 256→1 (no bias), sigmoid."""

    def __init__(self, n_attributes: int, features: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.ModuleList(nn.Linear(features, hidden) for _ in range(n_attributes))
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.ModuleList(nn.Linear(hidden, 1, bias=False) for _ in range(n_attributes))

    def forward(self, x: Tensor) -> Tensor:
        # x: (B, K, 256), one input vector per attribute branch
        scores = [fc2(self.act(fc1(x[:, t]))) for t, (fc1, fc2) in enumerate(zip(self.fc1, self.fc2, strict=True))]
        return torch.sigmoid(torch.cat(scores, dim=1))  # (B, K)


def _init_weights(module: nn.Module) -> None:
    """Paper §3.2: He (Kaiming-normal) conv weights, Glorot (Xavier-uniform) FC weights, zero biases."""
    if isinstance(module, (nn.Conv2d, nn.Conv3d)):
        nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    elif isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
    else:
        return
    if module.bias is not None:
        nn.init.zeros_(module.bias)


class ReferenceNoduleNet(nn.Module):
    """:class:`nodule_net.model.net.NoduleNet` in its per-attribute form (same variants, same config)."""

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
        k = self.config.n_outputs
        if self.config.variant == "3d":
            content = self.backbone(pad_volumes(images, segment_ids, b, self.config.depth_3d))  # (B, 256)
            return ModelOutput(self.head(content[:, None].expand(-1, k, -1)), None, None, None)
        features = self.backbone(images[:, None])  # (S, 256)
        slice_weights = None
        if self.sam is not None:
            content, slice_weights = self.sam(features, segment_ids, b)  # (B, 256), (S,)
        else:
            content = segment_mean(features, segment_ids, b)  # (B, 256)
        aux_scores = caam_weights = None
        if self.ascmm is not None and self.caam is not None:  # built together (config.uses_caam)
            specialised, aux_scores = self.ascmm(content)  # (B, K, 256), (B, K) | None
            branches, caam_weights = self.caam(specialised)  # (B, K, 256), (B, K, K)
        else:
            branches = content[:, None].expand(-1, k, -1)  # (B, K, 256): every head sees the content
        return ModelOutput(self.head(branches), aux_scores, slice_weights, caam_weights)
