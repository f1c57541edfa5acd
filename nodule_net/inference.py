"""Inference, shared by `evaluate`, `report` and `predict`: load a fold's model, score nodules.

A model file (see :mod:`nodule_net.checkpoint`) holds the weights, the model config and
the training fold's normalisation mean/std; :func:`predict` scores nodules of a
:class:`~nodule_net.store.NoduleDataset` with it, without augmentation, and returns the
attention weights the paper's analyses need (§4.1).
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np
import torch

from nodule_net.checkpoint import read_model_file
from nodule_net.data import iterate_batches
from nodule_net.device import batch_to
from nodule_net.model import ModelConfig, NoduleNet
from nodule_net.store import NoduleDataset


class Predictions(NamedTuple):
    scores: np.ndarray  # (N, K) normalised final scores
    aux_scores: np.ndarray | None  # (N, K)
    slice_weights: list[np.ndarray] | None  # N arrays (M_n,)
    caam_weights: np.ndarray | None  # (N, K, K)


class LoadedModel(NamedTuple):
    model: NoduleNet  # in eval mode, on the requested device
    mean: float  # normalisation stats of the fold's training part
    std: float


def model_config_from_dict(config: dict) -> ModelConfig:
    """A :class:`ModelConfig` from its saved dict (lists back to tuples)."""
    return ModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})


def load_model(path: str | os.PathLike, device: torch.device) -> LoadedModel:
    """The model saved by :func:`nodule_net.checkpoint.save_model`, on ``device``, in eval mode."""
    saved = read_model_file(path, device)
    model = NoduleNet(model_config_from_dict(saved["model_config"])).to(device)
    model.load_state_dict(saved["model"])
    return LoadedModel(model.eval(), saved["mean"], saved["std"])


@torch.no_grad()
def predict(
    model: NoduleNet,
    data: NoduleDataset,
    indices: np.ndarray,
    mean: float,
    std: float,
    batch_nodules: int,
    device: torch.device,
) -> Predictions:
    """Scores for the nodules ``indices`` in that order, no augmentation."""
    model.eval()
    dummy_targets = np.zeros((len(data), model.config.n_outputs), dtype=np.float32)
    scores, aux, weights, caam = [], [], [], []
    for batch in iterate_batches(data, indices, dummy_targets, mean, std, batch_nodules):
        batch = batch_to(batch, device)
        out = model(batch.images, batch.segment_ids, len(batch.index))
        scores.append(out.scores.cpu().numpy())
        if out.aux_scores is not None:
            aux.append(out.aux_scores.cpu().numpy())
        if out.caam_weights is not None:
            caam.append(out.caam_weights.cpu().numpy())
        if out.slice_weights is not None:
            sizes = torch.bincount(batch.segment_ids, minlength=len(batch.index)).tolist()
            weights.extend(w.numpy() for w in out.slice_weights.cpu().split(sizes))
    return Predictions(
        np.concatenate(scores),
        np.concatenate(aux) if aux else None,
        weights or None,
        np.concatenate(caam) if caam else None,
    )
