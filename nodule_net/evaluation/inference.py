"""Inference, shared by `evaluate`, `report` and `predict`: load a fold's model, score nodules.

A model file (see :mod:`nodule_net.io.checkpoint`) holds the weights, the model config and
the training fold's normalisation mean/std; :func:`predict` scores nodules of a
:class:`~nodule_net.io.store.NoduleDataset` with it, without augmentation, and returns the
attention weights the paper's analyses need (§4.1).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from nodule_net.config import ModelConfig
from nodule_net.data.batches import ResidentNodules, iterate_resident, resident_nodules
from nodule_net.io.checkpoint import model_path, read_model_file
from nodule_net.io.store import NoduleDataset
from nodule_net.model.net import NoduleNet


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
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
    return ModelConfig(**fields)


def _loaded(saved: dict, device: torch.device) -> LoadedModel:
    """The network of a model file's dict (see :func:`~nodule_net.io.checkpoint.read_model_file`), in eval mode."""
    model = NoduleNet(model_config_from_dict(saved["model_config"])).to(device)
    model.load_state_dict(saved["model"])
    return LoadedModel(model.eval(), saved["mean"], saved["std"])


def load_model(path: str | os.PathLike, device: torch.device) -> LoadedModel:
    """The model saved by :func:`nodule_net.io.checkpoint.save_model`, on ``device``, in eval mode."""
    return _loaded(read_model_file(path, device), device)


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
    dummy_targets = np.zeros((len(data), model.config.n_outputs), dtype=np.float32)
    return predict_resident(model, resident_nodules(data, indices, dummy_targets, mean, std, device), batch_nodules)


@torch.no_grad()
def predict_resident(model: NoduleNet, nodules: ResidentNodules, batch_nodules: int) -> Predictions:
    """Scores for ``nodules`` (already normalised, on the model's device) in their order.

    Outputs stay on the device until the last batch, then come back in one copy each:
    a host sync per batch would stall a GPU between batches.
    """
    model.eval()
    scores, aux, weights, caam = [], [], [], []
    for batch in iterate_resident(nodules, batch_nodules):
        out = model(batch.images, batch.segment_ids, len(batch.index))
        scores.append(out.scores)
        if out.aux_scores is not None:
            aux.append(out.aux_scores)
        if out.caam_weights is not None:
            caam.append(out.caam_weights)
        if out.slice_weights is not None:
            weights.append(out.slice_weights)

    def host(parts: list[torch.Tensor]) -> np.ndarray | None:
        return torch.cat(parts).cpu().numpy() if parts else None

    all_scores = host(scores)
    if all_scores is None:
        raise ValueError("No nodules to score: predict_resident needs at least one nodule.")
    slice_weights = host(weights)
    return Predictions(
        all_scores,
        host(aux),
        np.split(slice_weights, nodules.offsets[1:-1]) if slice_weights is not None else None,
        host(caam),
    )


# --- the fold models as an ensemble (`nodule-net predict`) ----------------------------------


def find_fold_models(models_dir: str | os.PathLike) -> dict[int, Path]:
    """Every fold model under ``models_dir`` (``fold<k>/model.pt``, see ``model_path``), by fold.

    Raises ``FileNotFoundError`` when there is none.
    """
    found = {}
    for folder in Path(models_dir).glob("fold*"):
        fold = folder.name.removeprefix("fold")
        if fold.isdigit() and model_path(models_dir, int(fold)).is_file():
            found[int(fold)] = model_path(models_dir, int(fold))
    if not found:
        raise FileNotFoundError(
            f"{models_dir}: no trained fold models (fold<k>/model.pt); run `dvc repro` "
            "first, or pass --models with the folder that holds them."
        )
    return dict(sorted(found.items()))


def describe_crop(record: dict | None) -> str:
    """``image_side=64, extent_fraction=0.8`` of an extract record (the settings that shape a crop)."""
    if record is None:
        return "not recorded"
    return ", ".join(f"{key}={record[key]}" for key in ("image_side", "extent_fraction") if key in record)


def load_fold_models(models_dir: str | os.PathLike, device: torch.device) -> tuple[dict[int, LoadedModel], dict | None]:
    """All fold models of ``models_dir`` on ``device``, and the extract settings of their training data.

    The settings are the models' ``extract`` record (:func:`nodule_net.io.checkpoint.save_model`),
    None for model files without the record. The folds must share one model config and one
    record: an ensemble of models that saw differently cropped nodules scores no one crop right.
    """
    saved = {fold: read_model_file(path, device) for fold, path in find_fold_models(models_dir).items()}
    models = {fold: _loaded(s, device) for fold, s in saved.items()}
    configs = {fold: m.model.config for fold, m in models.items()}
    first = next(iter(configs))
    if any(c != configs[first] for c in configs.values()):
        raise ValueError(
            f"{models_dir}: the fold models were trained with different model params; "
            "retrain all folds with the same params (`dvc repro`)."
        )
    crops = {fold: s.get("extract") for fold, s in saved.items()}
    if any(c != crops[first] for c in crops.values()):
        folds = "; ".join(f"fold {fold}: {describe_crop(c)}" for fold, c in crops.items())
        raise ValueError(
            f"{models_dir}: the fold models were trained on differently cropped nodules ({folds}); "
            "retrain all folds on one dataset (`dvc repro`)."
        )
    return models, crops[first]


def predict_volume(loaded: LoadedModel, volume: np.ndarray, device: torch.device) -> Predictions:
    """One nodule's slices (M, H, W) in HU, cropped as `extract` crops them, scored by one model.

    Normalised with the model's training-fold mean/std exactly as evaluation normalises a
    dataset's nodules (:func:`~nodule_net.data.batches.resident_nodules`), then :func:`predict_resident`.
    """
    images = np.asarray(volume).astype(np.float32)  # float32 arithmetic, as resident_nodules
    images -= loaded.mean
    images /= loaded.std
    targets = torch.zeros((1, loaded.model.config.n_outputs), device=device)
    nodules = ResidentNodules(torch.from_numpy(images).to(device), np.array([0, len(images)]), targets, np.array([0]))
    return predict_resident(loaded.model, nodules, batch_nodules=1)
