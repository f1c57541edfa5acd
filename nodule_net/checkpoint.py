"""On-disk formats of training: the per-epoch resumable checkpoint and the selected model file.

Both are plain dicts of tensors and numbers saved with ``torch.save`` and read back with
``weights_only=True`` (no pickled code ever runs), written atomically so a kill mid-save
leaves the previous file intact.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from tqdm import tqdm

from nodule_net.files import atomic_path

CHECKPOINT_VERSION = 1


def save_atomic(obj: dict, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``path`` through a temporary sibling and a rename."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """One epoch's resumable state (model, optimiser, RNG, best model so far, history)."""
    save_atomic({"version": CHECKPOINT_VERSION, **state}, path)


def load_checkpoint(path: str | os.PathLike | None, run_id: str, epochs: int, device: torch.device) -> dict | None:
    """The checkpoint at ``path`` if it belongs to the run ``run_id`` and is not past ``epochs``."""
    if path is None or not Path(path).exists():
        return None
    state = torch.load(path, map_location=device, weights_only=True)
    if state.get("version") != CHECKPOINT_VERSION or state.get("fingerprint") != run_id:
        tqdm.write(f"{path}: checkpoint from other params or data; starting afresh.")
        return None
    if state["epoch"] > epochs:
        tqdm.write(f"{path}: checkpoint is at epoch {state['epoch']} > train.epochs={epochs}; starting afresh.")
        return None
    return state


def model_path(models_dir: str | os.PathLike, fold: int) -> Path:
    """Where fold ``fold``'s selected model lives; dvc.yaml declares ``<models>/fold<k>`` as its out."""
    return Path(models_dir) / f"fold{fold}" / "model.pt"


def save_model(path: str | os.PathLike, model_state: dict, model_config: dict, mean: float, std: float,
               fold: int, best_epoch: int, best_val_mae: float) -> None:
    """The selected model plus what inference needs (config, normalisation stats)."""
    save_atomic({
        "model": model_state, "model_config": model_config, "mean": mean, "std": std,
        "fold": fold, "best_epoch": best_epoch, "best_val_mae": best_val_mae,
    }, path)


def read_model_file(path: str | os.PathLike, device: torch.device) -> dict:
    """The dict written by :func:`save_model`, tensors on ``device``."""
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no trained model; run `dvc repro train` first.")
    return torch.load(path, map_location=device, weights_only=True)
